//! What a callback's [`Ctx`](crate::Ctx) writes into: its own connection's write queue and
//! bindings, straight away, and the worker's list of deferred actions (sends to other
//! connections, closes, publishes), applied by the worker core once the callback returns.
//! Below the `Handler` trait: `Ctx` wraps an [`Outbox`], and the core that calls the handler
//! builds one per callback.

use super::compress::Compression;
use super::config::SlowConsumerPolicy;
use super::queue::{BufPool, WriteNow, WriteQueue, WRITE_NOW_MIN};
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
    pub(super) deferred: std::collections::VecDeque<Deferred>,
    /// Bytes of the `Deferred::SendOwn` frames in `deferred`: they join their connection's
    /// queue when the callback returns, so they count against its budget now. Each is
    /// taken off as its frame is applied.
    pub(super) deferred_own: usize,
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
    /// The socket, for answers written at once ([`WriteNow`]).
    pub(super) io: &'a dyn WriteNow,
    pub(super) subs: &'a mut Option<Box<Subs>>,
    pub(super) flags: &'a mut super::core::Flags,
    /// The connection's agreed window for compressed messages (0: none).
    pub(super) deflate: u8,
}

/// What a send to the own connection says once it is queued: `Backpressure` (and
/// `on_drain` owed) when the queue, with `pending` bytes still to join it, is over `limit`.
#[inline]
fn high_water(own: &mut Own<'_>, pending: usize, limit: usize) -> SendStatus {
    if own.out.len() + pending > limit {
        own.flags.set(super::core::Flags::DRAIN_OWED, true);
        SendStatus::Backpressure
    } else {
        SendStatus::Queued
    }
}

/// [`Outbox::send_own`] of a large message with nothing queued before it: written at once
/// where the backend can, the rest (or all of it) queued. Returns the bytes written.
#[inline(never)]
fn write_large(
    own: &mut Own<'_>,
    reply: Option<&[u8]>,
    pool: &mut BufPool,
    op: OpCode,
    payload: &[u8],
) -> u64 {
    let written = match reply.filter(|f| is_reply(f, op, payload)) {
        // The message sent back as it came: its frame is already laid out, header and
        // payload in one piece (one plain `send`, cheaper in the kernel than two pieces:
        // docs/benchmarks.md, "Issue 14, tenth session").
        Some(frame) => own
            .io
            .write_now(&[std::io::IoSlice::new(frame)])
            .inspect(|&n| {
                if n < frame.len() {
                    own.out.push_parts(pool, &[&frame[n..]]);
                }
            }),
        None => {
            let header = encode_header(true, op, payload.len() as u64, None);
            let parts = [
                std::io::IoSlice::new(&header),
                std::io::IoSlice::new(payload),
            ];
            own.io
                .write_now(&parts)
                .inspect(|&n| match n.checked_sub(header.len()) {
                    None => own.out.push_parts(pool, &[&header[n..], payload]),
                    Some(p) => own.out.push_parts(pool, &[&payload[p..]]),
                })
        }
    };
    match written {
        Some(n) => {
            if n > 0 && !own.out.is_empty() {
                // A short write: the peer has the frame's start, the queue its rest.
                own.out.owe_front();
            }
            n as u64
        }
        None => {
            own.out.push_frame(pool, op, payload);
            0
        }
    }
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
    /// Bytes written to the socket at once ([`WriteNow`]), for the worker's counters.
    pub(super) written: u64,
    /// Sends to the own connection dropped over the write budget (`SlowConsumerPolicy::Drop`).
    pub(super) dropped: u64,
    /// A send found the own queue over the write budget under `SlowConsumerPolicy::Close`:
    /// the message was not queued and the connection is closed as a slow consumer after the
    /// callback.
    pub(super) over: bool,
    /// The callback closed its own connection: nothing more is sent to it.
    pub(super) closing: bool,
    /// The frame that sends back the message the callback was given (its header, then the
    /// very bytes the callback sees), when the message arrived whole in one frame.
    reply: Option<&'a [u8]>,
}

