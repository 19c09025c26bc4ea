//! What every thread of a server shares ([`Shared`]: the workers' inboxes and counters, the
//! address, the cluster link) and the public [`Handle`] on it.

use super::inbox::{BindOp, Command, WorkerShared};
use super::stats::{Stats, WorkerStats};
use crate::broadcast::Receipt;
use crate::proto::CloseCode;
use crate::types::{ConnId, Message, Target};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) workers: Vec<WorkerShared>,
    pub(crate) local_addr: SocketAddr,
    pub(crate) shutdown: AtomicBool,
    /// Connections held by all workers together, kept only when `max_connections` is set.
    pub(crate) open_conns: std::sync::atomic::AtomicUsize,
    /// `Config::max_keys_per_event`, checked where a publish is made.
    pub(crate) max_keys_per_event: usize,
    /// `Config::deflate` is on: events carry a compressed twin's cell.
    pub(crate) deflate: bool,
    /// `Config::max_keys_per_conn` and `max_topics_per_conn`, to report a refusal.
    pub(crate) max_bindings: (usize, usize),
    /// This node's side of a cluster, if the server is in one.
    pub(crate) cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl crate::cluster::Node for Shared {
    fn workers(&self) -> &[WorkerShared] {
        &self.workers
    }

    fn deflate(&self) -> bool {
        self.deflate
    }
}

impl Shared {
    /// This node's id in its cluster (0: not in one).
    pub(crate) fn node(&self) -> u8 {
        self.cluster.as_ref().map_or(0, |c| c.node)
    }

    /// The cluster, if `id` is a connection of another node.
    pub(crate) fn remote(&self, id: ConnId) -> Option<&crate::cluster::Cluster> {
        self.cluster.as_deref().filter(|c| id.node() != c.node)
    }
}

/// A cloneable, `Send + Sync` handle to a running server, for any thread of the host.
#[derive(Clone, Debug)]
pub struct Handle {
    pub(crate) shared: Arc<Shared>,
}

impl Handle {
    fn worker(&self, id: ConnId) -> Option<&WorkerShared> {
        self.shared.workers.get(id.worker())
    }

    /// Sends a message to a connection (in a cluster, of any node): delivered as
    /// `publish(Target::Conn(id), msg)` is (one shared frame, queued by reference), in order
    /// with this thread's other sends and publishes. Unknown or closed ids are ignored (and
    /// counted in `Stats::unknown_target` by the node that holds them); the connection's
    /// write budget applies. Dropped (and counted in `Stats::inbox_drops`) if the worker's
    /// inbox is full (`Config::inbox_capacity`).
    pub fn send(&self, id: ConnId, msg: Message<'_>) {
        let frame = crate::broadcast::encode_shared(msg);
        if let Some(c) = self.shared.remote(id) {
            return c.send(id, &frame);
        }
        if let Some(w) = self.worker(id) {
            w.offer(Command::Send(id, frame));
        }
    }

    /// Sends a text message to a connection.
    pub fn send_text(&self, id: ConnId, text: &str) {
        self.send(id, Message::Text(text));
    }

    /// Sends a binary message to a connection.
    pub fn send_binary(&self, id: ConnId, data: &[u8]) {
        self.send(id, Message::Binary(data));
    }

    /// Starts the close handshake of a connection. A code that may not appear in a close
    /// frame is logged and the frame goes out with no code (as [`Ctx::close`]).
    ///
    /// [`Ctx::close`]: crate::Ctx::close
    pub fn close(&self, id: ConnId, code: CloseCode, reason: &str) {
        if let Some(c) = self.shared.remote(id) {
            return c.close(id, code, reason);
        }
        if let Some(w) = self.worker(id) {
            w.push(Command::Close(id, code, reason.to_owned()));
        }
    }

    /// Publishes a message to `target` (connections, keys, a topic, everyone), on every
    /// worker. The frame is encoded once; each worker gets one queue item, not one per
    /// recipient. Events published by one thread reach each recipient in order.
    ///
    /// Returns false, and delivers nothing, if `target` lists more keys than
    /// `Config::max_keys_per_event` (logged and counted in `publishes_refused`). Also false
    /// if a worker's inbox was full (`Config::inbox_capacity`): that worker's recipients miss
    /// the event, the others' get it (counted in `Stats::inbox_drops`).
    pub fn publish(&self, target: Target<'_>, msg: Message<'_>) -> bool {
        self.publish_inner(target, msg, None, None)
    }

    /// Like [`Handle::publish`], with a [`Receipt`]: once every worker has delivered the
    /// event, it holds the number of connections reached, and any thread can wait for it
    /// ([`Receipt::wait_timeout`]). The `Handle` twin of `Ctx::publish_tracked`, whose total
    /// goes to `Handler::on_published` instead; in a cluster it counts this node's deliveries
    /// only (docs/cluster.md). `None`, and nothing delivered, on the same
    /// refusal as `publish` (more keys than `Config::max_keys_per_event`).
    pub fn publish_tracked(&self, target: Target<'_>, msg: Message<'_>) -> Option<Receipt> {
        let receipt = Receipt {
            cell: Arc::default(),
        };
        let to = crate::broadcast::ReceiptTo::Waiter(receipt.cell.clone());
        self.publish_inner(target, msg, None, Some(to))
            .then_some(receipt)
    }

    /// Like [`Handle::publish`], but connection `except` does not receive it even if
    /// `target` includes it: a service relaying a client's message to the others of its
    /// room (as `Ctx::publish_others` does inside a callback).
    pub fn publish_except(&self, target: Target<'_>, msg: Message<'_>, except: ConnId) -> bool {
        self.publish_inner(target, msg, Some(except), None)
    }

