//! The reference modes' handlers and wire formats (documented in docs/modes.md).

use crate::envelope::parse_json_envelope;
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

/// Receipt tags for notify: the reply goes out in the envelope's format.
const TAG_BINARY: u64 = 0;
const TAG_JSON: u64 = 1;
/// Receipt tag for pubsub: `+PUB topic N`; the topic is kept in the connection state.
const TAG_PUB: u64 = 2;

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
/// mode needs it (notify: from the upgrade to `on_open`; pubsub: from the first publish).
#[derive(Default)]
pub struct State(Option<Box<Extra>>);

#[derive(Default)]
struct Extra {
    /// notify: the key from `/?id=KEY`, until `on_open` binds the connection to it.
    key: Option<Box<str>>,
    /// pubsub: topics of publishes awaiting their receipt, in order (receipts of one
    /// connection's publishes complete in the order they were made).
    pending_pubs: std::collections::VecDeque<Box<str>>,
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
    fn notify_json(&mut self, ctx: &mut Ctx<'_>, text: &str) {
        let reply_err = |ctx: &mut Ctx<'_>, e: &str| {
            ctx.send_text(&serde_json::json!({ "error": e }).to_string());
        };
        let event = match parse_json_envelope(text, self.max_keys_per_event, valid_name) {
            Ok(e) => e,
            Err(why) => return reply_err(ctx, &why),
        };
        let keys: Vec<&str> = event.to.iter().map(|k| &**k).collect();
        if !ctx.publish_tracked(Target::Keys(&keys), Message::Text(&event.data), TAG_JSON) {
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

    fn notify_binary(&mut self, ctx: &mut Ctx<'_>, b: &[u8]) {
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
            Ok((keys, payload)) => {
                if !ctx.publish_tracked(Target::Keys(&keys), Message::Binary(payload), TAG_BINARY) {
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
                let pending = &mut state.0.get_or_insert_with(Default::default).pending_pubs;
                if pending.len() >= 1024 {
                    return ctx.close(CloseCode::POLICY_VIOLATION, "too many publishes in flight");
                }
                pending.push_back(topic.into());
                // A topic target is never refused (only key lists are capped).
                ctx.publish_tracked(Target::Topic(topic), Message::Text(payload), TAG_PUB);
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
                Message::Text(t) => self.notify_json(ctx, t),
                Message::Binary(b) => self.notify_binary(ctx, b),
            },
            Mode::Pubsub => self.pubsub(ctx, state, msg),
        }
    }

    fn on_published(&mut self, ctx: &mut Ctx<'_>, state: &mut State, tag: u64, reached: usize) {
        match tag {
            TAG_BINARY => {
                let mut r = vec![NOTIFY_RECEIPT];
                r.extend_from_slice(&(reached as u32).to_be_bytes());
                ctx.send_binary(&r);
            }
            TAG_JSON => {
                ctx.send_text(&format!("{{\"reached\":{reached}}}"));
            }
            _ => {
                let topic = state
                    .0
                    .as_mut()
                    .and_then(|e| e.pending_pubs.pop_front())
                    .unwrap_or_default();
                ctx.send_text(&format!("+PUB {topic} {reached}"));
            }
        }
    }
}
