//! Aggregate metrics (PROTOCOL.md section 8). Counters are lock-free
//! prometheus atomics updated where things happen; the [`MetricsActor`]
//! owns the registry's rendering and the sampled gauges (uptime, memory).
//! No label ever carries a room, member, IP or token.

mod actor;
mod sharded;

pub use actor::{MetricsActor, Render};
pub use sharded::ShardedCounter;

use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::protocol::Close;

/// Reasons for `blindrelay_connections_rejected_total`.
pub const REJECT_REASONS: [&str; 5] = [
    "ip_limit",
    "global_limit",
    "origin",
    "draining",
    "bad_upgrade",
];

/// Disconnect reasons that are not server close codes.
pub const CLIENT_CLOSED: &str = "client_closed";
pub const PING_TIMEOUT: &str = "ping_timeout";

/// Handles to every counter and gauge.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub connections_active: IntGauge,
    pub connections_total: IntCounter,
    pub connections_rejected: IntCounterVec,
    pub disconnects: IntCounterVec,
    pub rooms_active: IntGauge,
    pub messages_received: ShardedCounter,
    pub messages_delivered: ShardedCounter,
    pub message_bytes_received: ShardedCounter,
    pub redis_up: IntGauge,
    pub redis_roundtrip: Gauge,
    pub redis_reconnects: IntCounter,
    pub redis_publishes: IntCounter,
    pub redis_errors: IntCounter,
    pub cluster_received: IntCounter,
    pub room_restarts: IntCounter,
    pub session_moves: IntCounter,
    pub uptime_seconds: IntGauge,
    pub resident_memory_bytes: IntGauge,
    /// The memory limit of the process's cgroup (a container's limit), 0
    /// when there is none: alerts compare the resident size with it.
    pub memory_limit_bytes: IntGauge,
    /// `MAX_TOTAL_CONNECTIONS`, for dashboards and alerts on headroom.
    pub connections_max: IntGauge,
    /// 1 from the start of a drain until the exit.
    pub draining: IntGauge,
}

