//! The cluster seam. What must hold across instances (the replay guard,
//! the room registry behind `/v1/rooms` and the token API, the per-IP
//! room-creation and token-mint limits, presence with `MAX_ROOM_MEMBERS`)
//! is asked of a [`Backend`], chosen once at start-up: in memory when
//! `REDIS_URL` is unset (one instance; today's structures), in Redis
//! otherwise. Callers do not know which one runs. Presence lives with the
//! room actor: standalone the room's own member table is the whole truth;
//! in cluster mode the room also takes its place in Redis through the same
//! [`redis::RedisLink`].

pub(crate) mod conn;
pub(crate) mod keys;
pub(crate) mod pubsub;
pub(crate) mod redis;
pub(crate) mod scripts;
pub(crate) mod wire;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::limits::KeyedLimiter;
use crate::registry::Registry;
use crate::replay::{Burn, ReplayGuard};
use redis::{RedisError, RedisLink};

/// Why cluster-wide state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// Redis is unreachable: the caller fails closed (1013, 503).
    #[error("cluster state is unreachable: {0}")]
    Unreachable(#[from] RedisError),
}

/// Per-IP limits that hold cluster-wide.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Limit {
    /// `POST /v1/rooms`, `MAX_ROOM_CREATES_PER_IP_PER_MIN`.
    RoomCreate,
    /// `POST /v1/rooms/{room}/tokens`, `MAX_TOKEN_MINTS_PER_IP_PER_MIN`.
    TokenMint,
}

/// Standalone: everything in this process.
pub(crate) struct Memory {
    pub replay: ReplayGuard,
    pub registry: Arc<Registry>,
    pub room_creates: KeyedLimiter,
    pub token_mints: KeyedLimiter,
}

/// Where cluster-wide state lives.
pub(crate) enum Backend {
    Memory(Box<Memory>),
    Redis {
        link: Arc<RedisLink>,
        room_creates_per_min: u64,
        token_mints_per_min: u64,
    },
}

impl Backend {
    /// The cluster link, in cluster mode (for probes and metrics).
    pub fn link(&self) -> Option<&Arc<RedisLink>> {
        match self {
            Backend::Memory(_) => None,
            Backend::Redis { link, .. } => Some(link),
        }
    }

    /// Burns a `jti` until `exp`; says whether it was fresh.
    pub async fn burn(&self, jti: &str, exp: u64) -> Result<Burn, StoreError> {
        match self {
            Backend::Memory(m) => Ok(m.replay.burn(jti, exp).await),
            Backend::Redis { link, .. } => Ok(link.burn(jti, exp).await?),
        }
    }

    /// Records a room created through the API.
    pub async fn create_room(&self, room: &str) -> Result<(), StoreError> {
        match self {
            Backend::Memory(m) => {
                m.registry.create_room(room);
                Ok(())
            }
            Backend::Redis { link, .. } => Ok(link.create_room(room).await?),
        }
    }

    /// Whether a room exists (for minting tokens).
    pub async fn room_exists(&self, room: &str) -> Result<bool, StoreError> {
        match self {
            Backend::Memory(m) => Ok(m.registry.room_exists(room)),
            Backend::Redis { link, .. } => Ok(link.room_exists(room).await?),
        }
    }

    /// Counts one event against a per-IP limit: `Ok(Err(wait))` when over.
    pub async fn allow(
        &self,
        limit: Limit,
        ip: IpAddr,
    ) -> Result<Result<(), Duration>, StoreError> {
        match self {
            Backend::Memory(m) => {
                let limiter = match limit {
                    Limit::RoomCreate => &m.room_creates,
                    Limit::TokenMint => &m.token_mints,
                };
                Ok(limiter.check(ip, Instant::now()))
            }
            Backend::Redis {
                link,
                room_creates_per_min,
                token_mints_per_min,
            } => {
                let (kind, per_min) = match limit {
                    Limit::RoomCreate => ("c", *room_creates_per_min),
                    Limit::TokenMint => ("t", *token_mints_per_min),
                };
                Ok(link.limit(kind, &ip, per_min).await?)
            }
        }
    }
}
