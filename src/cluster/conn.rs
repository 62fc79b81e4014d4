//! Connections to one Redis or to a Redis Cluster (`REDIS_CLUSTER=true`),
//! behind one type each, so that the rest of the cluster code is written
//! once. In a Redis Cluster every key and channel of a room shares one hash
//! slot (see [`super::keys`]), so each command and each script goes to one
//! shard.

use deadpool_redis::{PoolConfig, Runtime};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// The seed node URLs: one URL, or with `REDIS_CLUSTER=true` a
/// comma-separated list.
pub(crate) fn node_urls(url: &str, cluster: bool) -> Vec<String> {
    if cluster {
        url.split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect()
    } else {
        vec![url.to_owned()]
    }
}

/// Idle time before the kernel probes a Redis connection (a peer that
/// vanished is noticed by the kernel too, not only by the heartbeat).
pub(crate) const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(10);

/// How to reach one node: its URL, with TCP_NODELAY (a publication must not
/// wait for the previous one's ACK) and TCP keepalive ([`KEEPALIVE`]).
pub(crate) fn connection_info(url: &str) -> redis::RedisResult<redis::ConnectionInfo> {
    use redis::io::tcp::{socket2::TcpKeepalive, TcpSettings};
    let info = redis::IntoConnectionInfo::into_connection_info(url)?;
    Ok(info.set_tcp_settings(
        TcpSettings::default()
            .set_nodelay(true)
            .set_keepalive(TcpKeepalive::new().with_time(KEEPALIVE)),
    ))
}

/// `ConnectionLike` for an enum whose variants each hold a connection.
macro_rules! delegate_connection_like {
    ($ty:ident) => {
        impl ConnectionLike for $ty {
            fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
                match self {
                    $ty::Single(c) => c.req_packed_command(cmd),
                    $ty::Cluster(c) => c.req_packed_command(cmd),
                }
            }

            fn req_packed_commands<'a>(
                &'a mut self,
                cmd: &'a Pipeline,
                offset: usize,
                count: usize,
            ) -> RedisFuture<'a, Vec<Value>> {
                match self {
                    $ty::Single(c) => c.req_packed_commands(cmd, offset, count),
                    $ty::Cluster(c) => c.req_packed_commands(cmd, offset, count),
                }
            }

            fn get_db(&self) -> i64 {
                match self {
                    $ty::Single(c) => c.get_db(),
                    $ty::Cluster(c) => c.get_db(),
                }
            }
        }
    };
}

/// A multiplexed connection: to one Redis, or to every shard of a cluster.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// The pool for request/response commands.
pub(crate) enum Pool {
    Single(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

/// A connection taken from the pool (returned to it when dropped).
pub(crate) enum Pooled {
    Single(deadpool_redis::Connection),
    Cluster(deadpool_redis::cluster::Connection),
}

impl Pool {
    pub fn new(urls: Vec<String>, cluster: bool, config: PoolConfig) -> anyhow::Result<Self> {
        let runtime = Some(Runtime::Tokio1);
        Ok(if cluster {
            let mut cfg = deadpool_redis::cluster::Config::from_urls(urls);
            cfg.pool = Some(config);
            Pool::Cluster(
                cfg.create_pool(runtime)
                    .map_err(|e| anyhow::anyhow!("REDIS_URL: {e}"))?,
            )
        } else {
            let url = urls.into_iter().next().unwrap_or_default();
            let mut cfg = deadpool_redis::Config::from_url(url);
            cfg.pool = Some(config);
            Pool::Single(
                cfg.create_pool(runtime)
                    .map_err(|e| anyhow::anyhow!("REDIS_URL: {e}"))?,
            )
        })
    }

    pub async fn get(&self) -> Result<Pooled, String> {
        match self {
            Pool::Single(p) => p.get().await.map(Pooled::Single).map_err(|e| e.to_string()),
            Pool::Cluster(p) => p
                .get()
                .await
                .map(Pooled::Cluster)
                .map_err(|e| e.to_string()),
        }
    }
}

delegate_connection_like!(Conn);
delegate_connection_like!(Pooled);
