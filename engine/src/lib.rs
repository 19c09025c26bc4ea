//! # volley
//!
//! A thread-per-core RFC 6455 WebSocket server engine.
//!
//! ```text
//!  socket bytes ──► backend (mio | io_uring) ──► worker loop ──► proto (sans-IO) ──► Handler
//!                                                    ▲                                  │
//!  socket bytes ◄── one write per conn per turn ◄────┴──── corked frames ◄──────────────┘
//! ```
//!
//! * [`proto`]: the sans-IO protocol core (handshake, frames, SIMD unmask, UTF-8, close
//!   codes, message assembly). Usable on its own, in either role.
#![deny(missing_docs, missing_debug_implementations)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]
#![deny(unsafe_code)]
#![cfg_attr(test, deny(warnings))]

pub mod proto;
