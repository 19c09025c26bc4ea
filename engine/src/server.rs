//! The top of the engine: [`Server::start`] is the one place that knows both the runtime and
//! the backends (it probes io_uring, starts the cluster link, the metrics listener and the
//! workers of the chosen backend).

use crate::driver;
use crate::handler::Handler;
use crate::runtime::config::{Backend, Config};
use crate::runtime::handle::Handle;
use crate::runtime::metrics;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

impl Backend {
    /// Whether the io_uring backend can run on this kernel and in this sandbox: the opcodes
    /// and features it needs are probed on a scratch ring. `Err` says what is missing.
    pub fn uring_available() -> Result<(), String> {
        driver::uring_probe()
    }
}

/// A running server: its worker threads and a [`Handle`].
#[derive(Debug)]
pub struct Server {
    handle: Handle,
    threads: Vec<JoinHandle<()>>,
    backend: Backend,
    metrics: Option<metrics::MetricsServer>,
}

impl Server {
    /// Binds one listener per worker and starts the workers.
    ///
    /// # Errors
    /// The configuration is invalid ([`Config::validate`]), the address (or `metrics_addr`)
    /// does not resolve, cannot be bound, or a poller cannot be created.
    pub fn start<H: Handler>(config: Config, handler: H) -> io::Result<Server> {
        config.validate()?;
        let metrics = match &config.metrics_addr {
            Some(a) => Some(
                metrics::MetricsServer::bind(a)
                    .map_err(|e| io::Error::new(e.kind(), format!("metrics address {a}: {e}")))?,
            ),
            None => None,
        };
        let addr = config.addr.to_socket_addrs()?.next().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "address resolves to nothing")
        })?;
        let n = config.worker_count();
        let backend = match config.backend {
            Backend::Mio => Backend::Mio,
            Backend::Uring => match driver::uring_probe() {
                Ok(()) => Backend::Uring,
                Err(why) => {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!("io_uring backend unavailable: {why}"),
                    ))
                }
            },
            Backend::Auto => match driver::uring_probe() {
                Ok(()) => Backend::Uring,
                Err(why) => {
                    tracing::info!("io_uring unavailable ({why}); using the mio backend");
                    Backend::Mio
                }
            },
        };
        let cluster = match &config.cluster {
            Some(c) => Some(crate::cluster::Cluster::start(
                c,
                config.limits.max_message,
            )?),
            None => None,
        };
        let started = match backend {
            #[cfg(target_os = "linux")]
            Backend::Uring => driver::uring::start(config, addr, n, handler, cluster.clone()),
            _ => driver::mio::start(config, addr, n, handler, cluster.clone()),
        };
        let (handle, threads) = match started {
            Ok(s) => s,
            Err(e) => {
                if let Some(c) = &cluster {
                    c.stop();
                }
                return Err(e);
            }
        };
        if let Some(c) = &cluster {
            c.attach(Arc::downgrade(&handle.shared) as Weak<_>);
        }
        let mut server = Server {
            handle,
            threads,
            backend,
            metrics: None,
        };
        if let Some(listener) = metrics {
            match metrics::MetricsServer::start(listener, server.handle()) {
                Ok(m) => server.metrics = Some(m),
                Err(e) => {
                    server.shutdown();
                    return Err(e);
                }
            }
        }
        Ok(server)
    }

    /// The backend the workers run on (`Uring` or `Mio`, never `Auto`).
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// How many workers (threads, one ring or poller each) run.
    pub fn workers(&self) -> usize {
        self.handle.shared.workers.len()
    }

    /// A handle for other threads.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// The address the server listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    /// The address `GET /metrics` is served on (`Config::metrics_addr`), if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|m| m.local_addr())
    }

    /// Waits until every worker has stopped (after [`Handle::shutdown`]).
    pub fn join(self) {
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
        if let Some(m) = self.metrics {
            m.stop();
        }
        if let Some(c) = &self.handle.shared.cluster {
            c.stop();
        }
    }

    /// Shuts down gracefully and waits for the workers.
    pub fn shutdown(self) {
        self.handle.shutdown();
        self.join();
    }
}
