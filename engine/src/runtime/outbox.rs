//! What a callback's [`Ctx`](crate::Ctx) writes into: its own connection's write queue and
//! bindings, straight away, and the worker's list of deferred actions (sends to other
//! connections, closes, publishes), applied by the worker core once the callback returns.
//! Below the `Handler` trait: `Ctx` wraps an [`Outbox`], and the core that calls the handler
//! builds one per callback.

use super::compress::Compression;
use super::config::SlowConsumerPolicy;
use super::queue::{BufPool, WriteQueue};
use crate::broadcast::registry::{Registry, Subs};
use crate::broadcast::{encode_shared, OwnedTarget};
use crate::proto::conn::Held;
use crate::proto::frame::encode_header;
use crate::proto::{CloseCode, OpCode};
use crate::types::{ConnId, Message, Target};
use std::sync::Arc;

/// What became of a message sent to the callback's own connection
/// ([`Ctx::send`](crate::Ctx::send)), as uWebSockets' `SendStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendStatus {
    /// Queued; the connection's unsent bytes are within `Config::high_water`.
    Queued,
    /// Queued, but the connection now holds more than `Config::high_water` unsent bytes:
    /// pause this connection's producer; [`Handler::on_drain`](crate::Handler::on_drain) runs
    /// once the queue is down to half the mark.
    Backpressure,
    /// Not queued: the connection was already over `Config::write_budget`. Under
    /// `SlowConsumerPolicy::Close` (the default) it is closed with 1008 after the callback;
    /// under `Drop` it stays open and the message is lost (counted in `Stats::drops`).
    Dropped,
    /// Not queued: the connection is closing or closed.
    Closed,
}

impl SendStatus {
    /// Whether the message was queued (`Queued` or `Backpressure`).
    pub fn is_queued(self) -> bool {
        matches!(self, SendStatus::Queued | SendStatus::Backpressure)
    }
}

/// A deferred action from a handler callback on some connection.
#[derive(Debug)]
pub(super) enum Deferred {
    /// A frame for the callback's own connection, already admitted within its budget, that
    /// waits behind an earlier deferred publish (so the connection sees both in order).
    SendOwn(ConnId, Vec<u8>),
    /// A message for another connection (`Ctx::send_to`).
    Send(ConnId, Arc<[u8]>),
    Close(ConnId, CloseCode, String),
    /// A publish: the frame, its target, (origin, tag) if the origin wants a receipt, and
    /// the connection it skips.
    Publish(
        Arc<[u8]>,
        OwnedTarget,
        Option<(ConnId, u64)>,
        Option<ConnId>,
    ),
}

/// The worker-level pieces a callback's [`Ctx`] writes into.
#[derive(Debug, Default)]
pub(crate) struct Env {
    pub(crate) pool: BufPool,
    pub(super) deferred: Vec<Deferred>,
    pub(crate) registry: Registry,
    pub(super) budget: usize,
    /// `Config::high_water`: past it a send reports backpressure and `on_drain` is owed.
    pub(super) high_water: usize,
    pub(super) policy: SlowConsumerPolicy,
    /// Bytes this worker's connections hold in incomplete messages.
    pub(super) held: Held,
    /// Deferred upgrades not answered yet (at most `Config::max_pending_upgrades`).
    pub(super) pending_upgrades: usize,
    /// permessage-deflate state, when `Config::deflate` is on.
    pub(super) compression: Option<Compression>,
}

/// The callback's own connection, when it can still send.
#[derive(Debug)]
pub(crate) struct Own<'a> {
    pub(super) out: &'a mut WriteQueue,
    pub(super) subs: &'a mut Option<Box<Subs>>,
    pub(super) flags: &'a mut super::core::Flags,
    /// The connection's agreed window for compressed messages (0: none).
    pub(super) deflate: u8,
}

/// What a callback writes through its [`Ctx`]: straight into its own connection's queue
/// (and its own key and topic bindings), or deferred until the callback returns for other
/// connections and for publishes.
#[derive(Debug)]
pub(crate) struct Outbox<'a> {
    pub(super) own_id: ConnId,
    /// `None` when the connection can no longer send (closing, or in `on_close`).
    pub(super) own: Option<Own<'a>>,
    pub(super) env: &'a mut Env,
    pub(super) sent: u64,
    /// Sends to the own connection dropped over the write budget (`SlowConsumerPolicy::Drop`).
    pub(super) dropped: u64,
    /// A send found the own queue over the write budget under `SlowConsumerPolicy::Close`:
    /// the message was not queued and the connection is closed as a slow consumer after the
    /// callback.
    pub(super) over: bool,
    /// The callback closed its own connection: nothing more is sent to it.
    pub(super) closing: bool,
}

