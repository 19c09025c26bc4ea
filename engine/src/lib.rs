//! # volley
//!
//! A thread-per-core RFC 6455 WebSocket server engine.
//!
//! ```text
//!  socket ──► backend (driver/mio.rs) ──► worker Core ──► proto::Decoder ──► Handler::on_message
//!                                             │                                     │
//!  socket ◄── one writev per conn per turn ◄──┴──── WriteQueue (corked frames) ◄── Ctx::send
//! ```
//!
//! * [`proto`]: the sans-IO protocol core (handshake, frames, SIMD unmask, UTF-8, close
//!   codes, message assembly). Usable on its own, in either role.
//! * [`Server`], [`Config`], [`Handle`]: the thread-per-core runtime: one worker per core,
//!   each with its own poller, `SO_REUSEPORT` listener, slab of connections, timer wheel and
//!   inbox.
//! * [`Handler`], [`Ctx`]: what an application implements and what its callbacks can do:
//!   sends that report backpressure ([`SendStatus`], [`Handler::on_drain`]), publishes to
//!   [`Target`]s (leaving the sender out with [`Ctx::publish_others`]), upgrades answered
//!   later from any thread ([`Upgrade::defer`], [`Pending`]). docs/embedding.md is the guide.
//!
//! The modules are layers, each importing only those below it: `proto`, then the shared
//! vocabulary ([`Message`], [`ConnId`], [`Target`]), broadcast, the runtime's parts, the
//! cluster, [`Handle`], [`Handler`] and [`Ctx`], the worker core, the backends, and [`Server`]
//! on top (docs/architecture.md; `engine/tests/layers.rs` checks it).
//!
//! # Embedding in ten lines
//! ```no_run
//! use volley::{Config, Ctx, Handler, Message, Reject, Request, Server, Upgrade};
//!
//! #[derive(Clone)]
//! struct Echo;
//! impl Handler for Echo {
//!     type State = ();
//!     fn on_upgrade(&mut self, _: &Request, _: &mut Upgrade) -> Result<(), Reject> { Ok(()) }
//!     fn on_message(&mut self, ctx: &mut Ctx<'_>, _: &mut (), msg: Message<'_>) {
//!         ctx.send(msg);
//!     }
//! }
//!
//! let server = Server::start(Config::new("127.0.0.1:9001"), Echo).unwrap();
//! let handle = server.handle(); // Send + Sync: give it to other threads
//! # handle.shutdown();
//! server.join();
//! ```
#![deny(missing_docs, missing_debug_implementations)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]
#![deny(unsafe_code)]
#![cfg_attr(test, deny(warnings))]

pub mod broadcast;
pub mod cluster;
mod driver;
pub mod handler;
pub mod proto;
pub mod runtime;
mod server;
mod types;

pub use broadcast::Receipt;
pub use cluster::{ClusterConfig, ClusterStatsSnapshot};
pub use handler::{Ctx, Handler, HttpResponse, Reject, SendStatus, Upgrade};
pub use proto::handshake::Request;
pub use proto::CloseCode;
pub use runtime::{
    Backend, Config, DeflateConfig, Handle, Pending, Server, SlowConsumerPolicy, Stats, UringConfig,
};
pub use types::{ConnId, LimitReached, Message, Target};
