//! What `Handler::on_upgrade` and `Handler::on_http` work with ([`Upgrade`], [`Reject`],
//! [`HttpResponse`]; re-exported by `handler.rs`), upgrades answered later, from any thread
//! ([`Pending`]), and the writers of those HTTP answers (a 101 with its headers, a
//! rejection, a response).
//!
//! A deferred upgrade leaves the connection in its machine's `Awaiting` phase (bounded by
//! the handshake timeout, and by `Config::max_pending_upgrades` per worker). The answer
//! travels back through the owning worker's inbox, like a `Handle` command, with the accept
//! key and the response headers it needs: the worker keeps nothing for it but the phase.

use super::handle::Handle;
use super::inbox::{Answer, Command};
use crate::proto::deflate::Agreed;
use crate::proto::handshake::{write_accept_response, write_http_response, AcceptKey};
use crate::types::ConnId;
use std::fmt;
use std::marker::PhantomData;

/// What a [`Pending`] needs to answer: set by the worker on the [`crate::Upgrade`] it hands
/// to `on_upgrade` while it may take one more pending upgrade.
#[derive(Debug)]
pub(crate) struct DeferSlot {
    pub(crate) handle: Handle,
    pub(crate) id: ConnId,
    pub(crate) accept: AcceptKey,
    /// The permessage-deflate offer the server could accept (settled with the answer).
    pub(crate) offer: Option<Agreed>,
}

/// What `on_upgrade` may add to the `101 Switching Protocols` answer, or defer it.
#[derive(Debug, Default)]
pub struct Upgrade {
    pub(crate) protocol: Option<String>,
    pub(crate) headers: Vec<(String, String)>,
    /// Present while the worker may take one more deferred upgrade.
    pub(crate) slot: Option<DeferSlot>,
    pub(crate) deferred: bool,
}

impl Upgrade {
    /// Chooses one of the subprotocols the client offered (`Sec-WebSocket-Protocol`).
    pub fn protocol(&mut self, p: impl Into<String>) -> &mut Self {
        self.protocol = Some(p.into());
        self
    }

    /// Adds a response header. A name or value with CR/LF fails the upgrade with 500.
    pub fn header(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Answers later, from any thread: `f` gets a [`Pending`] (which is `Send`) to
    /// `accept(state)` or `reject(..)` when the decision is made (a token checked by an auth
    /// service); return what `defer` returns from `on_upgrade`. The protocol and headers set
    /// so far go into the `Pending`.
    ///
    /// The client waits at most `Config::handshake_timeout` from its connect, then is
    /// dropped. Past `Config::max_pending_upgrades` deferred upgrades on this worker, `f` is
    /// not called and the upgrade is refused at once with 503 and `Retry-After: 1`.
    ///
    /// ```no_run
    /// # use volley::{Pending, Reject, Request, Upgrade};
    /// # struct User;
    /// # fn check(_: &str) -> Option<User> { None }
    /// fn on_upgrade(req: &Request<'_>, up: &mut Upgrade) -> Result<User, Reject> {
    ///     let token = req.query.unwrap_or("").to_owned();
    ///     up.defer(move |pending: Pending<User>| {
    ///         std::thread::spawn(move || match check(&token) {
    ///             Some(user) => pending.accept(user),
    ///             None => pending.reject(
    ///                 Reject::new(401, "log in").header("WWW-Authenticate", "Bearer"),
    ///             ),
    ///         });
    ///     })
    /// }
    /// ```
    pub fn defer<S: Send + 'static>(&mut self, f: impl FnOnce(Pending<S>)) -> Result<S, Reject> {
        if self.deferred {
            tracing::error!("Upgrade::defer called twice: the first Pending answers");
            return Err(Reject::new(500, "internal error\n"));
        }
        let Some(slot) = self.slot.take() else {
            tracing::info!(
                "upgrade refused: max_pending_upgrades deferred upgrades on this worker"
            );
            return Err(Reject::new(503, "too many pending upgrades\n").header("Retry-After", "1"));
        };
        self.deferred = true;
        let protocol = self.protocol.take();
        let headers = std::mem::take(&mut self.headers);
        f(Pending::new(slot, protocol, headers));
        Err(Reject::new(0, "deferred"))
    }
}

/// Refuses an upgrade with a status, a short body and optional headers
/// (`WWW-Authenticate`, `Retry-After`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    /// The HTTP status, such as 401, 403 or 404.
    pub status: u16,
    /// A short text body.
    pub body: String,
    /// Extra response headers. A name or value with CR, LF or NUL (or a name that is not an
    /// HTTP token) turns the answer into a 500, logged: nothing is injected.
    pub headers: Vec<(String, String)>,
}

