//! State shared by the HTTP handlers and the session actors of one
//! instance. Built once in [`crate::startup`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::Addr;

use crate::cluster::Backend;
use crate::limits::{ConnectionLimiter, KeyedLimiter};
use crate::metrics::{Metrics, MetricsActor};
use crate::registry::Registry;
use crate::settings::Settings;
use crate::token::JoinTokens;

pub(crate) struct AppState {
    pub settings: Arc<Settings>,
    pub tokens: JoinTokens,
    /// Cluster-wide state: in memory standalone, in Redis in cluster mode.
    pub backend: Backend,
    pub registry: Arc<Registry>,
    pub metrics: Metrics,
    pub metrics_actor: Addr<MetricsActor>,
    pub connections: Arc<ConnectionLimiter>,
    pub health_limit: KeyedLimiter,
    pub ready_limit: KeyedLimiter,
    pub metrics_limit: KeyedLimiter,
    /// Flips to true once, when graceful shutdown starts: upgrades and
    /// joins are refused from then on (the sessions themselves are told
    /// through the roster).
    pub draining: AtomicBool,
    /// Every live session, for the drain.
    pub(crate) sessions: crate::session::Roster,
    /// True once the server accepts connections; false again when it stops
    /// without a drain (a drain shows through `draining`).
    pub ready: AtomicBool,
    pub started: Instant,
    pub log: slog::Logger,
}

impl AppState {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Serving, not draining, and in cluster mode the link to Redis has
    /// been up once (a later outage does not take the instance out of the
    /// load balancer: PROTOCOL.md section 3).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && !self.is_draining()
            && self.backend.link().is_none_or(|l| l.ever_up())
    }
}
