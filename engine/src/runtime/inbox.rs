//! What other threads send a worker ([`Command`]) and the inbox they send it through
//! ([`WorkerShared`]: the queue, the wake-up, the worker's counters).

use super::stats::WorkerStats;
use crate::proto::deflate::Agreed;
use crate::proto::handshake::AcceptKey;
use crate::proto::CloseCode;
use crate::types::ConnId;
use std::any::Any;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A request to a worker from another thread.
#[derive(Debug)]
pub(crate) enum Command {
    /// Queue a message for one connection (the frame shared as a publish's is).
    Send(ConnId, Arc<[u8]>),
    /// Start a close handshake.
    Close(ConnId, CloseCode, String),
    /// Stop accepting, close every connection with 1001, exit.
    Shutdown,
    /// Deliver an event to this worker's recipients.
    Publish(Arc<crate::broadcast::Event>),
    /// A tracked publish reached `reached` connections: tell its origin.
    Receipt {
        origin: ConnId,
        tag: u64,
        reached: usize,
    },
    /// Change a connection's key or topic bindings.
    Bind(ConnId, Box<str>, BindOp),
    /// The answer to a deferred upgrade.
    Upgrade(ConnId, Box<Answer>),
}

/// Wakes a worker's poller from another thread.
pub(crate) trait Wake: Send + Sync {
    fn wake(&self) -> io::Result<()>;
}

/// A worker's queued commands.
#[derive(Default)]
pub(crate) struct Inbox {
    cmds: Vec<Command>,
    /// How many of `cmds` could have been dropped ([`WorkerShared::offer`]).
    droppable: usize,
}

/// What other threads share with one worker.
pub(crate) struct WorkerShared {
    inbox: Mutex<Inbox>,
    /// `Config::inbox_capacity`: the most droppable commands the inbox holds.
    capacity: usize,
    /// Set when a wake-up is already on its way: one wake per burst, not per command.
    pub(crate) wake_pending: AtomicBool,
    pub(crate) waker: Box<dyn Wake>,
    pub(crate) stats: WorkerStats,
}

impl fmt::Debug for WorkerShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerShared").finish_non_exhaustive()
    }
}

impl WorkerShared {
    pub(crate) fn new(waker: Box<dyn Wake>, capacity: usize) -> WorkerShared {
        WorkerShared {
            inbox: Mutex::new(Inbox::default()),
            capacity,
            wake_pending: AtomicBool::new(false),
            waker,
            stats: WorkerStats::default(),
        }
    }

    /// Queues a command that must arrive (a close, a binding, a receipt, a tracked event).
    pub(crate) fn push(&self, cmd: Command) {
        self.inbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cmds
            .push(cmd);
        self.wake();
    }

    /// Queues a message or an untracked event unless the inbox holds
    /// `Config::inbox_capacity` of them already; then drops it, counts it in
    /// `Stats::inbox_drops` and returns false.
    pub(crate) fn offer(&self, cmd: Command) -> bool {
        {
            let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
            if inbox.droppable >= self.capacity {
                drop(inbox);
                self.stats.inbox_drops.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            inbox.droppable += 1;
            inbox.cmds.push(cmd);
        }
        self.wake();
        true
    }

    /// [`WorkerShared::push`] of an event: offered unless it is tracked (its receipt waits
    /// for every worker's part).
    pub(crate) fn push_event(&self, ev: Arc<crate::broadcast::Event>) -> bool {
        if ev.tracker.is_some() {
            self.push(Command::Publish(ev));
            true
        } else {
            self.offer(Command::Publish(ev))
        }
    }

    fn wake(&self) {
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.waker.wake() {
                tracing::warn!("waking a worker failed: {e}");
            }
        }
    }

    /// Takes every queued command (called by the worker after a wake-up).
    pub(crate) fn drain(&self, into: &mut Vec<Command>) {
        self.wake_pending.store(false, Ordering::Release);
        let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut inbox.cmds, into);
        inbox.droppable = 0;
    }
}

/// A change to a connection's key or topic bindings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BindOp {
    Bind,
    Unbind,
    Subscribe,
    Unsubscribe,
}

/// A deferred answer on its way to the worker. `result` is a boxed
/// `Result<H::State, Reject>` (checked by a downcast).
pub(crate) struct Answer {
    pub(crate) accept: AcceptKey,
    pub(crate) offer: Option<Agreed>,
    pub(crate) protocol: Option<String>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) result: Box<dyn Any + Send>,
}

impl fmt::Debug for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Answer")
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}
