//! The embedding surface: the [`Handler`] trait and what its callbacks receive.
//!
//! Each worker thread owns a clone of the handler (thread-per-core: no lock between workers
//! on the hot path); share application state between them through an `Arc` inside it.
//!
//! The types the callbacks take and return are re-exported here: [`Message`] is the shared
//! vocabulary's, and [`Upgrade`], [`Reject`], [`HttpResponse`] and [`SendStatus`] are defined
//! with the runtime pieces they are made of, a layer below this one (`runtime::upgrade`,
//! `runtime::outbox`); the worker core that calls the handler is above it.

use crate::broadcast::registry::Added;
use crate::proto::handshake::Request;
use crate::proto::CloseCode;
use crate::runtime::handle::Handle;
use crate::runtime::outbox::Outbox;
pub use crate::runtime::outbox::SendStatus;
pub use crate::runtime::upgrade::{HttpResponse, Reject, Upgrade};
use crate::types::ConnId;
pub use crate::types::Message;
use crate::types::{LimitReached, Target};

/// The application's side of the server. One clone runs on each worker thread.
///
/// # Examples
/// ```no_run
/// use volley::{Config, Ctx, Handler, Message, Reject, Request, Server, Upgrade};
///
/// #[derive(Clone)]
/// struct Echo;
///
/// impl Handler for Echo {
///     type State = ();
///     fn on_upgrade(&mut self, _: &Request<'_>, _: &mut Upgrade) -> Result<(), Reject> {
///         Ok(())
///     }
///     fn on_message(&mut self, ctx: &mut Ctx<'_>, _state: &mut (), msg: Message<'_>) {
///         ctx.send(msg);
///     }
/// }
///
/// let server = Server::start(Config::new("127.0.0.1:9001"), Echo).unwrap();
/// println!("listening on {}", server.local_addr());
/// server.join();
/// ```
pub trait Handler: Clone + Send + 'static {
    /// Per-connection state, created by [`Handler::on_upgrade`].
    type State: Send + 'static;

    /// Decides an upgrade: return the connection's state to accept (optionally choosing a
    /// subprotocol or adding headers through `upgrade`), or a [`Reject`] to answer with its
    /// status (401, 403, ...). `req` has the path, query, headers, origin and the offered
    /// subprotocols.
    fn on_upgrade(
        &mut self,
        req: &Request<'_>,
        upgrade: &mut Upgrade,
    ) -> Result<Self::State, Reject>;

    /// Answers a plain HTTP request (no `Upgrade: websocket`). `None` (the default) answers
    /// `426 Upgrade Required`.
    fn on_http(&mut self, req: &Request<'_>) -> Option<HttpResponse> {
        let _ = req;
        None
    }

    /// The connection is open: the 101 was queued. Frames sent here follow it.
    fn on_open(&mut self, ctx: &mut Ctx<'_>, state: &mut Self::State) {
        let _ = (ctx, state);
    }

    /// A complete text or binary message arrived. The slice is valid only during the call.
    fn on_message(&mut self, ctx: &mut Ctx<'_>, state: &mut Self::State, msg: Message<'_>);

    /// A publish made with [`Ctx::publish_tracked`] from this connection has been delivered
    /// on every worker: `reached` connections got it.
    fn on_published(
        &mut self,
        ctx: &mut Ctx<'_>,
        state: &mut Self::State,
        tag: u64,
        reached: usize,
    ) {
        let _ = (ctx, state, tag, reached);
    }

    /// The connection's unsent output, which had gone over `Config::high_water` (a
    /// [`SendStatus::Backpressure`], or publishes and `Handle` sends piling up), is down to
    /// half the mark: a producer paused for this connection may resume. Runs once per
    /// crossing, on the connection's worker, only while the connection is open.
    fn on_drain(&mut self, ctx: &mut Ctx<'_>, state: &mut Self::State) {
        let _ = (ctx, state);
    }

    /// The connection closed. Called exactly once for every opened connection, with the
    /// close code (1006 when the TCP connection dropped without a close frame).
    fn on_close(&mut self, ctx: &mut Ctx<'_>, state: Self::State, code: CloseCode, reason: &str) {
        let _ = (ctx, state, code, reason);
    }
}

/// What a callback can do: answer its connection, address others, reach the [`Handle`].
pub struct Ctx<'a> {
    pub(crate) out: Outbox<'a>,
    pub(crate) handle: &'a Handle,
}

impl std::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

