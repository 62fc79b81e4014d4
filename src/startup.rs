//! Building and running one relay instance: the actors, the shared state,
//! the HTTP server, and graceful shutdown.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::HttpService;
use actix_service::{map_config, IntoServiceFactory};
use actix_web::dev::AppConfig;
use actix_web::middleware::from_fn;
use actix_web::{web, App};
use actix_web_prom::PrometheusMetricsBuilder;
use anyhow::Context as _;
use tokio::net::TcpStream;

use crate::bridge::{BridgeConfig, RedisBridge};
use crate::cluster::redis::RedisLink;
use crate::cluster::{Backend, Memory};
use crate::http;
use crate::http::server::Workers;
use crate::limits::{ConnectionLimiter, KeyedLimiter};
use crate::metrics::{Metrics, MetricsActor};
use crate::registry::{Registry, RegistryConfig};
use crate::replay::ReplayGuard;
use crate::room::{ClusterConfig, RoomConfig};
use crate::settings::Settings;
use crate::state::AppState;
use crate::token::JoinTokens;

/// A built, listening relay instance.
pub struct Application {
    port: u16,
    server: Workers,
    state: web::Data<AppState>,
}

/// A handle on a running instance: starts graceful shutdown from outside
/// (signals, tests).
#[derive(Clone)]
pub struct AppHandle {
    state: web::Data<AppState>,
    server: Workers,
}

