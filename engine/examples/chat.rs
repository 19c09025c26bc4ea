//! A chat room: every message is relayed to every other member, and a background thread of
//! the "host backend" announces the time through the `Handle` every ten seconds.
//!
//! `cargo run --release --example chat`, then connect two WebSocket clients to
//! ws://127.0.0.1:9002/?name=alice and ws://127.0.0.1:9002/?name=bob.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use volley::{CloseCode, Config, ConnId, Ctx, Handler, Message, Reject, Request, Server, Upgrade};

#[derive(Clone, Default)]
struct Chat {
    members: Arc<Mutex<HashSet<ConnId>>>,
}

struct Member {
    name: String,
}

impl Handler for Chat {
    type State = Member;

    fn on_upgrade(&mut self, req: &Request<'_>, _: &mut Upgrade) -> Result<Member, Reject> {
        let name = req
            .query
            .and_then(|q| q.strip_prefix("name="))
            .unwrap_or("anonymous");
        if name.is_empty() || name.len() > 32 {
            return Err(Reject::new(400, "name must be 1 to 32 bytes"));
        }
        Ok(Member {
            name: name.to_owned(),
        })
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_>, me: &mut Member) {
        self.members.lock().unwrap().insert(ctx.id());
        ctx.send_text(&format!("welcome, {}", me.name));
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_>, me: &mut Member, msg: Message<'_>) {
        let Message::Text(text) = msg else {
            return ctx.close(CloseCode::UNSUPPORTED_DATA, "text only");
        };
        let line = format!("{}: {text}", me.name);
        let others: Vec<ConnId> = self
            .members
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|&id| id != ctx.id())
            .collect();
        for id in others {
            ctx.send_to(id, Message::Text(&line));
        }
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_>, me: Member, code: CloseCode, _reason: &str) {
        self.members.lock().unwrap().remove(&ctx.id());
        println!("{} left ({code})", me.name);
    }
}

fn main() -> std::io::Result<()> {
    let chat = Chat::default();
    let server = Server::start(Config::new("127.0.0.1:9002"), chat.clone())?;
    println!("chat on ws://{}/?name=you", server.local_addr());
    let handle = server.handle();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_secs(10));
        let members: Vec<ConnId> = chat.members.lock().unwrap().iter().copied().collect();
        for id in members {
            handle.send_text(id, "server: still here");
        }
    });
    server.join();
    Ok(())
}
