//! volley next to a tokio service that owns the business logic.
//!
//! * volley -> tokio: the handler forwards each request into a **bounded** tokio channel
//!   with `try_send` (a worker never blocks). When the service falls behind and the channel
//!   is full, the client gets `busy` at once (a 503 of sorts) instead of an unbounded queue.
//!   Each connection may have at most `MAX_IN_FLIGHT` requests in the service; past it, `busy`.
//! * tokio -> volley: the service answers through `Handle::send` and publishes ticks to a
//!   topic through `Handle::publish`. Each connection's write budget bounds what it can
//!   hold; a client that stops reading is not read from either (read backpressure), so its
//!   requests stop coming and the service does no work for it.
//! * Shutdown, in order: stop the ticker, `Handle::shutdown` (every client gets 1001), wait
//!   for volley's workers (`Server::join` on a blocking thread); their handler clones drop
//!   the channel's senders, so the service drains what is left and ends; then the runtime.
//!
//! Protocol: a client sends `add <a> <b>`; the service answers `sum <a+b>` after an awaited
//! "database call"; `sub ticks` subscribes to the tick topic.
//!
//! `cargo run --release --example tokio_service [ADDR]` (default 127.0.0.1:9004). It stops on
//! Ctrl-C or when its standard input closes.

use std::future::Future;
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use volley::{
    Config, ConnId, Ctx, Handle, Handler, Message, Reject, Request, Server, Target, Upgrade,
};

const MAX_IN_FLIGHT: usize = 8;

/// A request on its way to the service.
struct Job {
    conn: ConnId,
    a: i64,
    b: i64,
    /// The connection's count of requests in the service (decremented once answered).
    in_flight: Arc<AtomicUsize>,
}

/// The volley side: forwards requests, never blocks.
#[derive(Clone)]
struct Bridge {
    jobs: mpsc::Sender<Job>,
}

impl Handler for Bridge {
    type State = Arc<AtomicUsize>;

    fn on_upgrade(&mut self, _: &Request<'_>, _: &mut Upgrade) -> Result<Self::State, Reject> {
        Ok(Arc::default())
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_>, in_flight: &mut Self::State, msg: Message<'_>) {
        let Message::Text(text) = msg else { return };
        if text == "sub ticks" {
            ctx.subscribe("ticks");
            ctx.send_text("subscribed");
            return;
        }
        let mut it = text.strip_prefix("add ").unwrap_or("").split(' ');
        let (Some(Ok(a)), Some(Ok(b))) = (it.next().map(str::parse), it.next().map(str::parse))
        else {
            ctx.send_text("error: add <a> <b> | sub ticks");
            return;
        };
        if in_flight.load(Ordering::Acquire) >= MAX_IN_FLIGHT {
            ctx.send_text("busy");
            return;
        }
        in_flight.fetch_add(1, Ordering::AcqRel);
        let job = Job {
            conn: ctx.id(),
            a,
            b,
            in_flight: in_flight.clone(),
        };
        if self.jobs.try_send(job).is_err() {
            in_flight.fetch_sub(1, Ordering::AcqRel);
            ctx.send_text("busy");
        }
    }
}

/// The tokio side: the business logic, async.
async fn service(mut jobs: mpsc::Receiver<Job>, handle: Handle) {
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(job) = jobs.recv().await {
        let handle = handle.clone();
        // Finished tasks are reaped as we go (their number is bounded by MAX_IN_FLIGHT per
        // connection anyway).
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            // The "database call".
            tokio::time::sleep(Duration::from_millis(5)).await;
            let sum = job.a.wrapping_add(job.b);
            // A connection that closed meanwhile is simply not reached (counted).
            handle.send_text(job.conn, &format!("sum {sum}"));
            job.in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    }
    // The channel closed (volley stopped): let the requests in progress finish.
    while tasks.join_next().await.is_some() {}
}

async fn ticker(handle: Handle, mut stop: watch::Receiver<bool>) {
    let mut n = 0u64;
    let mut every = tokio::time::interval(Duration::from_millis(200));
    loop {
        let tick = every.tick();
        tokio::pin!(tick);
        let stopped = stop.changed();
        tokio::pin!(stopped);
        // Whichever comes first (without the `macros` feature's select!).
        let stop_now = std::future::poll_fn(|cx| {
            use std::task::Poll;
            if stopped.as_mut().poll(cx).is_ready() {
                return Poll::Ready(true);
            }
            tick.as_mut().poll(cx).map(|_| false)
        })
        .await;
        if stop_now {
            return;
        }
        n += 1;
        handle.publish(Target::Topic("ticks"), Message::Text(&format!("tick {n}")));
    }
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9004".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (jobs_tx, jobs_rx) = mpsc::channel(1024);
    let server = Server::start(Config::new(addr), Bridge { jobs: jobs_tx })?;
    let handle = server.handle();
    println!("tokio_service on ws://{}/", server.local_addr());

    let (stop_tx, mut stop_rx) = watch::channel(false);
    // Stop on end of standard input (how the tests stop it) or on Ctrl-C.
    let on_eof = stop_tx.clone();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = on_eof.send(true);
    });
    rt.block_on(async move {
        let on_signal = stop_tx.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                let _ = on_signal.send(true);
            }
        });
        let service = tokio::spawn(service(jobs_rx, handle.clone()));
        let ticker = tokio::spawn(ticker(handle.clone(), stop_tx.subscribe()));
        let _ = stop_rx.changed().await;

        let _ = ticker.await;
        handle.shutdown();
        // Server::join blocks: on a blocking thread, not on the runtime's workers.
        tokio::task::spawn_blocking(move || server.join())
            .await
            .expect("volley's workers stopped");
        // Every Bridge (and so every sender) is gone with the workers: the service ends.
        service.await.expect("service ended");
        let st = handle.stats();
        println!(
            "stopped cleanly: {} connections opened, {} messages in",
            st.opened, st.messages_in
        );
    });
    Ok(())
}
