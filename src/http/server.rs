//! The HTTP workers: `WORKERS` threads, each with its own listening socket
//! on the one port (`SO_REUSEPORT` on Linux), accepting and serving its
//! connections itself.
//!
//! This replaces actix-server, whose acceptor thread accepts every
//! connection and hands it to a worker through a channel: one more thread
//! to wake, a wake-up of the worker, a `getpeername` and a re-registration
//! of the listener per connection burst. In a connection storm those were
//! a fifth of the system calls and most of the context switches. Here the
//! kernel spreads connections over the workers' sockets, and a worker that
//! is busy is not woken for a connection another one takes.

use std::cell::Cell;
use std::future::poll_fn;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener, ToSocketAddrs};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_http::Protocol;
use actix_rt::Arbiter;
use actix_service::{Service, ServiceFactory};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Notify};

/// Pending connections the kernel keeps per listening socket.
const BACKLOG: i32 = 4096;

/// How long a worker stops accepting after running out of file
/// descriptors (or memory for sockets), instead of spinning on the error.
const RESOURCE_PAUSE: Duration = Duration::from_millis(100);

/// Binds `count` listening sockets on `host:port` (port 0: a free one, the
/// same for all). On Linux each has `SO_REUSEPORT` so that the kernel
/// balances new connections over them; elsewhere they share one socket.
pub(crate) fn bind(host: &str, port: u16, count: usize) -> io::Result<Vec<StdListener>> {
    let mut last = None;
    for addr in (host, port).to_socket_addrs()? {
        match bind_one(addr) {
            Ok(first) => {
                let addr = first.local_addr()?;
                let mut all = vec![first];
                for _ in 1..count.max(1) {
                    all.push(match cfg!(target_os = "linux") {
                        true => bind_one(addr)?,
                        false => all[0].try_clone()?,
                    });
                }
                return Ok(all);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address")))
}

fn bind_one(addr: SocketAddr) -> io::Result<StdListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    #[cfg(target_os = "linux")]
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The running workers. Cloning gives another handle on the same set.
#[derive(Clone)]
pub(crate) struct Workers {
    arbiters: Arc<Mutex<Option<Vec<Arbiter>>>>,
    stopped: Arc<watch::Sender<bool>>,
}

impl Workers {
    /// Starts one worker per listener, each serving with its own instance
    /// of the service made by `make_service`, and waits until every one
    /// accepts. `tune` is called on each accepted connection.
    pub(crate) async fn start<F, SF, T>(
        listeners: Vec<StdListener>,
        make_service: F,
        tune: T,
        max_pending: usize,
        log: slog::Logger,
    ) -> io::Result<Workers>
    where
        F: Fn() -> SF + Send + Clone + 'static,
        T: Fn(&TcpStream) + Send + Clone + 'static,
        SF: ServiceFactory<
                (TcpStream, Protocol, Option<SocketAddr>),
                Config = (),
                Response = (),
                InitError = (),
            > + 'static,
    {
        // Each worker gets its share of the limit, rounded up.
        let per_worker = max_pending.div_ceil(listeners.len().max(1)).max(1);
        let mut arbiters = Vec::with_capacity(listeners.len());
        let mut started = Vec::with_capacity(listeners.len());
        for listener in listeners {
            let arbiter = Arbiter::new();
            let (tx, rx) = oneshot::channel();
            let make_service = make_service.clone();
            let tune = tune.clone();
            let log = log.clone();
            // The service is not `Send`: it is made on the worker's thread.
            arbiter.spawn_fn(move || {
                actix_rt::spawn(async move {
                    let ready = async {
                        let listener = TcpListener::from_std(listener)?;
                        let service = make_service().new_service(()).await.map_err(|()| {
                            io::Error::other("the HTTP service of a worker failed to start")
                        })?;
                        io::Result::Ok((listener, service))
                    };
                    match ready.await {
                        Ok((listener, service)) => {
                            let _ = tx.send(Ok(()));
                            accept_loop(listener, Rc::new(service), tune, per_worker, log).await
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                });
            });
            arbiters.push(arbiter);
            started.push(rx);
        }
        let workers = Workers {
            arbiters: Arc::new(Mutex::new(Some(arbiters))),
            stopped: Arc::new(watch::Sender::new(false)),
        };
        for rx in started {
            let outcome = rx
                .await
                .unwrap_or_else(|_| Err(io::Error::other("an HTTP worker exited at start")));
            if let Err(e) = outcome {
                workers.stop().await;
                return Err(e);
            }
        }
        Ok(workers)
    }

    /// Stops the workers: their listeners close, and every connection they
    /// still hold is dropped. Returns once their threads have ended.
    pub(crate) async fn stop(&self) {
        let arbiters = self.arbiters.lock().unwrap().take();
        if let Some(arbiters) = arbiters {
            for a in &arbiters {
                a.stop();
            }
            let (tx, rx) = oneshot::channel();
            // Joining blocks: off the caller's thread.
            std::thread::spawn(move || {
                for a in arbiters {
                    let _ = a.join();
                }
                let _ = tx.send(());
            });
            let _ = rx.await;
            self.stopped.send_replace(true);
        }
        self.stopped().await
    }

    /// Resolves once [`Workers::stop`] has finished.
    pub(crate) async fn stopped(&self) {
        let _ = self.stopped.subscribe().wait_for(|s| *s).await;
    }
}

/// Connections of one worker still in their HTTP phase (requests,
/// keep-alive, handshakes): an upgraded connection leaves it as soon as
/// its session takes the socket over.
struct Pending {
    count: Cell<usize>,
    freed: Notify,
}

/// One connection's place in [`Pending`], given back however its task ends.
struct PendingSlot(Rc<Pending>);

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.0.count.set(self.0.count.get() - 1);
        self.0.freed.notify_one();
    }
}

async fn accept_loop<S, T>(
    listener: TcpListener,
    service: Rc<S>,
    tune: T,
    max_pending: usize,
    log: slog::Logger,
) where
    T: Fn(&TcpStream),
    S: Service<(TcpStream, Protocol, Option<SocketAddr>), Response = ()> + 'static,
{
    let pending = Rc::new(Pending {
        count: Cell::new(0),
        freed: Notify::new(),
    });
    let mut warned: Option<Instant> = None;
    loop {
        // At the limit, stop accepting: new connections wait in the
        // kernel's queue (and past it, are refused by the kernel) instead
        // of each taking a request buffer of up to 128 KiB here.
        while pending.count.get() >= max_pending {
            pending.freed.notified().await;
        }
        match listener.accept().await {
            Ok((io, peer)) => {
                tune(&io);
                pending.count.set(pending.count.get() + 1);
                let slot = PendingSlot(pending.clone());
                let service = service.clone();
                actix_rt::spawn(async move {
                    let _slot = slot;
                    if poll_fn(|cx| service.poll_ready(cx)).await.is_ok() {
                        let _ = service.call((io, Protocol::Http1, Some(peer))).await;
                    }
                });
            }
            // The client gave up while it waited in the queue.
            Err(e) if is_connection_error(&e) => {}
            // Out of descriptors or socket memory: what is open must close
            // first. Pausing lets it, where retrying at once would spin.
            Err(e) => {
                if warned.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    slog::warn!(log, "accepting connections failed; pausing (raise the file descriptor limit, or lower MAX_TOTAL_CONNECTIONS)";
                        "error" => %e);
                    warned = Some(Instant::now());
                }
                actix_rt::time::sleep(RESOURCE_PAUSE).await;
            }
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listener_is_bound_to_the_same_free_port() {
        let all = bind("127.0.0.1", 0, 3).unwrap();
        assert_eq!(all.len(), 3);
        let port = all[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        for l in &all {
            assert_eq!(l.local_addr().unwrap().port(), port);
        }
    }

    #[test]
    fn a_port_in_use_by_another_socket_is_refused() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        assert!(bind("127.0.0.1", port, 2).is_err());
    }
}