impl Ctx<'_> {
    /// The connection this callback is about.
    pub fn id(&self) -> ConnId {
        self.out.own_id()
    }

    /// Sends a message to this connection and says what became of it (see [`SendStatus`]):
    /// on `Backpressure` pause this connection's producer until [`Handler::on_drain`].
    #[inline]
    pub fn send(&mut self, msg: Message<'_>) -> SendStatus {
        self.out.send_own(msg)
    }

    /// Sends a text message to this connection.
    pub fn send_text(&mut self, text: &str) -> SendStatus {
        self.send(Message::Text(text))
    }

    /// Sends a binary message to this connection.
    pub fn send_binary(&mut self, data: &[u8]) -> SendStatus {
        self.send(Message::Binary(data))
    }

    /// Unsent bytes queued for this connection (0 once it is closing), as uWebSockets'
    /// `getBufferedAmount()`.
    pub fn buffered_amount(&self) -> usize {
        self.out.buffered()
    }

    /// Sends a message to another connection (of any worker), after the callback returns:
    /// delivered as `publish(Target::Conn(id), msg)` is (one shared frame, queued by
    /// reference). Unknown or closed ids are ignored and counted (`Stats::unknown_target`);
    /// the recipient's write budget applies.
    pub fn send_to(&mut self, id: ConnId, msg: Message<'_>) {
        self.out.send_to(id, msg);
    }

    /// Starts the close handshake of this connection with `code` and `reason`. The
    /// connection's later messages in the same read are not delivered. A code that may not
    /// appear in a close frame ([`CloseCode::is_allowed_on_wire`]: not 1005, 1006, 1015, or
    /// outside 1000-4999's defined codes) is logged and the frame goes out with no code.
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        self.out.close(self.id(), code, reason);
    }

    /// Starts the close handshake of another connection.
    pub fn close_conn(&mut self, id: ConnId, code: CloseCode, reason: &str) {
        self.out.close(id, code, reason);
    }

    /// Publishes a message to `target` on every worker (see [`Target`]), and in a cluster on
    /// every node with interest. The frame is encoded once and shared by every recipient.
    ///
    /// Returns false, and delivers nothing, if `target` lists more keys than
    /// `Config::max_keys_per_event` (logged and counted in `publishes_refused`).
    pub fn publish(&mut self, target: Target<'_>, msg: Message<'_>) -> bool {
        if self.handle.over_key_cap(&target, self.id().worker()) {
            return false;
        }
        self.out.publish(target, msg, None, None);
        true
    }

    /// Like [`Ctx::publish`], but this connection does not receive it even if `target`
    /// includes it (uWebSockets' `ws->publish`): a chat line reaches every other member of
    /// the room exactly once.
    pub fn publish_others(&mut self, target: Target<'_>, msg: Message<'_>) -> bool {
        if self.handle.over_key_cap(&target, self.id().worker()) {
            return false;
        }
        let me = self.id();
        self.out.publish(target, msg, None, Some(me));
        true
    }

    /// Like [`Ctx::publish`], and once every worker has delivered it,
    /// [`Handler::on_published`] runs on this connection with `tag` and the number of
    /// connections reached. A refused publish (false) gets no `on_published`.
    ///
    /// In a cluster (`Config::cluster`) the count is this node's deliveries only: other
    /// nodes deliver the event too (at most once, see docs/cluster.md) but do not report back.
    pub fn publish_tracked(&mut self, target: Target<'_>, msg: Message<'_>, tag: u64) -> bool {
        if self.handle.over_key_cap(&target, self.id().worker()) {
            return false;
        }
        self.out.publish(target, msg, Some(tag), None);
        true
    }

    /// Binds this connection to an application key; false if it already was, if the
    /// connection is closing, or if it holds `Config::max_keys_per_conn` keys already
    /// ([`Ctx::try_bind_key`] tells these apart).
    pub fn bind_key(&mut self, key: &str) -> bool {
        self.try_bind_key(key) == Ok(true)
    }

    /// Binds this connection to an application key: `Ok(true)` if newly bound, `Ok(false)`
    /// if it already was (or the connection is closing), `Err` if it holds
    /// `Config::max_keys_per_conn` keys already (logged once per connection and counted in
    /// `bindings_refused`).
    pub fn try_bind_key(&mut self, key: &str) -> Result<bool, LimitReached> {
        let limit = self.handle.max_bindings().0;
        let added = self
            .out
            .bindings(Added::Already, |r, s, slot| r.bind(s, slot, key));
        self.added(added, limit)
    }

    /// Unbinds this connection from an application key; false if it was not bound, or if
    /// the connection is closing (its bindings all go when it closes).
    pub fn unbind_key(&mut self, key: &str) -> bool {
        self.out
            .bindings(false, |r, s, slot| r.unbind(s, slot, key))
    }

    /// Subscribes this connection to a topic; false if it already was, if the connection is
    /// closing, or if it holds `Config::max_topics_per_conn` topics already
    /// ([`Ctx::try_subscribe`] tells these apart).
    pub fn subscribe(&mut self, topic: &str) -> bool {
        self.try_subscribe(topic) == Ok(true)
    }

    /// Subscribes this connection to a topic: `Ok(true)` if newly subscribed, `Ok(false)` if
    /// it already was (or the connection is closing), `Err` if it holds
    /// `Config::max_topics_per_conn` topics already (logged once per connection and counted
    /// in `bindings_refused`).
    pub fn try_subscribe(&mut self, topic: &str) -> Result<bool, LimitReached> {
        let limit = self.handle.max_bindings().1;
        let added = self
            .out
            .bindings(Added::Already, |r, s, slot| r.subscribe(s, slot, topic));
        self.added(added, limit)
    }

    fn added(&self, added: Added, limit: usize) -> Result<bool, LimitReached> {
        match added {
            Added::Yes => Ok(true),
            Added::Already => Ok(false),
            Added::Full => {
                self.handle.count_binding_refused(self.id().worker());
                Err(LimitReached { limit })
            }
        }
    }

    /// Unsubscribes this connection from a topic; false if it was not subscribed, or if the
    /// connection is closing (its bindings all go when it closes).
    pub fn unsubscribe(&mut self, topic: &str) -> bool {
        self.out
            .bindings(false, |r, s, slot| r.unsubscribe(s, slot, topic))
    }

    /// The server's handle (stats, shutdown, other threads' entry point).
    pub fn handle(&self) -> &Handle {
        self.handle
    }
}
