//! vyre's runtime: the ring protocol and control block ([`protocol`], [`ring`]), the
//! backend trait ([`backend`]), routing ([`routing`]) and the host API ([`Megakernel`]);
//! [`io_queue`] and [`io_service`] are IO_READ's request and resume queues and the host I/O
//! thread that serves them through an [`IoService`].
//!
//! Nothing here knows which backend is in use; backends live in their own crates.

#![forbid(unsafe_code)]

pub mod backend;
pub mod error;
mod host_pool;
pub mod io_queue;
pub mod io_service;
pub mod megakernel;
pub mod pipeline_cache;
pub mod protocol;
pub mod ring;
pub mod routing;
mod sync;
mod watchdog;

pub use backend::{
    Backend, BackendError, BackendKind, BackendProvider, Capabilities, ExecutionModel, Health,
    HostRegion, LaunchConfig, Staging,
};
pub use error::{Error, ErrorKind, PublishRejection};
pub use io_service::{FileRead, IoService, PreadService};
pub use megakernel::{
    Config, HangReport, Megakernel, RestartReport, ShutdownReport, Stats, Ticket,
};
pub use pipeline_cache::{BlobMeta, CacheKey, PipelineCache};
pub use ring::{Completion, DebugRecord, Outcome, RingMemory};
pub use routing::{route, BackendChoice, Decision, RoutingError};
pub use vyre_isa as isa;
