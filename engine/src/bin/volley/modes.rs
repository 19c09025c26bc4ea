//! The reference modes' handlers and wire formats (documented in docs/modes.md).

use crate::envelope::parse_json_envelope;
use std::collections::VecDeque;
use volley::{CloseCode, Ctx, Handler, HttpResponse, Message, Reject, Request, Target, Upgrade};

/// Which behaviour the server runs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every message is sent back to its sender.
    Echo,
    /// Every message is relayed to every connection (the sender included).
    Broadcast,
    /// Clients connect as `/?id=KEY` and send events addressed to keys.
    Notify,
    /// Clients subscribe to topics and publish to them (SUB/UNSUB/PUB text commands).
    Pubsub,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Broadcast => "broadcast",
            Mode::Notify => "notify",
            Mode::Pubsub => "pubsub",
        }
    }
}

const INDEX_HTML: &str = include_str!("index.html");

/// Binary notify envelope: version byte.
pub const NOTIFY_V1: u8 = 0x01;
/// Binary notify receipt: `0x02` + u32 BE connections reached.
pub const NOTIFY_RECEIPT: u8 = 0x02;
/// Binary notify error: `0x03` + UTF-8 reason.
pub const NOTIFY_ERROR: u8 = 0x03;

/// A key or topic: 1 to 128 bytes of letters, digits and `_ . : - /`.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-' | b'/'))
}

#[derive(Clone)]
pub struct Reference {
    pub mode: Mode,
    /// notify: most keys one event may list (0: no limit), also the engine's cap.
    pub max_keys_per_event: usize,
}

/// Per-connection state: 8 bytes in the connection's slab entry, allocated only while a
/// mode needs it (notify: from the upgrade to `on_open`, then from the first event;
/// pubsub: from the first publish).
#[derive(Default)]
pub struct State(Option<Box<Extra>>);

impl State {
    fn in_flight(&mut self) -> &mut InFlight {
        &mut self.0.get_or_insert_with(Default::default).in_flight
    }
}

#[derive(Default)]
struct Extra {
    /// notify: the key from `/?id=KEY`, until `on_open` binds the connection to it.
    key: Option<Box<str>>,
    /// notify and pubsub: replies to events not yet answered, in the order sent.
    in_flight: InFlight,
}

/// The reply an event is owed.
#[derive(Clone, Debug, PartialEq)]
enum Reply {
    /// notify, binary envelope: `0x02 | u32 BE reached`.
    Binary,
    /// notify, JSON envelope: `{"reached":N}`.
    Json,
    /// pubsub: `+PUB <topic> N`.
    Pub(Box<str>),
}

/// A connection's tracked publishes, oldest first, each with its receipt once it came.
///
/// A publish's tag (what the engine passes back to `on_published`) is its sequence number
/// on the connection, so a receipt finds its own entry. Receipts need not come in order:
/// an event completes on whichever worker delivers its last part. When that is another
/// worker, the receipt waits in this worker's inbox; when it is this worker's own part
/// (delivered just after the event was handed to the others), `on_published` runs at once
/// and can overtake the receipt of an earlier event still in the inbox. So with 2 or more
/// workers receipts can come out of order. Replies leave from the front only, so the
/// client gets them in the order it sent the events.
#[derive(Default)]
struct InFlight {
    /// The tag of the front entry.
    first: u64,
    entries: VecDeque<(Reply, Option<usize>)>,
}

impl InFlight {
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// The tag for the next publish; `push` its reply once the publish was accepted.
    fn next_tag(&self) -> u64 {
        self.first.wrapping_add(self.entries.len() as u64)
    }

    fn push(&mut self, reply: Reply) {
        self.entries.push_back((reply, None));
    }

