//! The Lua scripts that keep cluster state consistent. Each touches the
//! keys of one room only (one hash tag), so it runs atomically on one Redis
//! and on one Redis Cluster shard alike. Times come from Redis's clock
//! (`TIME`), so instances' clocks need not agree.

/// Shared by the presence scripts, which take the same keys and the same
/// first arguments. KEYS: members, nodes, exists. ARGV: node, dead after
/// (ms), key TTL (ms), room idle TTL (ms), then the script's own.
///
/// `reap` removes instances whose heartbeat is older than the dead-after
/// time, and the members they owned (members whose owner is not listed at
/// all are orphans and go too), and returns the remaining `field, value`
/// pairs. `beat` records this instance's heartbeat and keeps the room's
/// keys alive (call it after writing members, so that they get a TTL).
const PRESENCE: &str = r#"
local node, dead_after = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function reap()
  local nodes = redis.call('HGETALL', KEYS[2])
  local alive = {[node] = true}
  for i = 1, #nodes, 2 do
    if nodes[i] == node or now - tonumber(nodes[i + 1]) <= dead_after then
      alive[nodes[i]] = true
    else
      redis.call('HDEL', KEYS[2], nodes[i])
    end
  end
  local kept = {}
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    if alive[string.sub(all[i + 1], 1, 22)] then
      table.insert(kept, all[i])
      table.insert(kept, all[i + 1])
    else
      redis.call('HDEL', KEYS[1], all[i])
    end
  end
  return kept
end
local function beat()
  redis.call('HSET', KEYS[2], node, now)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[4])
end
"#;

/// Takes a place in a room if there is one. ARGV after the shared ones:
/// field, value, max members. Returns `{0}` when the room is full, else
/// `{1, field, value, ...}` with the other members.
const JOIN_BODY: &str = r#"
local field, value, max = ARGV[5], ARGV[6], tonumber(ARGV[7])
local kept = reap()
local others = {1}
for i = 1, #kept, 2 do
  if kept[i] ~= field then
    table.insert(others, kept[i])
    table.insert(others, kept[i + 1])
  end
end
if (#others - 1) / 2 >= max then
  return {0}
end
redis.call('HSET', KEYS[1], field, value)
beat()
return others
"#;

/// The heartbeat of one instance in one room, which also (re)writes the
/// instance's members there: after an outage, or after another instance
/// took it for dead, its presence comes back by itself. ARGV after the
/// shared ones: n, then n `field, value` pairs. Returns every member entry
/// that is alive, as `field, value, ...`.
const REFRESH_BODY: &str = r#"
for i = 0, tonumber(ARGV[5]) - 1 do
  redis.call('HSET', KEYS[1], ARGV[6 + 2 * i], ARGV[7 + 2 * i])
end
beat()
return reap()
"#;

/// A token bucket per key: `capacity` events, refilled continuously over
/// `period` ms. KEYS: the bucket. ARGV: capacity, period (ms).
/// Returns 0 when allowed, else the ms until one more event is.
const LIMIT_BODY: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cap = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'n', 't')
local n = tonumber(b[1]) or cap
local last = tonumber(b[2]) or now
n = math.min(cap, n + math.max(0, now - last) * cap / period)
local wait = 0
if n >= 1 then
  n = n - 1
else
  wait = math.ceil((1 - n) * period / cap)
end
redis.call('HSET', KEYS[1], 'n', tostring(n), 't', tostring(now))
redis.call('PEXPIRE', KEYS[1], period)
return wait
"#;

/// The scripts, as sources: the presence scripts travel on the publish lane
/// with `EVAL` (in a Redis Cluster a script loaded with `SCRIPT LOAD` is
/// known to one shard only; Redis caches the compiled body either way).
pub(crate) struct Scripts {
    pub join: String,
    pub refresh: String,
    /// The limiter goes through the pool, where `redis::Script` handles
    /// `EVALSHA` and loading.
    pub limit: redis::Script,
}

impl Scripts {
    pub fn new() -> Self {
        Scripts {
            join: format!("{PRESENCE}{JOIN_BODY}"),
            refresh: format!("{PRESENCE}{REFRESH_BODY}"),
            limit: redis::Script::new(LIMIT_BODY),
        }
    }
}
