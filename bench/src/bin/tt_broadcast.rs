//! `tt_broadcast`: the tokio-tungstenite baseline of the fan-out benchmarks, in the idiomatic
//! `tokio::sync::broadcast` design: every message received from any client is sent into one
//! broadcast channel, and every connection's task forwards what the channel yields to its
//! socket. Like `volley serve --mode broadcast`: everyone, the sender included, gets every
//! message.
//!
//! Written the way a user writes it, not tuned: a task per connection split into a reader
//! and a writer, `Message` values cloned out of the channel (a `Bytes` refcount per
//! recipient, then a frame encoded per recipient by tungstenite), `send().await` per message.
//! A receiver that falls more than `--capacity` messages behind loses them
//! (`RecvError::Lagged`), counted and printed on exit.
//!
//! `tt_broadcast --addr 127.0.0.1:9102 --workers 1 [--capacity 1024]`

#[path = "../baseline_rt.rs"]
mod baseline_rt;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug)]
#[command(
    name = "tt_broadcast",
    about = "tokio-tungstenite broadcast server (benchmark baseline)"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9102")]
    addr: String,
    /// Runtime worker threads (1: tokio's current-thread runtime).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Messages the broadcast channel holds for a slow receiver before it lags.
    #[arg(long, default_value_t = 1024)]
    capacity: usize,
}

async fn serve(stream: TcpStream, tx: broadcast::Sender<Message>, lagged: Arc<AtomicU64>) {
    let _ = stream.set_nodelay(true);
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let mut rx = tx.subscribe();
    let writer = tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(msg) => {
                    if sink.send(msg).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    lagged.fetch_add(n, Ordering::Relaxed);
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    while let Some(Ok(msg)) = source.next().await {
        if msg.is_text() || msg.is_binary() {
            let _ = tx.send(msg);
        }
    }
    writer.abort();
}

async fn run(args: &Args) -> std::io::Result<()> {
    let listener = TcpListener::bind(&args.addr).await?;
    println!(
        "tt_broadcast listening on ws://{} (tokio-tungstenite, tokio::sync::broadcast)",
        listener.local_addr()?
    );
    let (tx, _) = broadcast::channel::<Message>(args.capacity.max(1));
    let lagged = Arc::new(AtomicU64::new(0));
    let report = lagged.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!(
            "tt_broadcast: {} messages lost to lagging receivers",
            report.load(Ordering::Relaxed)
        );
        std::process::exit(0);
    });
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(stream, tx.clone(), lagged.clone()));
            }
            Err(e) => {
                eprintln!("tt_broadcast: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

fn main() {
    let args = Args::parse();
    let rt = baseline_rt::runtime("tt_broadcast", args.workers);
    if let Err(e) = rt.block_on(run(&args)) {
        eprintln!("tt_broadcast: cannot listen on {}: {e}", args.addr);
        std::process::exit(1);
    }
}
