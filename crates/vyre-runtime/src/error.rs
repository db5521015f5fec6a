//! The runtime's public error.

use crate::backend::BackendError;
use crate::routing::RoutingError;
use std::fmt;
use std::time::Duration;
use vyre_isa::DecodeError;

/// What went wrong; see [`Error::kind`].
#[derive(Debug)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The backend failed or refused.
    Backend(BackendError),
    /// Routing could not pick a backend.
    Routing(RoutingError),
    /// A program was rejected when loaded.
    Program(DecodeError),
    /// A slot of a batch was rejected at publish; nothing of the batch was published.
    Publish {
        /// Index of the offending slot in the batch.
        index: usize,
        /// What is wrong.
        reason: PublishRejection,
    },
    /// A wait ran out of time.
    Timeout {
        /// The ticket waited for.
        ticket: u64,
        /// How long.
        waited: Duration,
    },
    /// The megakernel was shut down (or its backend stopped) and accepts no more work.
    Stopped,
    /// A configuration value is out of range.
    Config(String),
    /// The watchdog declared the device hung; nothing more runs until a restart.
    Hung(crate::megakernel::HangReport),
    /// A file could not be registered for IO_READ.
    File {
        /// The path given.
        path: std::path::PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Why a slot was refused at publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishRejection {
    /// The tenant id is not below the configured tenant count.
    Tenant {
        /// The slot's tenant.
        tenant: u16,
        /// Tenants configured (valid ids are 0..tenants).
        tenants: u16,
    },
    /// The priority is above the maximum.
    Priority {
        /// The slot's priority.
        priority: u8,
        /// The maximum.
        max: u8,
    },
}

/// A runtime error: what, where and how to fix it.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
}

impl Error {
    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    pub(crate) fn new(kind: ErrorKind) -> Error {
        Error { kind }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Backend(e) => write!(f, "{e}"),
            ErrorKind::Routing(e) => write!(f, "{e}"),
            ErrorKind::Program(e) => write!(f, "program rejected: {e}"),
            ErrorKind::Publish { index, reason: PublishRejection::Tenant { tenant, tenants } } => write!(
                f,
                "slot {index} of the batch rejected: tenant {tenant} is out of range (this megakernel has {tenants} tenant(s), ids 0..{}); nothing of the batch was published; raise `tenants` in the configuration or fix the slot",
                tenants.saturating_sub(1)
            ),
            ErrorKind::Publish { index, reason: PublishRejection::Priority { priority, max } } => write!(
                f,
                "slot {index} of the batch rejected: priority {priority} is out of range (0..={max}); nothing of the batch was published"
            ),
            ErrorKind::Timeout { ticket, waited } => write!(f, "slot ticket {ticket} not finished after {waited:?}; check `vyre info` health or raise the timeout"),
            ErrorKind::Stopped => write!(f, "the megakernel has stopped (shutdown, or a SHUTDOWN slot) and accepts no more work; launch a new one"),
            ErrorKind::Config(m) => write!(f, "invalid configuration: {m}"),
            ErrorKind::Hung(r) => write!(
                f,
                "the device is hung: heartbeat stuck at {} for {:?} with {} claimed and {} unclaimed slots unfinished; call Megakernel::restart with a fresh backend to requeue them",
                r.heartbeat,
                r.silent_for,
                r.claimed.len(),
                r.unclaimed.len()
            ),
            ErrorKind::File { path, source } => write!(
                f,
                "cannot register {} for IO_READ: {source}; check that the file exists and is readable by this process",
                path.display()
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Backend(e) => Some(e),
            ErrorKind::Routing(e) => Some(e),
            ErrorKind::Program(e) => Some(e),
            ErrorKind::File { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<BackendError> for Error {
    fn from(e: BackendError) -> Error {
        Error::new(ErrorKind::Backend(e))
    }
}

impl From<RoutingError> for Error {
    fn from(e: RoutingError) -> Error {
        Error::new(ErrorKind::Routing(e))
    }
}