impl Application {
    /// Builds the instance with a logger made from the settings.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let log = crate::logging::build(&settings);
        Self::build_with_logger(settings, log).await
    }

    /// Builds the instance: binds the listener (port 0 picks a free one),
    /// starts the actors and the HTTP workers.
    pub async fn build_with_logger(
        settings: Settings,
        log: slog::Logger,
    ) -> anyhow::Result<Application> {
        let settings = Arc::new(settings);
        let s = &settings;
        for warning in s.warnings() {
            slog::warn!(log, "{}", warning);
        }
        let metrics = Metrics::new();
        metrics
            .connections_max
            .set(i64::try_from(s.max_total_connections).unwrap_or(i64::MAX));
        metrics
            .memory_limit_bytes
            .set(i64::try_from(crate::metrics::cgroup_memory_limit_bytes()).unwrap_or(0));
        // Cluster mode: the link to Redis, and the bridge that keeps it. The
        // instance starts whether or not Redis answers yet; `/ready` waits
        // for the first connection.
        let cluster = match &s.redis_url {
            None => {
                metrics.redis_up.set(1);
                None
            }
            Some(url) => {
                if s.join_token_secret_generated {
                    slog::warn!(log, "cluster mode with a generated JOIN_TOKEN_SECRET: \
                        tokens minted by one instance will not verify on another (set JOIN_TOKEN_SECRET)");
                }
                if s.cluster_secret_derived {
                    slog::info!(log, "CLUSTER_SECRET is not set: Redis names are keyed by a key derived \
                        from JOIN_TOKEN_SECRET (set CLUSTER_SECRET to rotate token keys without splitting the cluster)");
                }
                let link = Arc::new(RedisLink::new(
                    s,
                    metrics.clone(),
                    log.new(slog::o!("actor" => "bridge")),
                )?);
                let bridge = RedisBridge::new(
                    link.clone(),
                    BridgeConfig {
                        url: url.clone(),
                        cluster: s.redis_cluster,
                        connect_timeout: Duration::from_millis(s.redis_connect_timeout_ms),
                        reconnect_max: Duration::from_millis(s.redis_reconnect_max_ms),
                        ready_check: s.redis_enable_ready_check,
                        receive_limit: s.redis_receive_buffer_bytes,
                    },
                )
                .start();
                Some(ClusterConfig { link, bridge })
            }
        };
        let started = Instant::now();
        let metrics_actor = MetricsActor::new(
            metrics.clone(),
            started,
            Duration::from_millis(s.metrics_collection_interval_ms),
        )
        .start();
        let registry = Registry::start(
            RegistryConfig {
                room: RoomConfig {
                    max_members: s.max_room_members,
                    slow_consumer_threshold: s
                        .feature_slow_consumer_protection
                        .then_some(s.slow_consumer_buffer_threshold),
                    cluster: cluster.clone(),
                },
                auto_cleanup: s.feature_auto_room_cleanup,
                idle_ttl: Duration::from_secs(s.room_idle_ttl_secs),
                arbiters: s.room_arbiters,
            },
            metrics.clone(),
            log.new(slog::o!("actor" => "registry")),
        );
        let state = web::Data::new(AppState {
            tokens: JoinTokens::new(
                &s.join_token_secret,
                s.join_token_secret_previous.as_deref(),
                s.join_token_max_ttl_secs,
                s.join_token_leeway_secs,
            ),
            backend: match &cluster {
                None => Backend::Memory(Box::new(Memory {
                    replay: ReplayGuard::new(
                        s.feature_token_replay_protection,
                        s.join_token_leeway_secs,
                    ),
                    registry: registry.clone(),
                    room_creates: KeyedLimiter::new(s.max_room_creates_per_ip_per_min),
                    token_mints: KeyedLimiter::new(s.max_token_mints_per_ip_per_min),
                })),
                Some(c) => Backend::Redis {
                    link: c.link.clone(),
                    room_creates_per_min: s.max_room_creates_per_ip_per_min,
                    token_mints_per_min: s.max_token_mints_per_ip_per_min,
                },
            },
            registry,
            metrics: metrics.clone(),
            metrics_actor,
            connections: Arc::new(ConnectionLimiter::new(
                s.max_conns_per_ip,
                s.max_total_connections,
            )),
            health_limit: KeyedLimiter::new(s.http_probe_limit_per_min),
            ready_limit: KeyedLimiter::new(s.http_probe_limit_per_min),
            metrics_limit: KeyedLimiter::new(s.http_probe_limit_per_min),
            draining: Default::default(),
            sessions: Default::default(),
            ready: Default::default(),
            started,
            log: log.clone(),
            settings: settings.clone(),
        });

        let prometheus = PrometheusMetricsBuilder::new("blindrelay")
            .registry(metrics.registry.clone())
            // Unmatched paths could carry anything; never label with them.
            .mask_unmatched_patterns("UNMATCHED")
            .build()
            .map_err(|e| anyhow::anyhow!("building the HTTP metrics middleware: {e}"))?;

        let listeners = http::server::bind(&s.host, s.port, s.workers)
            .with_context(|| format!("binding {}:{} (HOST, PORT)", s.host, s.port))?;
        let port = listeners[0].local_addr()?.port();
        let tuning = TcpTuning {
            user_timeout: Duration::from_millis(s.tcp_user_timeout_ms),
            notsent_lowat: s.tcp_notsent_lowat_bytes,
            receive_buffer: s.tcp_receive_buffer_bytes,
        };
        let mut per_connection = false;
        for l in &listeners {
            per_connection |= !tune_listener(l, tuning);
        }
        let settings_data = web::Data::new(settings.clone());
        let app_state = state.clone();
        let route_settings = settings.clone();
        let make_app = move || {
            let route_settings = route_settings.clone();
            App::new()
                .app_data(app_state.clone())
                .app_data(settings_data.clone())
                .configure(move |cfg| http::routes(cfg, &route_settings))
                .default_service(web::to(http::not_found))
                .wrap(from_fn(http::cors))
                .wrap(from_fn(http::security_headers))
                .wrap(prometheus.clone())
                .wrap(from_fn(http::request_id))
        };
        let keep_alive = Duration::from_millis(s.http_keep_alive_timeout_ms);
        let upgrade_time_limit = Duration::from_millis(s.ws_close_timeout_ms.max(5_000));
        // actix-web's `HttpServer`, assembled by hand for its one missing
        // piece: an upgrade service, through which sessions take their
        // connections over from the HTTP dispatcher (see http::upgrade), on
        // workers that accept for themselves (see http::server).
        let make_service = move || {
            let make_app = make_app.clone();
            let upgrade_app = make_app.clone();
            HttpService::build()
                .keep_alive(keep_alive)
                .client_disconnect_timeout(Duration::ZERO)
                .upgrade(http::upgrade_factory(
                    move || upgrade_app().into_factory(),
                    upgrade_time_limit,
                ))
                .finish(map_config(make_app().into_factory(), |()| {
                    AppConfig::default()
                }))
        };
        let tune = move |io: &TcpStream| {
            if per_connection {
                tune_socket(io, tuning)
            }
        };
        let server = Workers::start(
            listeners,
            make_service,
            tune,
            s.max_pending_connections,
            log.new(slog::o!("actor" => "http")),
        )
        .await
        .context("starting the HTTP workers")?;

        state.ready.store(true, Ordering::Relaxed);
        let mode = if cluster.is_some() {
            "cluster"
        } else {
            "standalone"
        };
        slog::info!(log, "listening"; "port" => port, "mode" => mode, "instance_id" => &s.instance_id);
        Ok(Application {
            port,
            server,
            state,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle on the running instance.
    pub fn handle(&self) -> AppHandle {
        AppHandle {
            state: self.state.clone(),
            server: self.server.clone(),
        }
    }

    /// Serves until SIGTERM/SIGINT (or a [`AppHandle`]) has drained
    /// the instance.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let handle = self.handle();
        actix_rt::spawn(async move {
            wait_for_signal().await;
            handle.shutdown().await;
        });
        self.server.stopped().await;
        Ok(())
    }
}

/// The TCP options of every client connection.
///
/// `user_timeout` bounds how long sent data may stay unacknowledged (or the
/// peer's window closed) before the kernel drops the connection: a client
/// that stops reading, or vanishes, cannot hold its connection for the
/// kernel's default quarter of an hour. Zero keeps the kernel's default.
///
/// `notsent_lowat` bounds the bytes the kernel accepts from us and has not
/// yet sent. Without it, the kernel grows a slow reader's send buffer (to
/// 4 MiB on common settings) before the relay's own queue sees any of the
/// backlog: a thousand clients that stop reading held 1.5 GB of kernel
/// memory, and `SLOW_CONSUMER_BUFFER_THRESHOLD` never fired. With it, the
/// backlog stays in the session's queue, where it is counted and bounded.
/// Zero keeps the kernel's default.
///
/// `receive_buffer` caps what the kernel buffers from a client before the
/// session reads it (`SO_RCVBUF`, which also turns off the kernel's growing
/// of that buffer). A client has no use for more than a few messages in
/// flight (it may send `MAX_BYTES_PER_10S` per ten seconds), but one that
/// floods pings could otherwise park several MiB in each of its sockets
/// (500 MB of kernel memory for 1,000 of them, measured). Zero keeps the
/// kernel's default.
///
/// TCP_NODELAY: a relay writes many small frames back to back; with Nagle's
/// algorithm a frame written while an earlier one is unacknowledged waits
/// for the client's delayed ACK (up to 40 ms), in every group message.
#[derive(Clone, Copy)]
struct TcpTuning {
    user_timeout: Duration,
    notsent_lowat: u32,
    receive_buffer: usize,
}

/// Sets the options on one socket; the first failure is returned.
fn apply_tcp_options(sock: socket2::SockRef<'_>, t: TcpTuning) -> std::io::Result<()> {
    sock.set_tcp_nodelay(true)?;
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    {
        if !t.user_timeout.is_zero() {
            sock.set_tcp_user_timeout(Some(t.user_timeout))?;
        }
        if t.notsent_lowat > 0 {
            sock.set_tcp_notsent_lowat(t.notsent_lowat)?;
        }
    }
    if t.receive_buffer > 0 {
        sock.set_recv_buffer_size(t.receive_buffer)?;
    }
    Ok(())
}

fn tune_socket(stream: &TcpStream, t: TcpTuning) {
    let _ = apply_tcp_options(socket2::SockRef::from(stream), t);
}

/// The same options on the listening socket, where Linux has every accepted
/// connection inherit them: system calls saved on every connection (a
/// connection storm's profile counts them). False where that does not hold,
/// and connections are tuned one by one.
fn tune_listener(listener: &std::net::TcpListener, t: TcpTuning) -> bool {
    cfg!(target_os = "linux") && apply_tcp_options(socket2::SockRef::from(listener), t).is_ok()
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

impl AppHandle {
    /// Test hook: makes the room's actor fail once, as a bug would.
    #[cfg(feature = "test-hooks")]
    pub async fn fail_room(&self, room: &str) -> bool {
        self.inject(room, None, false, false).await
    }

    /// Test hook: makes the room's actor fail in its next join.
    #[cfg(feature = "test-hooks")]
    pub async fn fail_next_join(&self, room: &str) -> bool {
        self.inject(room, None, true, false).await
    }

    /// Test hook: makes the room fail in the next `send` it handles.
    #[cfg(feature = "test-hooks")]
    pub async fn fail_next_send(&self, room: &str) -> bool {
        self.inject(room, None, false, true).await
    }

    /// Test hook: blocks the room's thread for `d`, as a room that falls
    /// behind would be.
    #[cfg(feature = "test-hooks")]
    pub async fn stall_room(&self, room: &str, d: Duration) -> bool {
        self.inject(room, Some(d), false, false).await
    }

    #[cfg(feature = "test-hooks")]
    async fn inject(
        &self,
        room: &str,
        stall: Option<Duration>,
        on_next_join: bool,
        on_next_send: bool,
    ) -> bool {
        let failure = crate::room::InjectFailure {
            stall,
            on_next_join,
            on_next_send,
        };
        self.state.registry.fail_room(room, failure).await
    }

    /// Starts draining without stopping the server: `/ready` turns 503,
    /// upgrades get 503, sessions are closed with 1012.
    /// The closes are spread over `DRAIN_SPREAD_MS` (bounded by
    /// `SHUTDOWN_TIMEOUT_MS`) in batches, so that the clients of this
    /// instance do not all reconnect to the others in the same instant.
    pub fn begin_drain(&self) {
        let state = &self.state;
        if state.draining.swap(true, Ordering::Relaxed) {
            return; // already draining
        }
        state.metrics.draining.set(1);
        let sessions = state.sessions.drain();
        let window = state.settings.drain_window();
        slog::info!(state.log, "draining";
            "sessions" => sessions.len(), "window_ms" => window.as_millis() as u64);
        actix_rt::spawn(crate::session::spread_drain(
            sessions,
            window,
            state.settings.drain_min_batch,
        ));
    }

    /// Graceful shutdown (PROTOCOL.md section 6): `/ready` turns 503,
    /// upgrades get 503, every session is closed with 1012, then the server
    /// stops once the sessions are gone or `SHUTDOWN_TIMEOUT_MS` has passed.
    pub async fn shutdown(&self) {
        let state = &self.state;
        let s = &state.settings;
        slog::info!(state.log, "shutting down"; "sessions" => state.connections.active());
        if !s.feature_graceful_shutdown {
            state.ready.store(false, Ordering::Relaxed);
            self.server.stop().await;
            return;
        }
        self.begin_drain();
        // Stopping the workers and exiting take a moment more: keep the sum
        // within SHUTDOWN_TIMEOUT_MS.
        let deadline =
            Instant::now() + Duration::from_millis(s.shutdown_timeout_ms.saturating_sub(500));
        while state.connections.active() > 0 && Instant::now() < deadline {
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        // Cluster mode: the leaves of the closed sessions (presence removal
        // and member_left for the other instances) go out before the exit.
        if let Some(link) = state.backend.link() {
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = actix_rt::time::timeout(left, state.registry.flush()).await;
            while link.is_up() && !link.lane_idle() && Instant::now() < deadline {
                actix_rt::time::sleep(Duration::from_millis(5)).await;
            }
        }
        // Let the last close frames leave before the workers stop.
        actix_rt::time::sleep(Duration::from_millis(50)).await;
        slog::info!(state.log, "stopped"; "sessions_left" => state.connections.active());
        self.server.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn accepted_connections_inherit_the_listener_tcp_options() {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let tuning = TcpTuning {
            user_timeout: Duration::from_millis(12_345),
            notsent_lowat: 54_321,
            receive_buffer: 65_536,
        };
        assert!(tune_listener(&listener, tuning));
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let sock = socket2::SockRef::from(&accepted);
        assert!(sock.tcp_nodelay().unwrap());
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(12_345))
        );
        assert_eq!(sock.tcp_notsent_lowat().unwrap(), 54_321);
        // Linux doubles the value for its bookkeeping.
        assert_eq!(sock.recv_buffer_size().unwrap(), 2 * 65_536);
    }
}
