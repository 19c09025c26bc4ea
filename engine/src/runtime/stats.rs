//! The counters: each worker's atomics ([`WorkerStats`]), the summed snapshot a `Handle`
//! returns ([`Stats`]), and their Prometheus text exposition format (0.0.4).
//!
//! The format is written here rather than with a client crate: the counters already live
//! in per-worker atomics, the output is a few dozen lines, and the format is a stable text
//! one (HELP, TYPE, one sample per line). The conventions followed: one `# HELP` and one
//! `# TYPE` per family with its samples right after them, `_total` on counters, base units
//! (bytes), labels `worker` and `code`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Adds `n` to a counter of [`WorkerStats`] that its worker alone writes: a load and a store,
/// not a locked read-modify-write. Readers on other threads see the old or the new value.
/// (Per message a `lock add` is ~20 cycles: in a profile of echo at 16 messages in flight
/// the three in `on_message`'s path were 3% of the server's CPU.) Counters that other threads
/// also write (`events_published`, `bindings_refused`) keep `fetch_add`.
#[inline]
pub(crate) fn add_own(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// Subtracts `n` from a gauge of [`WorkerStats`] that its worker alone writes (see
/// [`add_own`]).
#[inline]
pub(crate) fn sub_own(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_sub(n), Ordering::Relaxed);
}