impl<'a> Outbox<'a> {
    pub(super) fn new(own_id: ConnId, own: Option<Own<'a>>, env: &'a mut Env) -> Self {
        Outbox {
            own_id,
            own,
            env,
            sent: 0,
            dropped: 0,
            over: false,
            closing: false,
        }
    }

    pub(crate) fn own_id(&self) -> ConnId {
        self.own_id
    }

    /// Unsent bytes of the own connection (0 once it cannot send).
    pub(crate) fn buffered(&self) -> usize {
        self.own.as_ref().map_or(0, |o| o.out.len())
    }

    /// Sends to the callback's own connection, within its write budget.
    pub(crate) fn send_own(&mut self, msg: Message<'_>) -> SendStatus {
        let Some(own) = self.own.as_mut().filter(|_| !self.closing) else {
            return SendStatus::Closed;
        };
        if own.out.len() > self.env.budget {
            match self.env.policy {
                SlowConsumerPolicy::Close => self.over = true,
                SlowConsumerPolicy::Drop => self.dropped += 1,
            }
            return SendStatus::Dropped;
        }
        let op = match msg {
            Message::Text(_) => OpCode::Text,
            Message::Binary(_) => OpCode::Binary,
        };
        let payload = msg.as_bytes();
        // The common case: nothing deferred, no compression. Nothing waits in `deferred`, so
        // the queue alone is compared with the high-water mark.
        if self.env.deferred.is_empty() && (own.deflate == 0 || self.env.compression.is_none()) {
            own.out.push_frame(&mut self.env.pool, op, payload);
            self.sent += 1;
            return if own.out.len() > self.env.high_water {
                own.flags.set(super::core::Flags::DRAIN_OWED, true);
                SendStatus::Backpressure
            } else {
                SendStatus::Queued
            };
        }
        let header = encode_header(true, op, payload.len() as u64, None);
        // Straight into the own queue, unless something is deferred before it (a publish):
        // then it waits its turn, so this connection sees both in the order they were made.
        if self.env.deferred.is_empty() {
            let compressed = match (own.deflate, self.env.compression.as_mut()) {
                (0, _) | (_, None) => None,
                (bits, Some(c)) => c.message(bits, op, payload),
            };
            match compressed {
                Some((h, p)) => own.out.push_parts(&mut self.env.pool, &[&h, p]),
                None => own.out.push_parts(&mut self.env.pool, &[&header, payload]),
            }
        } else {
            let mut frame = Vec::with_capacity(header.len() + payload.len());
            frame.extend_from_slice(&header);
            frame.extend_from_slice(payload);
            self.env
                .deferred
                .push(Deferred::SendOwn(self.own_id, frame));
        }
        self.sent += 1;
        // What waits in `deferred` counts too: it is queued as soon as the callback returns.
        let pending: usize = self
            .env
            .deferred
            .iter()
            .map(|d| match d {
                Deferred::SendOwn(_, f) => f.len(),
                _ => 0,
            })
            .sum();
        if own.out.len() + pending > self.env.high_water {
            own.flags.set(super::core::Flags::DRAIN_OWED, true);
            SendStatus::Backpressure
        } else {
            SendStatus::Queued
        }
    }

    /// A message for another connection (or for this one, after what is deferred).
    pub(crate) fn send_to(&mut self, id: ConnId, msg: Message<'_>) {
        self.env
            .deferred
            .push(Deferred::Send(id, encode_shared(msg)));
    }

    pub(crate) fn close(&mut self, id: ConnId, code: CloseCode, reason: &str) {
        self.closing |= id == self.own_id;
        self.env
            .deferred
            .push(Deferred::Close(id, code, reason.to_owned()));
    }

    pub(crate) fn publish(
        &mut self,
        target: Target<'_>,
        msg: Message<'_>,
        tag: Option<u64>,
        except: Option<ConnId>,
    ) {
        let frame = encode_shared(msg);
        let tag = tag.map(|t| (self.own_id, t));
        self.env.deferred.push(Deferred::Publish(
            frame,
            OwnedTarget::from_target(&target),
            tag,
            except,
        ));
    }

    /// Applies `f` to the own connection's bindings; `closed` if it cannot (closing).
    pub(crate) fn bindings<R>(
        &mut self,
        closed: R,
        f: impl FnOnce(&mut Registry, &mut Subs, u32) -> R,
    ) -> R {
        let slot = self.own_id.key() as u32;
        match self.own.as_mut() {
            Some(own) => {
                let subs = own.subs.get_or_insert_with(Default::default);
                f(&mut self.env.registry, subs, slot)
            }
            None => closed,
        }
    }
}
