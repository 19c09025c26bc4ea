//! Recipient-targeted broadcast: an event is encoded once and reaches exactly the sockets it
//! targets, on every worker, with no per-recipient copy or allocation.
//!
//! * [`Target`] names the recipients: one connection, a list, an application key (a user
//!   id, a device id: one key may have many connections), a list of keys, a topic, everyone.
//! * An [`Event`] is the complete server frame (header and payload contiguous) in one
//!   `Arc<[u8]>`. Each recipient's write queue gets a clone of the `Arc`: a reference-count
//!   increment, then one `writev` per socket per loop turn for everything queued to it.
//! * Across workers an event travels as one queue item per worker (the `Arc<Event>` itself),
//!   never one per recipient. Keys and topics are looked up by the worker that owns the
//!   connections (each worker holds its part of the tables, see [`registry`]); lists of
//!   connections are grouped by worker before they leave the publisher.
//! * With permessage-deflate on, an event also carries the cell of its compressed twin
//!   ([`Twin`]): the first worker with a recipient that negotiated compression fills it
//!   (one deflate per event, whatever the recipients and workers), and each recipient gets
//!   the variant it negotiated by reference.

pub(crate) mod registry;

use crate::proto::frame::encode_header;
use crate::proto::OpCode;
use crate::types::{ConnId, Message};
pub use crate::types::{LimitReached, Target};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

/// Whether `target` lists more keys than `max` allows (0: no limit); logs and counts the
/// refusal in `refused` if so.
pub(crate) fn over_key_cap(
    target: &Target<'_>,
    max: usize,
    refused: &std::sync::atomic::AtomicU64,
) -> bool {
    let Target::Keys(keys) = target else {
        return false;
    };
    if max == 0 || keys.len() <= max {
        return false;
    }
    // Logged at the 1st, 2nd, 4th, 8th... refusal of this worker, so a client that repeats
    // them cannot flood the log; the counter has the exact number.
    let n = refused.fetch_add(1, Ordering::Relaxed) + 1;
    if n.is_power_of_two() {
        tracing::info!(
            listed = keys.len(),
            max,
            refused = n,
            "publish refused: more keys than max_keys_per_event"
        );
    }
    true
}

/// The target as it travels to other workers.
#[derive(Debug)]
pub(crate) enum OwnedTarget {
    /// Already grouped: the recipients on the receiving worker.
    Conns(Vec<ConnId>),
    /// INVARIANT: distinct keys (made by [`OwnedTarget::from_target`]), so a worker looks
    /// each up once however often the publisher listed it.
    Keys(Box<[Box<str>]>),
    Topic(Box<str>),
    All,
}

/// Counts how many connections an event reached across workers; the last worker to finish
/// reports the total to whoever asked (`ReceiptTo`).
#[derive(Debug)]
pub(crate) struct Tracker {
    pub(crate) remaining: AtomicUsize,
    pub(crate) reached: AtomicUsize,
    pub(crate) to: ReceiptTo,
}

/// Who a tracked publish reports its total to.
#[derive(Clone, Debug)]
pub(crate) enum ReceiptTo {
    /// The publishing connection, with its tag (`Ctx::publish_tracked`, `Handler::on_published`).
    Conn(ConnId, u64),
    /// A [`Receipt`] some thread may wait on (`Handle::publish_tracked`).
    Waiter(Arc<ReceiptCell>),
}

/// Where a [`Receipt`]'s total lands; set once, by the last worker.
#[derive(Debug, Default)]
pub(crate) struct ReceiptCell {
    reached: Mutex<Option<usize>>,
    done: Condvar,
}

impl ReceiptCell {
    /// Records the total and wakes every waiter.
    pub(crate) fn complete(&self, reached: usize) {
        let mut r = self.reached.lock().unwrap_or_else(|e| e.into_inner());
        *r = Some(reached);
        self.done.notify_all();
    }
}

/// The receipt of a [`crate::Handle::publish_tracked`]: once every worker has delivered the
/// event, the number of connections it reached. Cloneable and `Send + Sync`: wait for it
/// from any thread.
///
/// A worker that stops (shutdown) before delivering never reports, so a wait is always
/// bounded by a timeout.
#[derive(Clone, Debug)]
pub struct Receipt {
    pub(crate) cell: Arc<ReceiptCell>,
}