macro_rules! stats {
    ($( #[doc = $help:literal] $name:ident, )*) => {
        /// Counters of one worker, updated by that worker only.
        #[derive(Debug, Default)]
        pub(crate) struct WorkerStats {
            $( pub(crate) $name: AtomicU64, )*
            /// Closes sent for protocol errors, by code - 1000 (1000..=1015).
            pub(crate) protocol_closes: [AtomicU64; 16],
        }

        /// A snapshot of the server's counters, summed over workers.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct Stats {
            $( #[doc = $help] pub $name: u64, )*
            /// Closes sent for protocol errors, as (code, count), codes with a count only.
            pub protocol_closes: Vec<(u16, u64)>,
        }

        impl WorkerStats {
            /// Every worker's counters in the Prometheus text format (0.0.4): one family per
            /// counter, `# HELP` and `# TYPE` once, then one sample per worker. Counters end
            /// in `_total`; the gauges (connections, io_uring slots, operations, buffers)
            /// do not; byte counts are in bytes, the base unit.
            pub(crate) fn write_prometheus(workers: &[&WorkerStats], out: &mut String) {
                $(
                    family(
                        out,
                        stringify!($name),
                        $help,
                        workers.iter().map(|w| w.$name.load(Ordering::Relaxed)),
                    );
                )*
                protocol_closes(out, workers.iter().map(|w| &w.protocol_closes));
            }
        }

        impl Stats {
            pub(crate) fn add(&mut self, w: &WorkerStats) {
                $( self.$name += w.$name.load(Ordering::Relaxed); )*
                for (i, c) in w.protocol_closes.iter().enumerate() {
                    let c = c.load(Ordering::Relaxed);
                    if c == 0 { continue; }
                    let code = 1000 + i as u16;
                    match self.protocol_closes.iter_mut().find(|(k, _)| *k == code) {
                        Some((_, n)) => *n += c,
                        None => self.protocol_closes.push((code, c)),
                    }
                }
            }
        }
    };
}

stats! {
    /// Connections currently held (handshaking, open or closing).
    connections,
    /// TCP connections accepted.
    accepted,
    /// WebSocket connections opened (101 sent).
    opened,
    /// Handshakes refused with an HTTP error.
    handshake_failures,
    /// Clients dropped for not finishing their request head (or for a deferred upgrade not answered) in time.
    handshake_timeouts,
    /// Upgrades `Handler::on_upgrade` deferred (`Upgrade::defer`).
    upgrades_deferred,
    /// Connections refused with 503 because the server was full.
    rejected_full,
    /// Data messages received.
    messages_in,
    /// Data messages queued for sending.
    messages_out,
    /// Bytes read from sockets.
    bytes_in,
    /// Bytes written to sockets.
    bytes_out,
    /// Connections closed because their unsent output exceeded the write budget (1008).
    slow_consumer_closes,
    /// Pings sent to quiet connections.
    pings_sent,
    /// Connections dropped because no pong (nor anything else) came after a ping.
    pong_timeouts,
    /// Connections closed for idleness.
    idle_closes,
    /// Connections closed (1008) because a message did not complete within `message_timeout`.
    message_timeouts,
    /// Connections closed (1013): the worker's incomplete messages were over `incomplete_budget`.
    incomplete_budget_closes,
    /// Messages addressed to connections that no longer exist.
    unknown_target,
    /// Events published (counted by the publishing worker).
    events_published,
    /// Event deliveries: one per recipient reached.
    deliveries,
    /// Messages dropped for slow consumers under `SlowConsumerPolicy::Drop`.
    drops,
    /// Binds and subscribes refused at a connection's cap of keys or topics.
    bindings_refused,
    /// Publishes refused for listing more keys than `Config::max_keys_per_event`.
    publishes_refused,
    /// Messages and events dropped for a worker whose inbox was full (`Config::inbox_capacity`).
    inbox_drops,
    /// Messages compressed (permessage-deflate): at most one per broadcast event, one per compressed direct send.
    messages_deflated,
    /// Compressed messages received and inflated.
    messages_inflated,
    /// Accepts that failed (out of files or fixed-file slots); retried shortly.
    accept_errors,
    /// io_uring: multishot receives that ran out of provided buffers (re-armed).
    recv_enobufs,
    /// io_uring: direct descriptors held (gauge).
    uring_slots,
    /// io_uring: rings the workers run (several per worker past one table's worth).
    uring_rings,
    /// io_uring: operations submitted and not completed (gauge).
    uring_ops,
    /// io_uring: provided buffers taken out of the ring and not yet returned (gauge).
    uring_bufs_held,
    /// io_uring: provided buffers in circulation (gauge): 64 KiB worth per ring at first where the kernel consumes them incrementally, else 256 KiB; twice as many after each batch of completions in which a receive ran out, up to the configured count.
    uring_bufs_live,
}

/// Counters whose name does not say their unit: the Prometheus name adds it.
fn prometheus_name(name: &str) -> &str {
    match name {
        "bytes_in" => "received_bytes",
        "bytes_out" => "sent_bytes",
        other => other,
    }
}

fn is_gauge(name: &str) -> bool {
    matches!(
        name,
        "connections" | "uring_slots" | "uring_ops" | "uring_bufs_held" | "uring_bufs_live"
    )
}

/// Writes one family: HELP, TYPE, then one sample per worker.
pub(crate) fn family(
    out: &mut String,
    name: &str,
    help: &str,
    per_worker: impl Iterator<Item = u64>,
) {
    let gauge = is_gauge(name);
    let suffix = if gauge { "" } else { "_total" };
    let full = format!("volley_{}{suffix}", prometheus_name(name));
    let help = help.trim().replace('\\', "\\\\").replace('\n', "\\n");
    let kind = if gauge { "gauge" } else { "counter" };
    let _ = writeln!(out, "# HELP {full} {help}");
    let _ = writeln!(out, "# TYPE {full} {kind}");
    for (w, v) in per_worker.enumerate() {
        let _ = writeln!(out, "{full}{{worker=\"{w}\"}} {v}");
    }
}

/// Writes the protocol-close family: one sample per worker and close code.
pub(crate) fn protocol_closes<'a>(
    out: &mut String,
    per_worker: impl Iterator<Item = &'a [AtomicU64; 16]>,
) {
    let full = "volley_protocol_closes_total";
    let _ = writeln!(
        out,
        "# HELP {full} Connections closed for a protocol error, by the close code sent."
    );
    let _ = writeln!(out, "# TYPE {full} counter");
    for (w, codes) in per_worker.enumerate() {
        for (i, c) in codes.iter().enumerate() {
            let _ = writeln!(
                out,
                "{full}{{worker=\"{w}\",code=\"{}\"}} {}",
                1000 + i,
                c.load(Ordering::Relaxed)
            );
        }
    }
}
