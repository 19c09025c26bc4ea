//! A chat with rooms, on topics: each room is a topic, a line is published once to the
//! room's topic leaving out its sender (`Ctx::publish_others`), and the engine fans the one
//! encoded frame out to every other member on every worker. No lock, no member list, no
//! per-recipient copy. A thread of the "host backend" announces itself to everyone through
//! the `Handle` every ten seconds.
//!
//! `cargo run --release --example chat [ADDR]` (default 127.0.0.1:9002), then connect
//! WebSocket clients to ws://ADDR/?name=alice&room=lobby and ws://ADDR/?name=bob&room=lobby.

use std::time::Duration;
use volley::{CloseCode, Config, Ctx, Handler, Message, Reject, Request, Server, Target, Upgrade};

#[derive(Clone)]
struct Chat;

struct Member {
    name: String,
    /// The room's topic, `room:<name>`.
    topic: String,
}

/// A query parameter's value (no percent-decoding: names are plain ASCII here).
fn param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn valid(s: &str) -> bool {
    (1..=32).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl Handler for Chat {
    type State = Member;

    fn on_upgrade(&mut self, req: &Request<'_>, _: &mut Upgrade) -> Result<Member, Reject> {
        let name = param(req.query, "name").unwrap_or("anonymous");
        let room = param(req.query, "room").unwrap_or("lobby");
        if !valid(name) || !valid(room) {
            return Err(Reject::new(400, "name and room: 1 to 32 of [A-Za-z0-9_]\n"));
        }
        Ok(Member {
            name: name.to_owned(),
            topic: format!("room:{room}"),
        })
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_>, me: &mut Member) {
        ctx.subscribe(&me.topic);
        ctx.send_text(&format!("welcome, {}", me.name));
        let line = format!("* {} joined", me.name);
        ctx.publish_others(Target::Topic(&me.topic), Message::Text(&line));
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_>, me: &mut Member, msg: Message<'_>) {
        let Message::Text(text) = msg else {
            return ctx.close(CloseCode::UNSUPPORTED_DATA, "text only");
        };
        let line = format!("{}: {text}", me.name);
        ctx.publish_others(Target::Topic(&me.topic), Message::Text(&line));
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_>, me: Member, _code: CloseCode, _reason: &str) {
        // Delivered after this returns, when this connection is no longer open: only the
        // others get it.
        let line = format!("* {} left", me.name);
        ctx.publish(Target::Topic(&me.topic), Message::Text(&line));
    }
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9002".into());
    let server = Server::start(Config::new(addr), Chat)?;
    println!("chat on ws://{}/?name=you&room=lobby", server.local_addr());
    let handle = server.handle();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_secs(10));
        handle.publish(Target::All, Message::Text("server: still here"));
    });
    server.join();
    Ok(())
}