    /// Records the receipt for `tag` and sends every reply now due, in order.
    fn complete(&mut self, tag: u64, reached: usize, mut send: impl FnMut(&Reply, usize)) {
        let i = tag.wrapping_sub(self.first);
        match usize::try_from(i)
            .ok()
            .and_then(|i| self.entries.get_mut(i))
        {
            Some((_, done @ None)) => *done = Some(reached),
            _ => return,
        }
        while let Some(&(_, Some(n))) = self.entries.front() {
            if let Some((reply, _)) = self.entries.pop_front() {
                self.first = self.first.wrapping_add(1);
                send(&reply, n);
            }
        }
    }
}

/// Events of one connection awaiting their receipt, at most (notify and pubsub): past it the
/// connection is closed with 1008, so that a client cannot grow its reply list without end.
const MAX_IN_FLIGHT: usize = 1024;

/// Whether `state` is at [`MAX_IN_FLIGHT`]; then the connection is closed with 1008.
fn over_in_flight(ctx: &mut Ctx<'_>, state: &mut State) -> bool {
    if state.in_flight().len() < MAX_IN_FLIGHT {
        return false;
    }
    ctx.close(CloseCode::POLICY_VIOLATION, "too many events in flight");
    true
}

/// Makes a tracked publish (`publish(ctx, tag)`) and records the reply it is owed, unless
/// the engine refused it (false: too many keys; a refused publish gets no receipt).
fn track(
    ctx: &mut Ctx<'_>,
    state: &mut State,
    reply: Reply,
    publish: impl FnOnce(&mut Ctx<'_>, u64) -> bool,
) -> bool {
    let in_flight = state.in_flight();
    let ok = publish(ctx, in_flight.next_tag());
    if ok {
        in_flight.push(reply);
    }
    ok
}

fn send_reply(ctx: &mut Ctx<'_>, reply: &Reply, reached: usize) {
    match reply {
        Reply::Binary => {
            let mut r = vec![NOTIFY_RECEIPT];
            r.extend_from_slice(&(reached as u32).to_be_bytes());
            ctx.send_binary(&r);
        }
        Reply::Json => {
            ctx.send_text(&format!("{{\"reached\":{reached}}}"));
        }
        Reply::Pub(topic) => {
            ctx.send_text(&format!("+PUB {topic} {reached}"));
        }
    }
}

/// Parses a binary notify envelope: `0x01`, u16 BE key count, (u8 length, key bytes) per
/// key, then the payload.
pub fn parse_binary_envelope(b: &[u8]) -> Result<(Vec<&str>, &[u8]), &'static str> {
    let [NOTIFY_V1, n0, n1, rest @ ..] = b else {
        return Err("envelope must start with 0x01 and a u16 key count");
    };
    let n = u16::from_be_bytes([*n0, *n1]) as usize;
    let mut keys = Vec::with_capacity(n.min(1024));
    let mut rest = rest;
    for _ in 0..n {
        let Some((&len, tail)) = rest.split_first() else {
            return Err("envelope ends inside the key list");
        };
        let Some((key, tail)) = tail.split_at_checked(len as usize) else {
            return Err("envelope ends inside a key");
        };
        let key = std::str::from_utf8(key).map_err(|_| "key is not UTF-8")?;
        if !valid_name(key) {
            return Err("invalid key");
        }
        keys.push(key);
        rest = tail;
    }
    Ok((keys, rest))
}