impl Reject {
    /// A rejection with `status` and `body`.
    pub fn new(status: u16, body: impl Into<String>) -> Reject {
        Reject {
            status,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// Adds a response header, such as `WWW-Authenticate: Bearer` or `Retry-After: 5`.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Reject {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A response to a plain HTTP request (one that is not an upgrade).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: std::borrow::Cow<'static, str>,
    /// Extra response headers (validated as for [`Reject::headers`]: a bad one answers 500).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A response with `status`, `content_type` and `body`, no extra headers.
    pub fn new(
        status: u16,
        content_type: impl Into<std::borrow::Cow<'static, str>>,
        body: impl Into<Vec<u8>>,
    ) -> HttpResponse {
        HttpResponse {
            status,
            content_type: content_type.into(),
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// Adds a response header (`Cache-Control`, `Location`, ...).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> HttpResponse {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// An upgrade whose answer comes later, from any thread: made by
/// [`Upgrade::defer`](crate::Upgrade::defer) inside `Handler::on_upgrade`. `Send`; answer it
/// once with [`Pending::accept`] or [`Pending::reject`].
///
/// The client waits meanwhile, at most `Config::handshake_timeout` from its connect: past it
/// the connection is dropped and a late answer is ignored (its state dropped). A `Pending`
/// dropped unanswered rejects the upgrade with 500 (logged).
pub struct Pending<S: Send + 'static> {
    slot: Option<DeferSlot>,
    /// The 101's subprotocol and headers (never deferred again: it holds no slot).
    upgrade: Upgrade,
    _state: PhantomData<fn() -> S>,
}

impl<S: Send + 'static> fmt::Debug for Pending<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("id", &self.slot.as_ref().map(|s| s.id))
            .finish_non_exhaustive()
    }
}

impl<S: Send + 'static> Pending<S> {
    pub(crate) fn new(
        slot: DeferSlot,
        protocol: Option<String>,
        headers: Vec<(String, String)>,
    ) -> Self {
        Pending {
            slot: Some(slot),
            upgrade: Upgrade {
                protocol,
                headers,
                ..Upgrade::default()
            },
            _state: PhantomData,
        }
    }

    /// The id the connection will have once open (as `Ctx::id` will say).
    pub fn id(&self) -> ConnId {
        self.slot.as_ref().expect("answered once").id
    }

    /// What the 101 will carry: the subprotocol and headers set in `on_upgrade` so far, to
    /// change before [`Pending::accept`] (`pending.upgrade().header("X-User", name)`).
    pub fn upgrade(&mut self) -> &mut Upgrade {
        &mut self.upgrade
    }

    /// Accepts: the 101 is sent and the connection opens with `state` (`on_open` follows,
    /// on the connection's worker).
    pub fn accept(mut self, state: S) {
        self.answer(Ok(state));
    }

    /// Refuses with the rejection's status, headers and body.
    pub fn reject(mut self, reject: Reject) {
        self.answer(Err(reject));
    }

    fn answer(&mut self, result: Result<S, Reject>) {
        let Some(slot) = self.slot.take() else { return };
        let answer = Answer {
            accept: slot.accept,
            offer: slot.offer,
            protocol: self.upgrade.protocol.take(),
            headers: std::mem::take(&mut self.upgrade.headers),
            result: Box::new(result),
        };
        if let Some(w) = slot.handle.shared.workers.get(slot.id.worker()) {
            w.push(Command::Upgrade(slot.id, Box::new(answer)));
        }
    }
}

impl<S: Send + 'static> Drop for Pending<S> {
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            tracing::warn!(conn = %slot.id, "a deferred upgrade was dropped unanswered: 500");
            self.answer(Err(Reject::new(500, "upgrade not answered\n")));
        }
    }
}

/// Writes `resp` into `out`; a header the handler made invalid (CR/LF, a bad name) turns it
/// into a 500, logged, so nothing is injected into the response.
pub(crate) fn write_response(out: &mut Vec<u8>, resp: &HttpResponse) {
    let extra: Vec<(&str, &str)> = resp
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    if let Err(e) = write_http_response(out, resp.status, &resp.content_type, &extra, &resp.body) {
        tracing::error!(
            status = resp.status,
            "handler produced an invalid response: {e}"
        );
        out.clear();
        write_http_response(out, 500, "text/plain", &[], b"internal error\n").expect("static");
    }
}

/// The answer to a refused upgrade.
pub(crate) fn rejection(rej: Reject) -> HttpResponse {
    HttpResponse {
        status: rej.status,
        content_type: "text/plain; charset=utf-8".into(),
        headers: rej.headers,
        body: rej.body.into_bytes(),
    }
}

/// Writes the 101 into `out`; false (and `out` holds a 500 instead) if the handler's
/// protocol or headers are invalid.
pub(crate) fn write_accept(
    out: &mut Vec<u8>,
    accept: &AcceptKey,
    protocol: Option<&str>,
    headers: &[(String, String)],
) -> bool {
    let extra: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    match write_accept_response(out, accept, protocol, &extra) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!("handler produced an invalid upgrade response: {e}");
            out.clear();
            write_http_response(out, 500, "text/plain", &[], b"internal error\n").expect("static");
            false
        }
    }
}
