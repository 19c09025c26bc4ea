//! Upgrades answered later, from any thread ([`Pending`]), and the HTTP answers a handler
//! produces (a 101 with its headers, a [`Reject`], an [`HttpResponse`]).
//!
//! A deferred upgrade leaves the connection in its machine's `Awaiting` phase (bounded by
//! the handshake timeout, and by `Config::max_pending_upgrades` per worker). The answer
//! travels back through the owning worker's inbox, like a `Handle` command, with the accept
//! key and the response headers it needs: the worker keeps nothing for it but the phase.

use super::handle::Handle;
use super::inbox::{Answer, Command};
use crate::handler::{HttpResponse, Reject, Upgrade};
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
