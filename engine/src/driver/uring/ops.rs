//! What an SQE was for, carried in its `user_data` and read back from its completion.
//!
//! The kernel hands `user_data` back untouched; [`Op::encode`] and [`Op::decode`] are the one
//! place that knows the layout: the kind in the top byte, a connection's slab key in the low
//! 32 bits (keys stay below 2^24, see `ConnId`).

/// A connection's slab key.
pub(super) type Key = usize;

/// One kind of operation, with the connection it belongs to where it has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    /// The multishot accept on the listener.
    Accept,
    /// The cancel of the multishot accept (shutdown).
    CancelAccept,
    /// The eventfd read that wakes the worker.
    Wake,
    /// The 503 send and the close of a direct descriptor that never became a connection
    /// (server full): a hard-linked pair, nothing to account per connection.
    Rejected,
    /// A connection's multishot receive.
    Recv(Key),
    /// A connection's `send` or `sendmsg`.
    Send(Key),
    /// A connection's zero-copy send: a result completion (flagged `MORE`), then a
    /// notification (`NOTIF`) once the kernel no longer reads the buffers.
    SendZc(Key),
    /// The write-side shutdown of a draining connection.
    Shutdown(Key),
    /// The cancel of every operation of a dead connection.
    Cancel(Key),
    /// The close of a dead connection's direct descriptor.
    Close(Key),
}

const KEY_MASK: u64 = 0xFFFF_FFFF;

impl Op {
    /// The connection this operation belongs to, if any: its completion is counted
    /// against that connection (`UringIo::ops`) and the `uring_ops` gauge.
    pub(super) fn key(self) -> Option<Key> {
        match self {
            Op::Accept | Op::CancelAccept | Op::Wake | Op::Rejected => None,
            Op::Recv(k)
            | Op::Send(k)
            | Op::SendZc(k)
            | Op::Shutdown(k)
            | Op::Cancel(k)
            | Op::Close(k) => Some(k),
        }
    }

    /// The `user_data` for this operation.
    pub(super) fn encode(self) -> u64 {
        let (tag, key): (u64, Key) = match self {
            Op::Accept => (1, 0),
            Op::CancelAccept => (2, 0),
            Op::Wake => (3, 0),
            Op::Rejected => (4, 0),
            Op::Recv(k) => (5, k),
            Op::Send(k) => (6, k),
            Op::SendZc(k) => (7, k),
            Op::Shutdown(k) => (8, k),
            Op::Cancel(k) => (9, k),
            Op::Close(k) => (10, k),
        };
        debug_assert!(key as u64 <= KEY_MASK);
        tag << 56 | key as u64 & KEY_MASK
    }

    /// The operation a completion's `user_data` names; `None` for one we never submitted.
    pub(super) fn decode(ud: u64) -> Option<Op> {
        let k = (ud & KEY_MASK) as Key;
        Some(match ud >> 56 {
            1 => Op::Accept,
            2 => Op::CancelAccept,
            3 => Op::Wake,
            4 => Op::Rejected,
            5 => Op::Recv(k),
            6 => Op::Send(k),
            7 => Op::SendZc(k),
            8 => Op::Shutdown(k),
            9 => Op::Cancel(k),
            10 => Op::Close(k),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_round_trips_through_user_data() {
        for k in [0, 1, 4095, (1 << 24) - 1] {
            for op in [
                Op::Accept,
                Op::CancelAccept,
                Op::Wake,
                Op::Rejected,
                Op::Recv(k),
                Op::Send(k),
                Op::SendZc(k),
                Op::Shutdown(k),
                Op::Cancel(k),
                Op::Close(k),
            ] {
                let back = Op::decode(op.encode()).expect("decodes");
                // Ops without a connection carry no key.
                assert_eq!(back.key(), op.key(), "{op:?}");
                assert_eq!(back.encode(), op.encode(), "{op:?}");
            }
        }
        assert_eq!(Op::decode(0), None);
        assert_eq!(Op::decode(u64::MAX), None);
    }
}