impl Reference {
    fn notify_json(&mut self, ctx: &mut Ctx<'_>, state: &mut State, text: &str) {
        let reply_err = |ctx: &mut Ctx<'_>, e: &str| {
            ctx.send_text(&serde_json::json!({ "error": e }).to_string());
        };
        let event = match parse_json_envelope(text, self.max_keys_per_event, valid_name) {
            Ok(e) => e,
            Err(why) => return reply_err(ctx, &why),
        };
        if over_in_flight(ctx, state) {
            return;
        }
        let keys: Vec<&str> = event.to.iter().map(|k| &**k).collect();
        let published = |ctx: &mut Ctx<'_>, tag| {
            ctx.publish_tracked(Target::Keys(&keys), Message::Text(&event.data), tag)
        };
        if !track(ctx, state, Reply::Json, published) {
            reply_err(ctx, &self.too_many_keys());
        }
    }

    fn too_many(&self, keys: usize) -> bool {
        self.max_keys_per_event != 0 && keys > self.max_keys_per_event
    }

    fn too_many_keys(&self) -> String {
        format!(
            "too many keys (at most {} per event)",
            self.max_keys_per_event
        )
    }

    fn notify_binary(&mut self, ctx: &mut Ctx<'_>, state: &mut State, b: &[u8]) {
        let reply_err = |ctx: &mut Ctx<'_>, e: &str| {
            let mut reply = vec![NOTIFY_ERROR];
            reply.extend_from_slice(e.as_bytes());
            ctx.send_binary(&reply);
        };
        // The key count comes first: refuse before reading the keys.
        if let [NOTIFY_V1, n0, n1, ..] = b {
            if self.too_many(u16::from_be_bytes([*n0, *n1]) as usize) {
                return reply_err(ctx, &self.too_many_keys());
            }
        }
        match parse_binary_envelope(b) {
            Ok(_) if over_in_flight(ctx, state) => {}
            Ok((keys, payload)) => {
                let published = |ctx: &mut Ctx<'_>, tag| {
                    ctx.publish_tracked(Target::Keys(&keys), Message::Binary(payload), tag)
                };
                if !track(ctx, state, Reply::Binary, published) {
                    reply_err(ctx, &self.too_many_keys());
                }
            }
            Err(e) => reply_err(ctx, e),
        }
    }

    fn pubsub(&mut self, ctx: &mut Ctx<'_>, state: &mut State, msg: Message<'_>) {
        // Replies are answers to this connection's own commands: read backpressure paces
        // them, so their SendStatus is not needed.
        let Message::Text(line) = msg else {
            ctx.send_text(
                "-ERR pubsub commands are text: SUB topic | UNSUB topic | PUB topic payload",
            );
            return;
        };
        let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
        match cmd {
            "SUB" if valid_name(rest) => {
                let _ = match ctx.try_subscribe(rest) {
                    Ok(_) => ctx.send_text(&format!("+SUB {rest}")),
                    Err(e) => ctx.send_text(&format!("-ERR too many subscriptions ({e})")),
                };
            }
            "UNSUB" if valid_name(rest) => {
                ctx.unsubscribe(rest);
                ctx.send_text(&format!("+UNSUB {rest}"));
            }
            "PUB" => {
                let (topic, payload) = rest.split_once(' ').unwrap_or((rest, ""));
                if !valid_name(topic) {
                    ctx.send_text("-ERR invalid topic");
                    return;
                }
                if over_in_flight(ctx, state) {
                    return;
                }
                // A topic target is never refused (only key lists are capped).
                track(ctx, state, Reply::Pub(topic.into()), |ctx, tag| {
                    ctx.publish_tracked(Target::Topic(topic), Message::Text(payload), tag)
                });
            }
            "SUB" | "UNSUB" => {
                ctx.send_text("-ERR invalid topic");
            }
            _ => {
                ctx.send_text("-ERR unknown command (SUB, UNSUB, PUB)");
            }
        }
    }
}

impl Handler for Reference {
    type State = State;

    fn on_upgrade(&mut self, req: &Request<'_>, _up: &mut Upgrade) -> Result<State, Reject> {
        if self.mode == Mode::Notify {
            let id = req
                .query
                .unwrap_or("")
                .split('&')
                .find_map(|kv| kv.strip_prefix("id="));
            return match id {
                Some(id) if valid_name(id) => Ok(State(Some(Box::new(Extra {
                    key: Some(id.into()),
                    ..Extra::default()
                })))),
                Some(_) => Err(Reject::new(
                    400,
                    "id must be 1-128 bytes of [A-Za-z0-9_.:-/]",
                )),
                None => Err(Reject::new(400, "connect as /?id=KEY")),
            };
        }
        Ok(State::default())
    }