fn counter(reg: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    reg.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn sharded(reg: &Registry, name: &str, help: &str) -> ShardedCounter {
    let c = ShardedCounter::new(name, help).expect("valid metric");
    reg.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(reg: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    reg.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn counter_vec(
    reg: &Registry,
    name: &str,
    help: &str,
    label: &str,
    values: &[&str],
) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    reg.register(Box::new(c.clone())).expect("unique metric");
    for v in values {
        c.with_label_values(&[*v]);
    }
    c
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let mut disconnect_reasons: Vec<&str> =
            Close::ALL.iter().map(|c| c.metric_reason()).collect();
        disconnect_reasons.extend([CLIENT_CLOSED, PING_TIMEOUT]);
        Metrics {
            connections_active: gauge(
                &r,
                "blindrelay_connections_active",
                "Open WebSocket sessions",
            ),
            connections_total: counter(
                &r,
                "blindrelay_connections_total",
                "WebSocket sessions accepted",
            ),
            connections_rejected: counter_vec(
                &r,
                "blindrelay_connections_rejected_total",
                "WebSocket upgrades refused",
                "reason",
                &REJECT_REASONS,
            ),
            disconnects: counter_vec(
                &r,
                "blindrelay_disconnects_total",
                "WebSocket sessions ended, by reason",
                "reason",
                &disconnect_reasons,
            ),
            rooms_active: gauge(
                &r,
                "blindrelay_rooms_active",
                "Rooms with at least one member on this instance",
            ),
            messages_received: sharded(
                &r,
                "blindrelay_messages_received_total",
                "send frames accepted",
            ),
            messages_delivered: sharded(
                &r,
                "blindrelay_messages_delivered_total",
                "message frames handed to clients",
            ),
            message_bytes_received: sharded(
                &r,
                "blindrelay_message_bytes_received_total",
                "Bytes of data in accepted send frames",
            ),
            redis_up: gauge(
                &r,
                "blindrelay_redis_up",
                "1 when the link to Redis is up (standalone: always 1)",
            ),
            redis_roundtrip: {
                let g = Gauge::new(
                    "blindrelay_redis_roundtrip_seconds",
                    "Last measured round trip to Redis (cluster mode)",
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            redis_reconnects: counter(
                &r,
                "blindrelay_redis_reconnects_total",
                "Times the cluster link was restored after being lost",
            ),
            redis_publishes: counter(
                &r,
                "blindrelay_redis_publishes_total",
                "Publications written to Redis (room messages, joins, leaves)",
            ),
            redis_errors: counter(
                &r,
                "blindrelay_redis_errors_total",
                "Redis commands that failed or timed out",
            ),
            cluster_received: counter(
                &r,
                "blindrelay_cluster_events_received_total",
                "Publications received from other instances",
            ),
            room_restarts: counter(
                &r,
                "blindrelay_room_restarts_total",
                "Room actors restarted by their supervisor",
            ),
            session_moves: counter(
                &r,
                "blindrelay_session_moves_total",
                "Sessions moved at join to the worker thread their room runs on",
            ),
            uptime_seconds: gauge(&r, "blindrelay_uptime_seconds", "Seconds since start"),
            resident_memory_bytes: gauge(
                &r,
                "blindrelay_resident_memory_bytes",
                "Resident set size of the process",
            ),
            memory_limit_bytes: gauge(
                &r,
                "blindrelay_memory_limit_bytes",
                "Memory limit of the process's cgroup (0: none)",
            ),
            connections_max: gauge(
                &r,
                "blindrelay_connections_max",
                "Open WebSocket sessions allowed (MAX_TOTAL_CONNECTIONS)",
            ),
            draining: gauge(
                &r,
                "blindrelay_draining",
                "1 while the instance drains for shutdown",
            ),
            registry: {
                let info = IntGaugeVec::new(
                    Opts::new("blindrelay_build_info", "The running build (always 1)"),
                    &["version"],
                )
                .expect("valid metric");
                r.register(Box::new(info.clone())).expect("unique metric");
                info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
                r
            },
        }
    }

    pub fn disconnect(&self, reason: &str) {
        self.disconnects.with_label_values(&[reason]).inc();
    }

    pub fn reject(&self, reason: &str) {
        self.connections_rejected.with_label_values(&[reason]).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The memory limit of this process's cgroup in bytes (v2 `memory.max`,
/// else v1 `memory.limit_in_bytes`); 0 when unlimited or unknown.
pub fn cgroup_memory_limit_bytes() -> u64 {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let groups = read("/proc/self/cgroup").unwrap_or_default();
    // "0::/path" (v2, unified) or "N:memory:/path" (v1); in a container the
    // path is usually "/" and the files sit at the mount's root.
    let path_of = |prefix: &str| {
        groups
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|p| p.trim_end_matches('/').to_owned())
    };
    let mut candidates = Vec::new();
    if let Some(p) = path_of("0::") {
        candidates.push(format!("/sys/fs/cgroup{p}/memory.max"));
    }
    candidates.push("/sys/fs/cgroup/memory.max".to_owned());
    if let Some(p) = groups.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then(|| path.trim_end_matches('/').to_owned())
    }) {
        candidates.push(format!("/sys/fs/cgroup/memory{p}/memory.limit_in_bytes"));
    }
    candidates.push("/sys/fs/cgroup/memory/memory.limit_in_bytes".to_owned());
    candidates
        .iter()
        .find_map(|p| read(p))
        .and_then(|v| v.trim().parse::<u64>().ok())
        // "max" (v2) does not parse; v1 says "no limit" with a number near 2^63.
        .filter(|&v| v < (1 << 62))
        .unwrap_or(0)
}

/// Resident memory of this process in bytes (Linux; 0 elsewhere).
pub fn resident_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}