impl<'a> Outbox<'a> {
    pub(super) fn new(own_id: ConnId, own: Option<Own<'a>>, env: &'a mut Env) -> Self {
        Outbox {
            own_id,
            own,
            env,
            sent: 0,
            written: 0,
            dropped: 0,
            over: false,
            closing: false,
            reply: None,
        }
    }

    /// With `reply`, the frame that sends back the message the callback is given.
    pub(super) fn with_reply(mut self, reply: Option<&'a [u8]>) -> Self {
        self.reply = reply;
        self
    }

    pub(crate) fn own_id(&self) -> ConnId {
        self.own_id
    }

    /// Unsent bytes of the own connection (0 once it cannot send).
    pub(crate) fn buffered(&self) -> usize {
        self.own.as_ref().map_or(0, |o| o.out.len())
    }

    /// Sends to the callback's own connection, within its write budget.
    ///
    /// The common case (a small message, nothing deferred, no compression) is inline, so
    /// that an echo's path from the frame to the queue is one stretch of code; the rest is
    /// out of line (docs/benchmarks.md, "Issue 14, eleventh session").
    #[inline]
    pub(crate) fn send_own(&mut self, msg: Message<'_>) -> SendStatus {
        let Some(own) = self.own.as_mut().filter(|_| !self.closing) else {
            return SendStatus::Closed;
        };
        if own.out.len() > self.env.budget {
            return self.over_budget();
        }
        let op = match msg {
            Message::Text(_) => OpCode::Text,
            Message::Binary(_) => OpCode::Binary,
        };
        let payload = msg.as_bytes();
        // Something deferred, or compression: the general path.
        if !self.env.deferred.is_empty() || (own.deflate != 0 && self.env.compression.is_some()) {
            return self.send_own_general(op, payload);
        }
        // A large answer with nothing queued before it: straight to the socket where the
        // backend writes at once, and only the rest queued.
        if payload.len() >= WRITE_NOW_MIN && own.out.is_empty() {
            self.written += write_large(own, self.reply, &mut self.env.pool, op, payload);
        } else {
            own.out.push_frame(&mut self.env.pool, op, payload);
        }
        self.sent += 1;
        // Nothing waits in `deferred`, so the queue alone is compared with the high-water
        // mark.
        high_water(own, 0, self.env.high_water)
    }

    /// [`Outbox::send_own`] over the write budget: the slow consumer policy decides.
    #[cold]
    #[inline(never)]
    fn over_budget(&mut self) -> SendStatus {
        match self.env.policy {
            SlowConsumerPolicy::Close => self.over = true,
            SlowConsumerPolicy::Drop => self.dropped += 1,
        }
        SendStatus::Dropped
    }

    /// [`Outbox::send_own`] when something is deferred or the connection compresses.
    #[inline(never)]
    fn send_own_general(&mut self, op: OpCode, payload: &[u8]) -> SendStatus {
        let Some(own) = self.own.as_mut() else {
            return SendStatus::Closed;
        };
        // Sends held back behind a publish count against the budget too (the fast path
        // checked the queue alone: with nothing deferred, that is all there is).
        if own.out.len() + self.env.deferred_own > self.env.budget {
            return self.over_budget();
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
            self.env.deferred_own += frame.len();
            self.env
                .deferred
                .push_back(Deferred::SendOwn(self.own_id, frame));
        }
        self.sent += 1;
        // What waits in `deferred` counts too: it is queued as soon as the callback returns.
        high_water(own, self.env.deferred_own, self.env.high_water)
    }

    /// A message for another connection (or for this one, after what is deferred).
    pub(crate) fn send_to(&mut self, id: ConnId, msg: Message<'_>) {
        self.env
            .deferred
            .push_back(Deferred::Send(id, encode_shared(msg)));
    }

