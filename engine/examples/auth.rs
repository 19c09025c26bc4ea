//! Authentication that takes time: `on_upgrade` defers its answer (`Upgrade::defer`) and an
//! "auth service" thread checks the token, then accepts (with the user as the connection's
//! state) or rejects with `401` and `WWW-Authenticate`, from its own thread. The worker never
//! blocks on the check; the client waits at most the handshake timeout.
//!
//! The service's queue is bounded: when it is full the upgrade is refused at once with 503
//! and `Retry-After` rather than queued without end (and `Config::max_pending_upgrades`
//! bounds the upgrades a worker holds open).
//!
//! `cargo run --release --example auth [ADDR]` (default 127.0.0.1:9003), then connect to
//! ws://ADDR/?token=secret-alice (accepted) or ws://ADDR/?token=nope (401).

use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::Duration;
use volley::{Config, Ctx, Handler, Message, Pending, Reject, Request, Server, Upgrade};

/// The connection's state once authenticated.
struct User {
    name: String,
}

/// A token check waiting for the auth service.
struct Check {
    token: String,
    pending: Pending<User>,
}

#[derive(Clone)]
struct App {
    auth: SyncSender<Check>,
}

impl Handler for App {
    type State = User;

    fn on_upgrade(&mut self, req: &Request<'_>, up: &mut Upgrade) -> Result<User, Reject> {
        let token = req
            .query
            .and_then(|q| q.strip_prefix("token="))
            .unwrap_or("")
            .to_owned();
        if token.is_empty() {
            // Cheap checks stay synchronous.
            return Err(Reject::new(401, "a token is required\n")
                .header("WWW-Authenticate", "Bearer realm=\"chat\""));
        }
        let auth = self.auth.clone();
        up.defer(move |pending| {
            if let Err(TrySendError::Full(c) | TrySendError::Disconnected(c)) =
                auth.try_send(Check { token, pending })
            {
                c.pending
                    .reject(Reject::new(503, "auth service busy\n").header("Retry-After", "2"));
            }
        })
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_>, user: &mut User) {
        ctx.send_text(&format!("hello {}", user.name));
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_>, user: &mut User, msg: Message<'_>) {
        if let Message::Text(t) = msg {
            ctx.send_text(&format!("{}: {t}", user.name));
        }
    }
}

/// The stand-in for a call to an auth service or a session store.
fn check_token(token: &str) -> Option<String> {
    std::thread::sleep(Duration::from_millis(20));
    token.strip_prefix("secret-").map(str::to_owned)
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9003".into());
    let (auth, checks) = sync_channel::<Check>(256);
    std::thread::spawn(move || {
        for Check { token, pending } in checks {
            match check_token(&token) {
                Some(name) => pending.accept(User { name }),
                None => pending.reject(
                    Reject::new(401, "invalid token\n")
                        .header("WWW-Authenticate", "Bearer error=\"invalid_token\""),
                ),
            }
        }
    });
    let cfg = Config::new(addr).handshake_timeout(Duration::from_secs(5));
    let server = Server::start(cfg, App { auth })?;
    println!("auth on ws://{}/?token=secret-you", server.local_addr());
    server.join();
    Ok(())
}