    fn on_http(&mut self, req: &Request<'_>) -> Option<HttpResponse> {
        match req.path {
            "/" | "/index.html" => Some(HttpResponse::new(
                200,
                "text/html; charset=utf-8",
                INDEX_HTML.replace("MODE", self.mode.name()),
            )),
            _ => Some(HttpResponse::new(404, "text/plain", "not found\n")),
        }
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_>, state: &mut State) {
        // notify: the key was validated in on_upgrade; the connection is bound to it here.
        if let Some(k) = state.0.take().and_then(|e| e.key) {
            ctx.bind_key(&k);
        }
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_>, state: &mut State, msg: Message<'_>) {
        match self.mode {
            Mode::Echo => {
                ctx.send(msg);
            }
            Mode::Broadcast => {
                ctx.publish(Target::All, msg);
            }
            Mode::Notify => match msg {
                Message::Text(t) => self.notify_json(ctx, state, t),
                Message::Binary(b) => self.notify_binary(ctx, state, b),
            },
            Mode::Pubsub => self.pubsub(ctx, state, msg),
        }
    }

    fn on_published(&mut self, ctx: &mut Ctx<'_>, state: &mut State, tag: u64, reached: usize) {
        if let Some(e) = state.0.as_mut() {
            e.in_flight
                .complete(tag, reached, |reply, n| send_reply(ctx, reply, n));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(f: &mut InFlight, reply: Reply) -> u64 {
        let tag = f.next_tag();
        f.push(reply);
        tag
    }

    fn complete(f: &mut InFlight, tag: u64, reached: usize) -> Vec<(Reply, usize)> {
        let mut sent = Vec::new();
        f.complete(tag, reached, |r, n| sent.push((r.clone(), n)));
        sent
    }

    /// Receipts that come out of order (events completing on different workers) are
    /// matched by tag and answered in the order the events were sent (review s12,
    /// finding 9: pubsub used to pop the oldest topic for whichever receipt came first).
    #[test]
    fn receipts_are_matched_by_tag_and_answered_in_order() {
        let mut f = InFlight::default();
        let a = publish(&mut f, Reply::Pub("a".into()));
        let b = publish(&mut f, Reply::Pub("b".into()));
        let c = publish(&mut f, Reply::Json);
        assert_eq!((a, b, c), (0, 1, 2));
        assert!(complete(&mut f, c, 7).is_empty());
        assert!(complete(&mut f, b, 5).is_empty());
        assert_eq!(
            complete(&mut f, a, 3),
            [
                (Reply::Pub("a".into()), 3),
                (Reply::Pub("b".into()), 5),
                (Reply::Json, 7)
            ]
        );
        assert_eq!(f.len(), 0);
        // The next tags go on from there; an in-order receipt goes out at once.
        let d = publish(&mut f, Reply::Binary);
        assert_eq!(d, 3);
        assert_eq!(complete(&mut f, d, 1), [(Reply::Binary, 1)]);
    }

    /// A tag that is not awaited (answered already, or never given) changes nothing.
    #[test]
    fn a_stray_or_repeated_receipt_is_ignored() {
        let mut f = InFlight::default();
        let a = publish(&mut f, Reply::Pub("a".into()));
        let b = publish(&mut f, Reply::Pub("b".into()));
        assert!(complete(&mut f, b, 2).is_empty());
        assert!(complete(&mut f, b, 9).is_empty());
        assert!(complete(&mut f, 99, 9).is_empty());
        assert!(complete(&mut f, u64::MAX, 9).is_empty());
        assert_eq!(
            complete(&mut f, a, 1),
            [(Reply::Pub("a".into()), 1), (Reply::Pub("b".into()), 2)]
        );
        assert!(complete(&mut f, a, 1).is_empty());
    }
}