    pub(crate) fn close(&mut self, id: ConnId, code: CloseCode, reason: &str) {
        if id == self.own_id {
            self.closing = true;
            // The close is applied after the read: until then the connection's later
            // callbacks (the read's next messages) see it closed too.
            if let Some(own) = self.own.as_mut() {
                own.flags.set(super::core::Flags::CLOSE_ASKED, true);
            }
        }
        self.env
            .deferred
            .push_back(Deferred::Close(id, code, reason.to_owned()));
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
        self.env.deferred.push_back(Deferred::Publish(
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

/// Whether `frame` is the frame that sends `payload` (these very bytes, not a copy) as an
/// `op` message: its header is the one for `payload`'s whole length, right before it. A
/// part of the message (a suffix ends at the same place) has a longer header in front.
fn is_reply(frame: &[u8], op: OpCode, payload: &[u8]) -> bool {
    let Some(h) = frame.len().checked_sub(payload.len()) else {
        return false;
    };
    let want = match payload.len() {
        0..=125 => 2,
        126..=0xffff => 4,
        _ => 10,
    };
    h == want
        && frame[0] == 0x80 | op.as_u8()
        && std::ptr::eq(frame[h..].as_ptr(), payload.as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Message;
    use std::cell::RefCell;
    use std::io::IoSlice;

    /// A socket that takes at most `room` bytes, or none at all (`None`: a backend that
    /// does not write synchronously).
    #[derive(Debug)]
    struct Socket {
        room: Option<usize>,
        got: RefCell<Vec<u8>>,
        /// How many pieces each write was given.
        pieces: RefCell<Vec<usize>>,
    }

    impl WriteNow for Socket {
        fn write_now(&self, parts: &[IoSlice<'_>]) -> Option<usize> {
            let room = self.room?;
            self.pieces.borrow_mut().push(parts.len());
            let mut got = self.got.borrow_mut();
            let all: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
            let n = all.len().min(room);
            got.extend_from_slice(&all[..n]);
            Some(n)
        }
    }

    /// Runs `sends` on the outbox of a connection whose socket takes `room` bytes at once;
    /// returns the bytes counted as written, those the socket got, and those left queued.
    fn with_socket(
        room: Option<usize>,
        sends: impl FnOnce(&mut Outbox<'_>),
    ) -> (usize, Vec<u8>, Vec<u8>) {
        let (written, got, queued, _) = with_socket_reply(room, None, sends);
        (written, got, queued)
    }

    /// [`with_socket`] for a callback given a message that arrived in `reply`; also returns
    /// how many pieces each write to the socket had.
    fn with_socket_reply(
        room: Option<usize>,
        reply: Option<&[u8]>,
        sends: impl FnOnce(&mut Outbox<'_>),
    ) -> (usize, Vec<u8>, Vec<u8>, Vec<usize>) {
        let (written, got, out, pieces) = with_socket_queue(room, reply, sends);
        let mut iov = [IoSlice::new(&[]); 8];
        let n = out.io_slices(&mut iov);
        let queued = iov[..n].iter().flat_map(|s| s.iter().copied()).collect();
        (written, got, queued, pieces)
    }

    /// [`with_socket_reply`], returning the write queue itself.
    fn with_socket_queue(
        room: Option<usize>,
        reply: Option<&[u8]>,
        sends: impl FnOnce(&mut Outbox<'_>),
    ) -> (usize, Vec<u8>, WriteQueue, Vec<usize>) {
        let env = Env {
            budget: usize::MAX,
            high_water: usize::MAX,
            ..Env::default()
        };
        with_socket_env(room, reply, env, sends)
    }

    /// [`with_socket_queue`] with the worker's `env` (its budget and policy).
    fn with_socket_env(
        room: Option<usize>,
        reply: Option<&[u8]>,
        mut env: Env,
        sends: impl FnOnce(&mut Outbox<'_>),
    ) -> (usize, Vec<u8>, WriteQueue, Vec<usize>) {
        let socket = Socket {
            room,
            got: RefCell::new(Vec::new()),
            pieces: RefCell::new(Vec::new()),
        };
        let mut out = WriteQueue::default();
        let (mut subs, mut flags) = (None, super::super::core::Flags::default());
        let own = Own {
            out: &mut out,
            io: &socket,
            subs: &mut subs,
            flags: &mut flags,
            deflate: 0,
        };
        let mut ob =
            Outbox::new(ConnId::with_node(0, 0, 1, 1), Some(own), &mut env).with_reply(reply);
        sends(&mut ob);
        let written = ob.written as usize;
        (
            written,
            socket.got.into_inner(),
            out,
            socket.pieces.into_inner(),
        )
    }

    /// A large message sent back as it came goes out as its frame, in one piece, as far as
    /// the socket takes it, with only the rest queued. Anything else (a part of it, another
    /// opcode, the same bytes copied) is framed as before, in two pieces. Every time the
    /// bytes on the wire are the frame the message asked for.
    #[test]
    fn a_message_sent_back_as_it_came_goes_out_in_one_piece() {
        let n = WRITE_NOW_MIN + 77;
        let mut frame = encode_header(true, OpCode::Binary, n as u64, None).to_vec();
        let h = frame.len();
        frame.extend((0..n).map(|i| (i * 13) as u8));
        let payload = &frame[h..];
        for room in [Some(1), Some(h), Some(h + 9), Some(usize::MAX), None] {
            let (written, mut wire, queued, pieces) = with_socket_reply(room, Some(&frame), |ob| {
                assert_eq!(ob.send_own(Message::Binary(payload)), SendStatus::Queued);
            });
            assert_eq!(written, wire.len(), "{room:?}");
            if room.is_some() {
                assert_eq!(pieces, vec![1], "{room:?}: one piece");
            }
            wire.extend(queued);
            assert_eq!(wire, frame, "{room:?}");
        }
        let framed = |op: OpCode, p: &[u8]| {
            let mut f = encode_header(true, op, p.len() as u64, None).to_vec();
            f.extend_from_slice(p);
            f
        };
        let copy = payload.to_vec();
        let suffix = &payload[3..];
        let cases: Vec<(Message<'_>, Vec<u8>)> = vec![
            (Message::Binary(suffix), framed(OpCode::Binary, suffix)),
            (Message::Binary(&copy), framed(OpCode::Binary, &copy)),
        ];
        for (msg, want) in cases {
            let (written, wire, queued, pieces) =
                with_socket_reply(Some(usize::MAX), Some(&frame), |ob| {
                    assert_eq!(ob.send_own(msg), SendStatus::Queued);
                });
            assert_eq!((written, &wire, queued.len()), (want.len(), &want, 0));
            assert_eq!(pieces, vec![2], "framed as before");
        }
        // The same bytes sent as a text: another opcode.
        let ascii = {
            let mut f = encode_header(true, OpCode::Binary, n as u64, None).to_vec();
            f.extend(std::iter::repeat_n(b'a', n));
            f
        };
        let as_text = std::str::from_utf8(&ascii[h..]).unwrap();
        let (_, wire, _, pieces) = with_socket_reply(Some(usize::MAX), Some(&ascii), |ob| {
            assert_eq!(ob.send_own(Message::Text(as_text)), SendStatus::Queued);
        });
        assert_eq!(wire, framed(OpCode::Text, as_text.as_bytes()));
        assert_eq!(pieces, vec![2]);
    }

    /// A large answer is written at once as far as the socket takes it, and only the rest is
    /// queued, whatever the split (inside the header, at its end, inside the payload); a
    /// small one behind it is queued after the rest; without a synchronous socket, all of it
    /// is queued. The bytes on the wire are the two frames, in order, every time.
    #[test]
    fn a_large_answer_is_written_at_once_and_only_the_rest_queued() {
        let big: Vec<u8> = (0..WRITE_NOW_MIN as u32 + 77)
            .map(|i| (i * 7) as u8)
            .collect();
        let mut want = encode_header(true, OpCode::Binary, big.len() as u64, None).to_vec();
        want.extend_from_slice(&big);
        let big_frame = want.len();
        want.extend_from_slice(&encode_header(true, OpCode::Text, 4, None));
        want.extend_from_slice(b"tail");
        let rooms = [
            None,
            Some(0),
            Some(1),
            Some(3),
            Some(4),
            Some(5),
            Some(100),
            Some(usize::MAX),
        ];
        for room in rooms {
            let (written, mut wire, queued) = with_socket(room, |ob| {
                assert_eq!(ob.send_own(Message::Binary(&big)), SendStatus::Queued);
                assert_eq!(ob.send_own(Message::Text("tail")), SendStatus::Queued);
            });
            assert_eq!(wire.len(), written, "{room:?}: written bytes are counted");
            assert_eq!(written, room.unwrap_or(0).min(big_frame), "{room:?}");
            wire.extend(queued);
            assert_eq!(wire, want, "{room:?}: the frames, whole and in order");
        }
    }

    /// A large answer cut short by the socket leaves the queue in the middle of a frame until
    /// its rest is written: a slow consumer's close must not drop that rest and send its close
    /// frame inside the peer's frame (it closes at once instead).
    #[test]
    fn a_large_answer_cut_short_leaves_its_rest_owed_whole() {
        let big = vec![9u8; WRITE_NOW_MIN + 10];
        let frame = 4 + big.len();
        for room in [
            None,
            Some(0),
            Some(1),
            Some(4),
            Some(5),
            Some(frame - 1),
            Some(frame),
        ] {
            let (written, _, mut out, _) = with_socket_queue(room, None, |ob| {
                assert_eq!(ob.send_own(Message::Binary(&big)), SendStatus::Queued);
            });
            let cut = written > 0 && written < frame;
            assert_eq!(out.at_frame_boundary(), !cut, "{room:?}");
            if cut {
                let mut pool = BufPool::default();
                let rest = out.len();
                out.advance(rest - 1, &mut pool);
                assert!(
                    !out.at_frame_boundary(),
                    "{room:?}: one byte of the frame left"
                );
                out.advance(1, &mut pool);
                assert!(out.at_frame_boundary(), "{room:?}: the frame is out");
            }
        }
        // Whatever is queued behind the rest waits for it, and the queue is at a boundary
        // once the rest is out.
        let (_, _, mut out, _) = with_socket_queue(Some(100), None, |ob| {
            assert_eq!(ob.send_own(Message::Binary(&big)), SendStatus::Queued);
            assert_eq!(ob.send_own(Message::Text("next")), SendStatus::Queued);
        });
        assert!(!out.at_frame_boundary());
        let mut pool = BufPool::default();
        out.advance(frame - 100, &mut pool);
        assert!(out.at_frame_boundary(), "the next frame starts here");
        assert_eq!(out.len(), 6);
        let mut cleared = with_socket_queue(Some(100), None, |ob| {
            ob.send_own(Message::Binary(&big));
        })
        .2;
        cleared.clear(&mut pool);
        assert!(cleared.at_frame_boundary(), "nothing left to finish");
    }

    /// Sends held back behind a publish (they join the queue when the callback returns)
    /// count against the write budget as the queue does: past it, a send is dropped and the
    /// slow consumer policy applies (found by review: with a publish first, every reply of a
    /// read was admitted, 117 times the budget).
    #[test]
    fn sends_held_behind_a_publish_count_against_the_budget() {
        let env = Env {
            budget: 100,
            high_water: 60,
            ..Env::default()
        };
        let line = "x".repeat(38); // a 40-byte frame
        let mut statuses = Vec::new();
        let mut over = false;
        let (_, _, out, _) = with_socket_env(None, None, env, |ob| {
            ob.publish(Target::Topic("t"), Message::Text("first"), None, None);
            for _ in 0..6 {
                statuses.push(ob.send_own(Message::Text(&line)));
            }
            over = ob.over;
        });
        assert!(out.is_empty(), "held back behind the publish");
        use SendStatus::*;
        // 40, 80 (over the high-water mark), 120 (over the budget after it), then dropped.
        assert_eq!(
            statuses,
            [
                Queued,
                Backpressure,
                Backpressure,
                Dropped,
                Dropped,
                Dropped
            ]
        );
        assert!(over, "the slow consumer policy applies");
    }

    /// Behind anything already queued, a large answer is queued too, never written ahead.
    #[test]
    fn a_large_answer_behind_queued_bytes_waits_its_turn() {
        let big = vec![7u8; WRITE_NOW_MIN];
        let (written, wire, queued) = with_socket(Some(usize::MAX), |ob| {
            assert_eq!(ob.send_own(Message::Text("head")), SendStatus::Queued);
            assert_eq!(ob.send_own(Message::Binary(&big)), SendStatus::Queued);
        });
        assert_eq!(written, 0);
        assert!(wire.is_empty(), "nothing written ahead of the queue");
        assert_eq!(queued.len(), 6 + 4 + big.len());
    }
}
