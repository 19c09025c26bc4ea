//! The thread-per-core runtime: its [`Config`], the [`Handle`] other threads use, the worker
//! core every backend drives, and connection ids. ([`Server`], which starts it on a backend,
//! is `crate::server`, the top layer; it is re-exported here, where it always was.)
//!
//! One worker per core, each with its own poller, its own listener on the same address
//! (`SO_REUSEPORT`), its own slab of connections, timer wheel and inbox. Workers share
//! nothing on the hot path; other threads reach them through their inboxes.
//!
//! This file only declares the runtime's modules and re-exports their public items; each
//! module sits in its own layer (the table at the top of docs/architecture.md).

pub(crate) mod compress;
pub(crate) mod config;
pub(crate) mod core;
pub(crate) mod handle;
pub(crate) mod inbox;
pub(crate) mod metrics;
pub(crate) mod outbox;
pub(crate) mod queue;
pub(crate) mod stats;
pub(crate) mod timer;
pub(crate) mod upgrade;

pub use crate::proto::deflate::DeflateConfig;
pub use crate::server::Server;
pub use crate::types::ConnId;
pub use config::{Backend, Config, SlowConsumerPolicy, UringConfig};
pub use handle::Handle;
pub use stats::Stats;
pub use upgrade::Pending;