impl Receipt {
    /// The total if every worker has delivered, without waiting.
    pub fn try_get(&self) -> Option<usize> {
        *self.cell.reached.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits up to `timeout` for every worker to deliver; the number of connections
    /// reached, or `None` on timeout.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<usize> {
        let r = self.cell.reached.lock().unwrap_or_else(|e| e.into_inner());
        let (r, _) = self
            .cell
            .done
            .wait_timeout_while(r, timeout, |r| r.is_none())
            .unwrap_or_else(|e| e.into_inner());
        *r
    }
}

impl Tracker {
    /// Adds one worker's count; returns the total if this was the last worker.
    pub(crate) fn finish_part(&self, reached: usize) -> Option<usize> {
        self.reached.fetch_add(reached, Ordering::AcqRel);
        (self.remaining.fetch_sub(1, Ordering::AcqRel) == 1)
            .then(|| self.reached.load(Ordering::Acquire))
    }
}

/// One published event, shared by every worker that delivers it.
#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) frame: Arc<[u8]>,
    pub(crate) target: OwnedTarget,
    pub(crate) tracker: Option<Arc<Tracker>>,
    /// A connection the event skips even if the target includes it (the publisher, for
    /// `Ctx::publish_others` and `Handle::publish_except`).
    pub(crate) except: Option<ConnId>,
    /// The compressed twin's cell (`None` when the server does not compress).
    pub(crate) twin: Twin,
}

/// The compressed twin of an event's frame: filled at most once, by the first worker that
/// delivers it to a connection with permessage-deflate; `Some(None)` inside when the
/// payload is under the threshold or does not shrink. Shared by the parts of an event split
/// by worker, so it is compressed once per event, not once per worker.
pub(crate) type Twin = Option<Arc<OnceLock<Option<Arc<[u8]>>>>>;

/// An empty twin cell when the server compresses (one allocation per event), else none.
pub(crate) fn new_twin(deflate: bool) -> Twin {
    deflate.then(|| Arc::new(OnceLock::new()))
}

/// Encodes a message once as a complete, unmasked server frame in one allocation.
pub(crate) fn encode_shared(msg: Message<'_>) -> Arc<[u8]> {
    let op = match msg {
        Message::Text(_) => OpCode::Text,
        Message::Binary(_) => OpCode::Binary,
    };
    let payload = msg.as_bytes();
    let h = encode_header(true, op, payload.len() as u64, None);
    // A chain of two slice iterators has an exact length: one allocation, no intermediate Vec.
    h.iter().chain(payload.iter()).copied().collect()
}

impl OwnedTarget {
    pub(crate) fn from_target(t: &Target<'_>) -> OwnedTarget {
        match *t {
            Target::Conn(id) => OwnedTarget::Conns(vec![id]),
            Target::Conns(ids) => OwnedTarget::Conns(ids.to_vec()),
            Target::Key(k) => OwnedTarget::Keys(Box::new([k.into()])),
            Target::Keys(ks) => OwnedTarget::Keys(distinct_keys(ks)),
            Target::Topic(t) => OwnedTarget::Topic(t.into()),
            Target::All => OwnedTarget::All,
        }
    }
}

/// The distinct keys of a list, owned. Duplicates go before anything is expanded: a key
/// listed 400,000 times is looked up once, not turned into 400,000 copies of its
/// connections. Sorting borrowed `&str`s costs one pointer pair per listed key, transiently.
fn distinct_keys(ks: &[&str]) -> Box<[Box<str>]> {
    let mut v: Vec<&str> = ks.to_vec();
    v.sort_unstable();
    v.dedup();
    v.into_iter().map(Box::<str>::from).collect()
}

/// Slots a worker's delivery scratch vector keeps between events whatever its connection
/// count (16 KiB).
const SCRATCH_KEEP: usize = 4096;

