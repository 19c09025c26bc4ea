//! What the `loadgen` integration tests share: in-process volley servers (echo, broadcast)
//! and a way to run the binary.

#![allow(dead_code)] // each test file uses its own part

use std::process::{Command, Output};
use volley::{Config, Ctx, Handler, Message, Reject, Request, Server, Target, Upgrade};

/// Echoes every message back, after `delay_us` of work on the worker (0: at once): one
/// worker then answers at most about 1e6 / `delay_us` messages per second, a capacity a
/// ramp can find.
#[derive(Clone, Default)]
pub struct Echo {
    pub delay_us: u64,
}

impl Handler for Echo {
    type State = ();

    fn on_upgrade(&mut self, _req: &Request<'_>, _up: &mut Upgrade) -> Result<(), Reject> {
        Ok(())
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_>, _state: &mut (), msg: Message<'_>) {
        if self.delay_us > 0 {
            std::thread::sleep(std::time::Duration::from_micros(self.delay_us));
        }
        ctx.send(msg);
    }
}

/// volley's `broadcast` mode: every message is relayed to every connection, sender included.
#[derive(Clone)]
pub struct Broadcast;

impl Handler for Broadcast {
    type State = ();

    fn on_upgrade(&mut self, _req: &Request<'_>, _up: &mut Upgrade) -> Result<(), Reject> {
        Ok(())
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_>, _state: &mut (), msg: Message<'_>) {
        ctx.publish(Target::All, msg);
    }
}

/// Publishes every message to every connection after blocking its worker for `delay`: a
/// broadcast whose deliveries arrive long after the publish, as at a million subscribers.
#[derive(Clone)]
pub struct SlowBroadcast {
    pub delay: std::time::Duration,
}

impl Handler for SlowBroadcast {
    type State = ();

    fn on_upgrade(&mut self, _req: &Request<'_>, _up: &mut Upgrade) -> Result<(), Reject> {
        Ok(())
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_>, _state: &mut (), msg: Message<'_>) {
        std::thread::sleep(self.delay);
        ctx.publish(Target::All, msg);
    }
}

/// A one-worker volley server on a free port of 127.0.0.1.
pub fn start<H: Handler + Clone + Send + 'static>(h: H) -> Server {
    Server::start(Config::new("127.0.0.1:0").workers(1), h).expect("start volley")
}

/// A one-worker echo server.
pub fn echo_server() -> Server {
    start(Echo::default())
}

/// Runs `loadgen` with `args`.
pub fn loadgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .output()
        .expect("run loadgen")
}

/// Lossy UTF-8 of captured output.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
