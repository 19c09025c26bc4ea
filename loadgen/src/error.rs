//! The errors loadgen reports to its user: each says what went wrong and, where it can,
//! what to do about it. None of them is a panic.

use std::fmt;

/// Why a run could not be done (as opposed to results it measured).
#[derive(Debug)]
pub enum Error {
    /// The `--url` is not a `ws://host[:port]/path` URL.
    BadUrl { url: String, why: String },
    /// The host name does not resolve.
    Resolve { host: String, why: String },
    /// Nothing listens at the address (every connection was refused).
    Refused { url: String, addr: String },
    /// The server answered the upgrade with an HTTP status other than 101.
    NotWebSocket {
        url: String,
        status: u16,
        status_line: String,
    },
    /// No connection could be made, for another reason (the reasons are listed).
    NoConnection { url: String, reasons: String },
    /// The open-files limit cannot hold the requested connections.
    TooFewFiles {
        conns: usize,
        need: u64,
        soft: u64,
        hard: u64,
    },
    /// One source address does not have enough ephemeral ports for the request.
    TooFewPorts {
        per_source: usize,
        ports: usize,
        range: (u32, u32),
    },
    /// An option value that cannot work.
    Usage(String),
    /// The server process given with `--server-pid` cannot be read.
    ServerProc { pid: u32, why: String },
    /// Writing the JSON report failed.
    Report { path: String, why: String },
    /// A local system call failed (poller, thread).
    Sys(String),
    /// A saved report (`compare`, `plot`) is missing, unreadable or not a JSON report.
    ReadReport { path: String, why: String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadUrl { url, why } => write!(
                f,
                "wrong URL {url:?}: {why} (expected ws://host[:port]/path, for example ws://127.0.0.1:9001/)"
            ),
            Error::Resolve { host, why } => write!(f, "cannot resolve host {host:?}: {why}"),
            Error::Refused { url, addr } => write!(
                f,
                "connection refused by {addr} ({url}): is a server listening there?"
            ),
            Error::NotWebSocket {
                url,
                status,
                status_line,
            } => write!(
                f,
                "{url} is not a WebSocket endpoint: the server answered the upgrade request with HTTP {status} ({status_line:?}) instead of 101 Switching Protocols"
            ),
            Error::NoConnection { url, reasons } => {
                write!(f, "no connection to {url} could be opened: {reasons}")
            }
            Error::TooFewFiles {
                conns,
                need,
                soft,
                hard,
            } => write!(
                f,
                "{conns} connections need about {need} open files, but the open-files limit is {soft} (hard limit {hard}); \
                 raise it (for example `ulimit -n {need}`, which needs root beyond the hard limit) or spread the connections over several loadgen processes with --procs {} (connect, fanout)",
                (*conns as u64).div_ceil(soft.saturating_sub(crate::sys::SPARE_FILES).max(1))
            ),
            Error::TooFewPorts {
                per_source,
                ports,
                range,
            } => write!(
                f,
                "{per_source} connections from one source address to one server address need as many local ports, \
                 but net.ipv4.ip_local_port_range ({} {}) has {ports}; add source addresses with --source 127.0.0.2 --source 127.0.0.3 ...",
                range.0, range.1
            ),
            Error::Usage(s) => f.write_str(s),
            Error::ServerProc { pid, why } => write!(f, "cannot read server process {pid}: {why}"),
            Error::Report { path, why } => write!(f, "cannot write {path}: {why}"),
            Error::Sys(s) => f.write_str(s),
            Error::ReadReport { path, why } => write!(f, "cannot read report {path}: {why}"),
        }
    }
}

impl std::error::Error for Error {}