/// Whether a delivery scratch vector of `capacity` slots grew past what a worker with
/// `conns` connections needs (a recipient list never holds more than one slot per
/// connection once de-duplicated): then it is freed rather than kept at its peak for the
/// worker's life.
pub(crate) fn scratch_spike(capacity: usize, conns: usize) -> bool {
    capacity > SCRATCH_KEEP.max(2 * conns)
}

/// Splits a list of connections by owning worker: `out[w]` gets worker `w`'s recipients.
pub(crate) fn group_by_worker(ids: &[ConnId], workers: usize) -> Vec<Vec<ConnId>> {
    let mut out = vec![Vec::new(); workers];
    for id in ids {
        if let Some(v) = out.get_mut(id.worker()) {
            v.push(*id);
        }
    }
    out
}

/// Splits one published event into the per-worker events that carry it, the one routing
/// both publishers use (a connection's `Ctx::publish` on its worker and `Handle::publish` from
/// any thread): a list of connections is grouped by owning worker (workers without one of
/// them get nothing); keys, a topic or everyone go to every worker as one shared
/// `Arc<Event>`, which each resolves against its own tables. With a `receipt` (the publishing
/// connection and its tag, or a waiting [`Receipt`]), the parts share one [`Tracker`]; with `deflate` (the server
/// compresses), they share one compressed twin's cell ([`Twin`]). `dispatch` is called once per
/// part with the worker and its event; returns how many parts there were (0: no worker holds
/// a recipient, and no receipt will come from the workers). Every part skips `except`.
pub(crate) fn route(
    frame: Arc<[u8]>,
    target: OwnedTarget,
    workers: usize,
    receipt: Option<ReceiptTo>,
    except: Option<ConnId>,
    deflate: bool,
    mut dispatch: impl FnMut(usize, Arc<Event>),
) -> usize {
    let twin = new_twin(deflate);
    let tracker = |parts: usize| {
        receipt.clone().map(|to| {
            Arc::new(Tracker {
                remaining: AtomicUsize::new(parts),
                reached: AtomicUsize::new(0),
                to,
            })
        })
    };
    match target {
        OwnedTarget::Conns(ids) => {
            let parts: Vec<(usize, Vec<ConnId>)> = group_by_worker(&ids, workers)
                .into_iter()
                .enumerate()
                .filter(|(_, ids)| !ids.is_empty())
                .collect();
            let tracker = tracker(parts.len());
            let n = parts.len();
            for (w, ids) in parts {
                let ev = Event {
                    frame: frame.clone(),
                    target: OwnedTarget::Conns(ids),
                    tracker: tracker.clone(),
                    except,
                    twin: twin.clone(),
                };
                dispatch(w, Arc::new(ev));
            }
            n
        }
        target => {
            let ev = Arc::new(Event {
                frame,
                target,
                tracker: tracker(workers),
                except,
                twin,
            });
            for w in 0..workers {
                dispatch(w, ev.clone());
            }
            workers
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_encoded_once_whole() {
        let f = encode_shared(Message::Text("Hello"));
        assert_eq!(&*f, &[0x81, 0x05, b'H', b'e', b'l', b'l', b'o']);
        let big = vec![7u8; 70_000];
        let f = encode_shared(Message::Binary(&big));
        assert_eq!(f.len(), 10 + 70_000);
        assert_eq!(&f[..2], &[0x82, 127]);
    }

    #[test]
    fn route_groups_connections_by_worker_and_shares_everything_else() {
        let frame = encode_shared(Message::Text("x"));
        // Connections on workers 0 and 2 of 3: two parts, one tracker counting two.
        let ids = [
            ConnId::new(2, 5, 1),
            ConnId::new(0, 1, 1),
            ConnId::new(2, 6, 1),
        ];
        let mut got = Vec::new();
        let origin = ConnId::new(1, 9, 1);
        let parts = route(
            frame.clone(),
            OwnedTarget::from_target(&Target::Conns(&ids)),
            3,
            Some(ReceiptTo::Conn(origin, 7)),
            None,
            true,
            |w, ev| got.push((w, ev)),
        );
        assert_eq!(parts, 2);
        let twin = got[0].1.twin.as_ref().expect("the server compresses");
        assert!(
            Arc::ptr_eq(twin, got[1].1.twin.as_ref().unwrap()),
            "the parts share one twin: compressed once per event, not per worker"
        );
        let workers: Vec<usize> = got.iter().map(|(w, _)| *w).collect();
        assert_eq!(workers, [0, 2]);
        let OwnedTarget::Conns(on2) = &got[1].1.target else {
            panic!("connections stay connections");
        };
        assert_eq!(on2, &[ids[0], ids[2]]);
        let t = got[0].1.tracker.as_ref().expect("a receipt was asked for");
        assert!(Arc::ptr_eq(t, got[1].1.tracker.as_ref().unwrap()));
        assert_eq!(t.finish_part(1), None);
        assert_eq!(t.finish_part(2), Some(3));
        assert!(
            Arc::ptr_eq(&got[0].1.frame, &frame),
            "the frame is shared, not copied"
        );

        // A topic goes to every worker as one event; no receipt, no tracker.
        let mut got = Vec::new();
        let parts = route(
            frame,
            OwnedTarget::from_target(&Target::Topic("t")),
            3,
            None,
            None,
            false,
            |w, ev| got.push((w, ev)),
        );
        assert_eq!(parts, 3);
        assert!(got[0].1.twin.is_none(), "no twin without compression");
        assert!(got.iter().all(|(_, ev)| Arc::ptr_eq(ev, &got[0].1)));
        assert!(got[0].1.tracker.is_none());

        // Nobody on any worker: no part at all.
        let parts = route(
            encode_shared(Message::Text("x")),
            OwnedTarget::Conns(vec![ConnId::new(7, 1, 1)]),
            3,
            Some(ReceiptTo::Conn(origin, 8)),
            None,
            true,
            |_, _| panic!("no worker holds a recipient"),
        );
        assert_eq!(parts, 0);
    }

    #[test]
    fn keys_are_deduplicated_before_they_travel() {
        let listed = vec!["bob"; 10_000];
        let mut listed = listed;
        listed.extend(["alice", "bob", "carol", "alice"]);
        let OwnedTarget::Keys(k) = OwnedTarget::from_target(&Target::Keys(&listed)) else {
            panic!("keys stay keys");
        };
        let k: Vec<&str> = k.iter().map(|s| &**s).collect();
        assert_eq!(k, ["alice", "bob", "carol"]);
    }

    #[test]
    fn scratch_is_freed_past_twice_the_connections() {
        assert!(!scratch_spike(4096, 0));
        assert!(scratch_spike(4097, 0));
        assert!(!scratch_spike(20_000, 10_000));
        assert!(scratch_spike(20_001, 10_000));
    }

    #[test]
    fn key_cap_counts_listed_keys() {
        let refused = std::sync::atomic::AtomicU64::new(0);
        let three = ["a", "a", "b"];
        assert!(!over_key_cap(&Target::Keys(&three), 3, &refused));
        assert!(!over_key_cap(&Target::Keys(&three), 0, &refused));
        assert!(!over_key_cap(&Target::All, 1, &refused));
        assert!(over_key_cap(&Target::Keys(&three), 2, &refused));
        assert_eq!(refused.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn receipt_waits_until_the_last_part_then_holds_the_total() {
        let r = Receipt {
            cell: Arc::default(),
        };
        assert_eq!(r.try_get(), None);
        assert_eq!(r.wait_timeout(Duration::from_millis(20)), None, "times out");
        let cell = r.cell.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            cell.complete(3);
        });
        assert_eq!(r.clone().wait_timeout(Duration::from_secs(5)), Some(3));
        t.join().unwrap();
        assert_eq!(r.try_get(), Some(3));
    }

    #[test]
    fn tracker_reports_once_with_the_total() {
        let t = Tracker {
            remaining: AtomicUsize::new(3),
            reached: AtomicUsize::new(0),
            to: ReceiptTo::Conn(ConnId::new(0, 1, 1), 9),
        };
        assert_eq!(t.finish_part(2), None);
        assert_eq!(t.finish_part(0), None);
        assert_eq!(t.finish_part(5), Some(7));
    }
}