    fn publish_inner(
        &self,
        target: Target<'_>,
        msg: Message<'_>,
        except: Option<ConnId>,
        receipt: Option<crate::broadcast::ReceiptTo>,
    ) -> bool {
        if self.over_key_cap(&target, 0) {
            return false;
        }
        let frame = crate::broadcast::encode_shared(msg);
        let workers = &self.shared.workers;
        let target = crate::broadcast::OwnedTarget::from_target(&target);
        // Other nodes get theirs through the broker (only those with interest receive it).
        let target = match &self.shared.cluster {
            Some(c) => c.publish(target, &frame),
            None => target,
        };
        let deflate = self.shared.deflate;
        let mut dropped = false;
        let parts = crate::broadcast::route(
            frame,
            target,
            workers.len(),
            receipt.clone(),
            except,
            deflate,
            |w, ev| dropped |= !workers[w].push_event(ev),
        );
        if let (0, Some(crate::broadcast::ReceiptTo::Waiter(cell))) = (parts, &receipt) {
            cell.complete(0); // no worker holds a recipient
        }
        if let Some(w) = workers.first() {
            w.stats.events_published.fetch_add(1, Ordering::Relaxed);
        }
        !dropped
    }

    /// The per-connection caps on keys and topics.
    pub(crate) fn max_bindings(&self) -> (usize, usize) {
        self.shared.max_bindings
    }

    /// Counts a bind or subscribe refused at its cap.
    pub(crate) fn count_binding_refused(&self, worker: usize) {
        if let Some(w) = self.shared.workers.get(worker) {
            w.stats.bindings_refused.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether `target` lists more keys than allowed; counted on `worker`'s stats if so.
    pub(crate) fn over_key_cap(&self, target: &Target<'_>, worker: usize) -> bool {
        let Some(w) = self.shared.workers.get(worker) else {
            return false;
        };
        crate::broadcast::over_key_cap(
            target,
            self.shared.max_keys_per_event,
            &w.stats.publishes_refused,
        )
    }

    /// Posts a binding change to the connection's worker (or, in a cluster, to its node):
    /// true if posted, false if `id` names no worker of this server or the server is
    /// shutting down.
    fn bind_op(&self, id: ConnId, name: &str, op: BindOp) -> bool {
        if self.is_shutting_down() {
            return false;
        }
        if let Some(c) = self.shared.remote(id) {
            c.bind(id, name, op);
            return true;
        }
        match self.worker(id) {
            Some(w) => {
                w.push(Command::Bind(id, name.into(), op));
                true
            }
            None => false,
        }
    }

    /// Binds a connection to an application key (a user id, a device id). Posted, not yet
    /// applied: true once posted to the connection's worker (in a cluster, to its node), which
    /// applies it in order with this thread's other commands (an unknown or closed
    /// connection, or one at `Config::max_keys_per_conn`, is then left as it is, the latter
    /// counted in `bindings_refused`); false, and nothing posted, if `id` names no worker of
    /// this server or the server is shutting down. (`Ctx::bind_key`, on the connection's own worker,
    /// answers with the outcome instead.)
    pub fn bind_key(&self, id: ConnId, key: &str) -> bool {
        self.bind_op(id, key, BindOp::Bind)
    }

    /// Unbinds a connection from an application key. Posted, not yet applied: the return is
    /// as for [`Handle::bind_key`].
    pub fn unbind_key(&self, id: ConnId, key: &str) -> bool {
        self.bind_op(id, key, BindOp::Unbind)
    }

    /// Subscribes a connection to a topic. Posted, not yet applied: the return is as for
    /// [`Handle::bind_key`] (the worker's cap is `Config::max_topics_per_conn`).
    pub fn subscribe(&self, id: ConnId, topic: &str) -> bool {
        self.bind_op(id, topic, BindOp::Subscribe)
    }

    /// Unsubscribes a connection from a topic. Posted, not yet applied: the return is as for
    /// [`Handle::bind_key`].
    pub fn unsubscribe(&self, id: ConnId, topic: &str) -> bool {
        self.bind_op(id, topic, BindOp::Unsubscribe)
    }

    /// The server's counters, summed over workers.
    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        for w in &self.shared.workers {
            s.add(&w.stats);
        }
        s.protocol_closes.sort();
        s
    }

    /// The cluster counters of this node (`None` outside a cluster).
    pub fn cluster_stats(&self) -> Option<crate::cluster::ClusterStatsSnapshot> {
        self.shared.cluster.as_ref().map(|c| c.snapshot())
    }

    /// This node's id in its cluster (0 outside a cluster).
    pub fn node_id(&self) -> u8 {
        self.shared.node()
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Every worker's counters in the Prometheus text format (what `GET /metrics` answers on
    /// `Config::metrics_addr`, or on `Config::metrics_path`).
    pub fn prometheus(&self) -> String {
        let mut out = String::with_capacity(8192);
        let stats: Vec<&WorkerStats> = self.shared.workers.iter().map(|w| &w.stats).collect();
        WorkerStats::write_prometheus(&stats, &mut out);
        if let Some(c) = &self.shared.cluster {
            c.write_prometheus(&mut out);
        }
        out
    }

    /// Starts a graceful shutdown: stop accepting, close every connection with 1001, wait up
    /// to the shutdown timeout for the close handshakes, then stop the workers.
    pub fn shutdown(&self) {
        if !self.shared.shutdown.swap(true, Ordering::AcqRel) {
            for w in &self.shared.workers {
                w.push(Command::Shutdown);
            }
        }
    }

    /// Whether a shutdown was requested.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutdown.load(Ordering::Acquire)
    }
}
