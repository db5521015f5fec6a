//! vyre's runtime: the ring protocol and control block ([`protocol`], [`ring`]), the
//! backend trait ([`backend`]), routing ([`routing`]) and the host API ([`Megakernel`]).
//!
//! Nothing here knows which backend is in use; backends live in their own crates.

#![forbid(unsafe_code)]

pub mod backend;
pub mod error;
pub mod megakernel;
pub mod pipeline_cache;
pub mod protocol;
pub mod ring;
pub mod routing;
mod sync;
mod watchdog;

pub use backend::{
    Backend, BackendError, BackendKind, BackendProvider, Capabilities, ExecutionModel, Health,
    HostRegion, LaunchConfig,
};
pub use error::{Error, ErrorKind, PublishRejection};
pub use megakernel::{
    Config, HangReport, Megakernel, RestartReport, ShutdownReport, Stats, Ticket,
};
pub use pipeline_cache::{BlobMeta, CacheKey, PipelineCache};
pub use ring::{Completion, DebugRecord, Outcome, RingMemory};
pub use routing::{route, BackendChoice, Decision, RoutingError};
pub use vyre_isa as isa;
