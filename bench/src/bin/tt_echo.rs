//! `tt_echo`: a tokio-tungstenite echo server, the baseline of the issue-3 echo benchmarks.
//!
//! Written the way a user of tokio-tungstenite writes it, not tuned: a tokio runtime, a task
//! per connection, `accept_async`, then `ws.next().await` and `ws.send(msg).await` for every
//! message (so every echo is flushed on its own). With `--workers 1` the runtime is tokio's
//! current-thread runtime, so the whole server runs on one thread like one volley worker;
//! with more, the multi-thread runtime with that many workers.
//!
//! `--forward` switches to the other idiomatic form, the one in tokio-tungstenite's own
//! `examples/echo-server.rs`: split the stream and `forward` the incoming messages into the
//! sink, which flushes only when no further message is ready, so pipelined echoes share a
//! write. Benchmarks report both, so neither flatters the comparison.
//!
//! `tt_echo --addr 127.0.0.1:9101 --workers 1 [--forward]`

#[path = "../baseline_rt.rs"]
mod baseline_rt;

use clap::Parser;
use futures_util::{future, SinkExt, StreamExt, TryStreamExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser, Debug)]
#[command(
    name = "tt_echo",
    about = "tokio-tungstenite echo server (benchmark baseline)"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9101")]
    addr: String,
    /// Runtime worker threads (1: tokio's current-thread runtime).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Echo with `read.forward(write)` (flush when the input is drained) instead of
    /// `ws.send(msg).await` per message.
    #[arg(long)]
    forward: bool,
}

async fn serve(stream: TcpStream, forward: bool) {
    let _ = stream.set_nodelay(true);
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    if forward {
        let (write, read) = ws.split();
        let _ = read
            .try_filter(|msg| future::ready(msg.is_text() || msg.is_binary()))
            .forward(write)
            .await;
        return;
    }
    while let Some(Ok(msg)) = ws.next().await {
        // Pings are answered by tungstenite itself; close frames end the stream.
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}

async fn run(addr: String, forward: bool) -> std::io::Result<()> {
    let listener = TcpListener::bind(&addr).await?;
    println!(
        "tt_echo listening on ws://{} (tokio-tungstenite, {})",
        listener.local_addr()?,
        if forward { "forward" } else { "next + send" }
    );
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(stream, forward));
            }
            // EMFILE and the like: the connection stays in the backlog; try again shortly.
            Err(e) => {
                eprintln!("tt_echo: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

fn main() {
    let args = Args::parse();
    let rt = baseline_rt::runtime("tt_echo", args.workers);
    if let Err(e) = rt.block_on(run(args.addr.clone(), args.forward)) {
        eprintln!("tt_echo: cannot listen on {}: {e}", args.addr);
        std::process::exit(1);
    }
}
