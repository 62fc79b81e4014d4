//! Configuration: `config/default.toml`, then `config/{APP_ENV}.toml` when
//! present, then environment variables (the seed's names; `NODE_ENV` is an
//! alias of `APP_ENV`). Every value is typed and validated here, before
//! anything binds: a bad value is reported with the variable's name, what it
//! got and what it wants.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use crate::ids::new_instance_id;

/// The deployment environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppEnv {
    Development,
    Production,
    Test,
}

impl AppEnv {
    pub fn as_str(self) -> &'static str {
        match self {
            AppEnv::Development => "development",
            AppEnv::Production => "production",
            AppEnv::Test => "test",
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// A configuration value that cannot be used; the message says what to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{var}: {problem}")]
pub struct SettingsError {
    pub var: String,
    pub problem: String,
}

/// Every problem in a configuration, in the order the settings are read;
/// displayed one per line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub struct SettingsErrors(pub Vec<SettingsError>);

impl fmt::Display for SettingsErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// All settings, typed. Field names are the variables' names in lower case.
#[derive(Clone)]
pub struct Settings {
    pub app_env: AppEnv,
    pub host: String,
    pub port: u16,
    pub workers: usize,
    pub log_level: slog::Level,
    pub log_format: LogFormat,
    pub trust_proxy: bool,

    pub redis_url: Option<String>,
    /// `REDIS_CLUSTER`: `REDIS_URL` lists the seed nodes of a Redis Cluster.
    pub redis_cluster: bool,
    pub redis_max_retries_per_request: u32,
    pub redis_enable_ready_check: bool,
    pub redis_connect_timeout_ms: u64,
    pub redis_command_timeout_ms: u64,
    pub redis_reconnect_max_ms: u64,
    pub redis_pool_size: usize,
    pub redis_publish_buffer_bytes: usize,
    pub redis_receive_buffer_bytes: usize,

    pub join_token_secret: Vec<u8>,
    /// True when no secret was configured and one was generated (development).
    pub join_token_secret_generated: bool,
    pub join_token_secret_previous: Option<Vec<u8>>,
    /// `CLUSTER_SECRET`, or a key derived from `JOIN_TOKEN_SECRET` when unset.
    pub cluster_secret: Vec<u8>,
    /// True when `CLUSTER_SECRET` was derived rather than configured.
    pub cluster_secret_derived: bool,
    pub join_token_max_ttl_secs: u64,
    pub join_token_leeway_secs: u64,
    pub join_token_ttl_secs: u64,

    pub feature_health_endpoint: bool,
    pub feature_metrics_endpoint: bool,
    pub feature_readiness_endpoint: bool,
    pub feature_graceful_shutdown: bool,
    pub feature_cors: bool,
    pub feature_security_headers: bool,
    pub feature_request_id: bool,
    pub feature_detailed_errors: bool,
    pub feature_ip_tracking: bool,
    pub feature_token_replay_protection: bool,
    pub feature_slow_consumer_protection: bool,
    pub feature_auto_room_cleanup: bool,
    pub feature_room_api: bool,
    pub feature_echo_endpoint: bool,
    /// `FEATURE_WEB_CLIENT`: the reference web client at `/` (on in
    /// development, off by default in production).
    pub feature_web_client: bool,

    pub max_conns_per_ip: usize,
    pub max_total_connections: usize,
    /// Connections still in their HTTP phase (not yet upgraded), per
    /// instance: each may hold a request buffer of up to 128 KiB.
    pub max_pending_connections: usize,
    pub max_room_creates_per_ip_per_min: u64,
    pub max_token_mints_per_ip_per_min: u64,
    pub http_probe_limit_per_min: u64,
    pub max_msgs_per_10s: u64,
    pub max_bytes_per_10s: u64,
    pub slow_consumer_buffer_threshold: usize,
    pub max_room_members: usize,
    pub max_message_bytes: usize,

    pub csp_directives: String,
    pub hsts_max_age: u64,
    pub hsts_include_subdomains: bool,
    pub hsts_preload: bool,
    pub cors_allowed_origins: Vec<String>,
    pub cors_allow_credentials: bool,

    pub metrics_export_prometheus: bool,
    pub metrics_collection_interval_ms: u64,
    pub log_health_check_failures: bool,
    pub health_memory_warn_mb: u64,
    pub health_memory_fail_mb: u64,

    pub ws_ping_interval_ms: u64,
    pub ws_ping_timeout_ms: u64,
    pub ws_close_timeout_ms: u64,
    pub http_keep_alive_timeout_ms: u64,
    pub join_timeout_ms: u64,
    pub tcp_user_timeout_ms: u64,
    /// Linux `TCP_NOTSENT_LOWAT`: unsent bytes the kernel takes per client
    /// connection (0: the kernel's default, unbounded by us).
    pub tcp_notsent_lowat_bytes: u32,
    /// `SO_RCVBUF` of client connections (0: the kernel's own, growing).
    pub tcp_receive_buffer_bytes: usize,
    pub room_idle_ttl_secs: u64,
    pub presence_ttl_ms: u64,
    pub shutdown_timeout_ms: u64,
    /// `DRAIN_SPREAD_MS`: the window over which a drain spreads its 1012
    /// closes (see [`Settings::drain_window`]).
    pub drain_spread_ms: u64,
    /// `DRAIN_MIN_BATCH`: sessions closed together at least, per step of a
    /// drain; a small instance drains in a few steps rather than the whole
    /// window.
    pub drain_min_batch: usize,
    pub room_arbiters: usize,
    pub colocate_max_members: usize,

    pub service_version: String,
    pub deployment_env: String,
    pub instance_id: String,
}

impl fmt::Debug for Settings {
    /// Secrets are never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("app_env", &self.app_env)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("join_token_secret", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// Reads raw `NAME -> value` pairs and turns them into typed values.
struct Source<'a> {
    vars: &'a HashMap<String, String>,
    /// Every problem found: the caller reports them all at once, not the
    /// first of several that an operator would fix one restart at a time.
    errors: std::cell::RefCell<Vec<SettingsError>>,
}

impl Source<'_> {
    fn raw(&self, name: &str) -> Option<&str> {
        self.vars
            .get(&name.to_ascii_lowercase())
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
    }

    fn err(name: &str, problem: String) -> SettingsError {
        SettingsError {
            var: name.to_owned(),
            problem,
        }
    }

    fn fail(&self, e: SettingsError) {
        self.errors.borrow_mut().push(e);
    }

    fn string(&self, name: &str, default: &str) -> String {
        self.raw(name).unwrap_or(default).to_owned()
    }

    fn opt_string(&self, name: &str) -> Option<String> {
        self.raw(name).map(str::to_owned)
    }

    /// A boolean; a bad value is recorded and the default stands in.
    fn bool(&self, name: &str, default: bool) -> bool {
        match self.raw(name) {
            None => default,
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => {
                    self.fail(Self::err(
                        name,
                        format!("got {v:?}, want true or false (also 1/0, yes/no, on/off)"),
                    ));
                    default
                }
            },
        }
    }

    /// A whole number in `min..=max`; a bad value is recorded and the
    /// default stands in.
    fn num<T>(&self, name: &str, default: T, min: T, max: T) -> T
    where
        T: FromStr + PartialOrd + fmt::Display + Copy,
    {
        let Some(v) = self.raw(name) else {
            return default;
        };
        match v.parse::<T>() {
            Ok(n) if n >= min && n <= max => n,
            _ => {
                self.fail(Self::err(
                    name,
                    format!("got {v:?}, want a whole number from {min} to {max}"),
                ));
                default
            }
        }
    }
}

/// The cluster key when `CLUSTER_SECRET` is unset: a keyed hash of the
/// token secret, so that Redis never sees the token secret itself and the
/// two keys are never the same bytes.
fn derive_cluster_secret(join_token_secret: &[u8]) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(join_token_secret)
        .expect("HMAC takes keys of any length");
    mac.update(b"blindrelay cluster key v1");
    mac.finalize().into_bytes().to_vec()
}

/// What a drain keeps of `SHUTDOWN_TIMEOUT_MS` after its last close, for the
/// close frames, the cluster flush and the exit.
const DRAIN_RESERVE_MS: u64 = 3_000;

/// `REDIS_URL` with any password replaced (each URL of a list).
fn redact_redis_urls(urls: &str) -> String {
    urls.split(',')
        .map(|u| {
            let u = u.trim();
            let Some((scheme, rest)) = u.split_once("://") else {
                return u.to_owned();
            };
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                None => u.to_owned(),
                Some(at) => {
                    let user = rest[..at].split(':').next().unwrap_or("");
                    format!("{scheme}://{user}:[redacted]{}", &rest[at..])
                }
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

const DEFAULT_CSP: &str =
    "default-src 'none'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'";

impl Settings {
    /// Loads settings the way the binary does: files under `config/`, then
    /// the process environment.
    pub fn load() -> Result<Settings, anyhow::Error> {
        let env_vars: HashMap<String, String> = std::env::vars().collect();
        let dir = std::env::var("CONFIG_DIR").unwrap_or_else(|_| "config".to_owned());
        Settings::load_from(&dir, env_vars)
    }

    /// Layers `dir/default.toml`, `dir/{APP_ENV}.toml` and `env` (names in
    /// any case) over the built-in defaults.
    pub fn load_from(dir: &str, env: HashMap<String, String>) -> Result<Settings, anyhow::Error> {
        let env_vars: HashMap<String, String> = env
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        let app_env = match env_vars
            .get("app_env")
            .or_else(|| env_vars.get("node_env"))
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
        {
            Some("production" | "prod") => "production",
            Some("test") => "test",
            _ => "development",
        };
        let built = config::Config::builder()
            .add_source(config::File::with_name(&format!("{dir}/default")).required(false))
            .add_source(config::File::with_name(&format!("{dir}/{app_env}")).required(false))
            .build()?;
        let table: HashMap<String, config::Value> = built.try_deserialize()?;
        let mut vars: HashMap<String, String> = table
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        vars.extend(env_vars);
        Settings::from_vars(&vars).map_err(|all| SettingsErrors(all).into())
    }

    /// Builds settings from `NAME=value` pairs alone, over the defaults (for
    /// tests and embedding).
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Settings, SettingsError> {
        let vars: HashMap<String, String> = pairs
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
            .collect();
        Settings::from_vars(&vars).map_err(|mut all| all.swap_remove(0))
    }

    fn from_vars(vars: &HashMap<String, String>) -> Result<Settings, Vec<SettingsError>> {
        let s = Source {
            vars,
            errors: Default::default(),
        };
        let env_raw = s
            .raw("APP_ENV")
            .or_else(|| s.raw("NODE_ENV"))
            .unwrap_or("development")
            .to_ascii_lowercase();
        let app_env = match env_raw.as_str() {
            "development" | "dev" => AppEnv::Development,
            "production" | "prod" => AppEnv::Production,
            "test" => AppEnv::Test,
            other => {
                s.fail(Source::err(
                    "APP_ENV",
                    format!("got {other:?}, want development, production or test"),
                ));
                AppEnv::Development
            }
        };
        let prod = app_env == AppEnv::Production;

        let log_level = match s.string("LOG_LEVEL", "info").to_ascii_lowercase().as_str() {
            "trace" => slog::Level::Trace,
            "debug" => slog::Level::Debug,
            "info" => slog::Level::Info,
            "warn" | "warning" => slog::Level::Warning,
            "error" => slog::Level::Error,
            "critical" | "fatal" => slog::Level::Critical,
            other => {
                s.fail(Source::err(
                    "LOG_LEVEL",
                    format!("got {other:?}, want trace, debug, info, warn, error or critical"),
                ));
                slog::Level::Info
            }
        };
        let log_format = match s
            .string("LOG_FORMAT", if prod { "json" } else { "pretty" })
            .to_ascii_lowercase()
            .as_str()
        {
            "json" => LogFormat::Json,
            "pretty" | "text" => LogFormat::Pretty,
            other => {
                s.fail(Source::err(
                    "LOG_FORMAT",
                    format!("got {other:?}, want json or pretty"),
                ));
                LogFormat::Json
            }
        };

        let (join_token_secret, join_token_secret_generated) = match s.raw("JOIN_TOKEN_SECRET") {
            Some(v) if v.len() >= 32 => (v.as_bytes().to_vec(), false),
            Some(v) => {
                s.fail(Source::err(
                    "JOIN_TOKEN_SECRET",
                    format!(
                        "is {} bytes long, want at least 32 (e.g. `openssl rand -base64 48`)",
                        v.len()
                    ),
                ));
                (Vec::new(), false)
            }
            None if prod => {
                s.fail(Source::err(
                    "JOIN_TOKEN_SECRET",
                    "is required in production: set at least 32 random bytes (e.g. `openssl rand -base64 48`)".into(),
                ));
                (Vec::new(), false)
            }
            None => {
                let mut buf = [0u8; 32];
                getrandom::fill(&mut buf).expect("the operating system's random source failed");
                let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
                (hex.into_bytes(), true)
            }
        };
        let join_token_secret_previous = match s.raw("JOIN_TOKEN_SECRET_PREVIOUS") {
            Some(v) if v.len() < 32 => {
                s.fail(Source::err(
                    "JOIN_TOKEN_SECRET_PREVIOUS",
                    format!("is {} bytes long, want at least 32", v.len()),
                ));
                None
            }
            v => v.map(|v| v.as_bytes().to_vec()),
        };
        let cluster_secret = match s.raw("CLUSTER_SECRET") {
            Some(v) if v.len() < 32 => {
                s.fail(Source::err(
                    "CLUSTER_SECRET",
                    format!("is {} bytes long, want at least 32", v.len()),
                ));
                None
            }
            v => v.map(|v| v.as_bytes().to_vec()),
        };

        let join_token_max_ttl_secs = s.num("JOIN_TOKEN_MAX_TTL_SECS", 3600u64, 1, 86_400 * 30);
        let join_token_ttl_secs = s.num(
            "JOIN_TOKEN_TTL_SECS",
            600u64.min(join_token_max_ttl_secs),
            1,
            u64::MAX,
        );
        if join_token_ttl_secs > join_token_max_ttl_secs {
            s.fail(Source::err(
                "JOIN_TOKEN_TTL_SECS",
                format!("got {join_token_ttl_secs}, want at most JOIN_TOKEN_MAX_TTL_SECS ({join_token_max_ttl_secs})"),
            ));
        }

        let ws_ping_interval_ms = s.num("WS_PING_INTERVAL_MS", 30_000u64, 10, 3_600_000);
        let ws_ping_timeout_ms = s.num("WS_PING_TIMEOUT_MS", 10_000u64, 10, 3_600_000);
        let health_memory_warn_mb = s.num("HEALTH_MEMORY_WARN_MB", 1024u64, 1, u64::MAX);
        let health_memory_fail_mb = s.num("HEALTH_MEMORY_FAIL_MB", 4096u64, 1, u64::MAX);
        if health_memory_fail_mb < health_memory_warn_mb {
            s.fail(Source::err(
                "HEALTH_MEMORY_FAIL_MB",
                format!("got {health_memory_fail_mb}, want at least HEALTH_MEMORY_WARN_MB ({health_memory_warn_mb})"),
            ));
        }
        let max_message_bytes = s.num("MAX_MESSAGE_BYTES", 65_536usize, 1, 16 * 1024 * 1024);
        let max_bytes_per_10s = s.num("MAX_BYTES_PER_10S", 1_048_576u64, 1, u64::MAX);
        if max_bytes_per_10s < max_message_bytes as u64 {
            s.fail(Source::err(
                "MAX_BYTES_PER_10S",
                format!(
                    "got {max_bytes_per_10s}, want at least MAX_MESSAGE_BYTES ({max_message_bytes}), \
                     or a message of the maximum size could never be sent"
                ),
            ));
        }
        let slow_consumer_buffer_threshold = s.num(
            "SLOW_CONSUMER_BUFFER_THRESHOLD",
            1_048_576usize,
            1024,
            usize::MAX,
        );
        if slow_consumer_buffer_threshold < max_message_bytes + 4096 {
            s.fail(Source::err(
                "SLOW_CONSUMER_BUFFER_THRESHOLD",
                format!(
                    "got {slow_consumer_buffer_threshold}, want at least MAX_MESSAGE_BYTES + 4096 ({}), \
                     or one message of the maximum size would close every recipient",
                    max_message_bytes + 4096
                ),
            ));
        }
        let redis_url = s.opt_string("REDIS_URL");
        let redis_cluster = s.bool("REDIS_CLUSTER", false);
        if let Some(url) = &redis_url {
            // Parsing only: nothing connects before the settings are whole.
            let urls: Vec<&str> = if redis_cluster {
                url.split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .collect()
            } else {
                vec![url.as_str()]
            };
            if urls.is_empty() || urls.iter().any(|u| redis::Client::open(*u).is_err()) {
                s.fail(Source::err(
                    "REDIS_URL",
                    if redis_cluster {
                        "is not a list of Redis URLs; with REDIS_CLUSTER=true want the seed \
                         nodes as redis://host:port,redis://host:port,..."
                    } else {
                        "is not a Redis URL; want redis://[user:password@]host[:port][/db]"
                    }
                    .into(),
                ));
            }
        }
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);

        let cors_allowed_origins = s
            .string("CORS_ALLOWED_ORIGINS", "")
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect::<Vec<_>>();
        if prod && cors_allowed_origins.iter().any(|o| o == "*") {
            s.fail(Source::err(
                "CORS_ALLOWED_ORIGINS",
                "contains \"*\"; production wants an explicit list of origins".into(),
            ));
        }

        let settings = Settings {
            app_env,
            host: s.string("HOST", "0.0.0.0"),
            port: s.num("PORT", 8080u16, 0, u16::MAX),
            workers: s.num("WORKERS", cpus, 1, 1024),
            log_level,
            log_format,
            trust_proxy: s.bool("TRUST_PROXY", false),
            redis_url,
            redis_cluster,
            redis_max_retries_per_request: s.num("REDIS_MAX_RETRIES_PER_REQUEST", 3u32, 0, 1000),
            redis_enable_ready_check: s.bool("REDIS_ENABLE_READY_CHECK", true),
            redis_connect_timeout_ms: s.num("REDIS_CONNECT_TIMEOUT", 10_000u64, 1, 600_000),
            redis_command_timeout_ms: s.num("REDIS_COMMAND_TIMEOUT_MS", 2_000u64, 10, 600_000),
            redis_reconnect_max_ms: s.num("REDIS_RECONNECT_MAX_MS", 5_000u64, 10, 600_000),
            redis_pool_size: s.num("REDIS_POOL_SIZE", 16usize, 1, 1024),
            redis_receive_buffer_bytes: s.num(
                "REDIS_RECEIVE_BUFFER_BYTES",
                16 * 1024 * 1024usize,
                max_message_bytes + 4096,
                usize::MAX,
            ),
            redis_publish_buffer_bytes: s.num(
                "REDIS_PUBLISH_BUFFER_BYTES",
                64 * 1024 * 1024usize,
                max_message_bytes + 4096,
                usize::MAX,
            ),
            cluster_secret_derived: cluster_secret.is_none(),
            cluster_secret: cluster_secret
                .unwrap_or_else(|| derive_cluster_secret(&join_token_secret)),
            join_token_secret,
            join_token_secret_generated,
            join_token_secret_previous,
            join_token_max_ttl_secs,
            join_token_leeway_secs: s.num("JOIN_TOKEN_LEEWAY_SECS", 5u64, 0, 3600),
            join_token_ttl_secs,
            feature_health_endpoint: s.bool("FEATURE_HEALTH_ENDPOINT", true),
            feature_metrics_endpoint: s.bool("FEATURE_METRICS_ENDPOINT", true),
            feature_readiness_endpoint: s.bool("FEATURE_READINESS_ENDPOINT", true),
            feature_graceful_shutdown: s.bool("FEATURE_GRACEFUL_SHUTDOWN", true),
            feature_cors: s.bool("FEATURE_CORS", true),
            feature_security_headers: s.bool("FEATURE_SECURITY_HEADERS", true),
            feature_request_id: s.bool("FEATURE_REQUEST_ID", true),
            feature_detailed_errors: s.bool("FEATURE_DETAILED_ERRORS", !prod),
            feature_ip_tracking: s.bool("FEATURE_IP_TRACKING", false),
            feature_token_replay_protection: s.bool("FEATURE_TOKEN_REPLAY_PROTECTION", true),
            feature_slow_consumer_protection: s.bool("FEATURE_SLOW_CONSUMER_PROTECTION", true),
            feature_auto_room_cleanup: s.bool("FEATURE_AUTO_ROOM_CLEANUP", true),
            feature_room_api: s.bool("FEATURE_ROOM_API", true),
            feature_echo_endpoint: s.bool("FEATURE_ECHO_ENDPOINT", false),
            feature_web_client: s.bool("FEATURE_WEB_CLIENT", !prod),
            max_conns_per_ip: s.num("MAX_CONNS_PER_IP", 50usize, 1, usize::MAX),
            max_total_connections: s.num("MAX_TOTAL_CONNECTIONS", 10_000usize, 1, usize::MAX),
            max_pending_connections: s.num("MAX_PENDING_CONNECTIONS", 1_000usize, 1, 1_000_000),
            max_room_creates_per_ip_per_min: s.num(
                "MAX_ROOM_CREATES_PER_IP_PER_MIN",
                10u64,
                1,
                u64::MAX,
            ),
            max_token_mints_per_ip_per_min: s.num(
                "MAX_TOKEN_MINTS_PER_IP_PER_MIN",
                60u64,
                1,
                u64::MAX,
            ),
            http_probe_limit_per_min: s.num("HTTP_PROBE_LIMIT_PER_MIN", 100u64, 1, u64::MAX),
            max_msgs_per_10s: s.num("MAX_MSGS_PER_10S", 100u64, 1, u64::MAX),
            max_bytes_per_10s,
            slow_consumer_buffer_threshold,
            max_room_members: s.num("MAX_ROOM_MEMBERS", 50usize, 1, usize::MAX),
            max_message_bytes,
            csp_directives: s.string("CSP_DIRECTIVES", DEFAULT_CSP),
            hsts_max_age: s.num("HSTS_MAX_AGE", 31_536_000u64, 0, u64::MAX),
            hsts_include_subdomains: s.bool("HSTS_INCLUDE_SUBDOMAINS", true),
            hsts_preload: s.bool("HSTS_PRELOAD", false),
            cors_allowed_origins,
            cors_allow_credentials: s.bool("CORS_ALLOW_CREDENTIALS", false),
            metrics_export_prometheus: s.bool("METRICS_EXPORT_PROMETHEUS", true),
            metrics_collection_interval_ms: s.num(
                "METRICS_COLLECTION_INTERVAL_MS",
                10_000u64,
                100,
                3_600_000,
            ),
            log_health_check_failures: s.bool("LOG_HEALTH_CHECK_FAILURES", true),
            health_memory_warn_mb,
            health_memory_fail_mb,
            ws_ping_interval_ms,
            ws_ping_timeout_ms,
            ws_close_timeout_ms: s.num("WS_CLOSE_TIMEOUT_MS", 2_000u64, 10, 60_000),
            http_keep_alive_timeout_ms: s.num("HTTP_KEEP_ALIVE_TIMEOUT_MS", 5_000u64, 0, 3_600_000),
            join_timeout_ms: s.num("JOIN_TIMEOUT_MS", 10_000u64, 10, 3_600_000),
            tcp_user_timeout_ms: s.num("TCP_USER_TIMEOUT_MS", 30_000u64, 0, 3_600_000),
            tcp_notsent_lowat_bytes: s.num("TCP_NOTSENT_LOWAT_BYTES", 131_072u32, 0, 1 << 30),
            tcp_receive_buffer_bytes: s.num("TCP_RECEIVE_BUFFER_BYTES", 131_072usize, 0, 1 << 30),
            room_idle_ttl_secs: s.num("ROOM_IDLE_TTL_SECS", 3600u64, 1, 86_400 * 365),
            presence_ttl_ms: s.num("PRESENCE_TTL_MS", 15_000u64, 100, 3_600_000),
            shutdown_timeout_ms: s.num("SHUTDOWN_TIMEOUT_MS", 25_000u64, 0, 3_600_000),
            drain_spread_ms: s.num("DRAIN_SPREAD_MS", 10_000u64, 0, 3_600_000),
            drain_min_batch: s.num("DRAIN_MIN_BATCH", 50usize, 1, usize::MAX),
            room_arbiters: s.num("ROOM_ARBITERS", 0, 0, 256),
            colocate_max_members: s.num("COLOCATE_MAX_MEMBERS", 32usize, 0, 1_000_000),
            service_version: s.string("SERVICE_VERSION", env!("CARGO_PKG_VERSION")),
            deployment_env: s.string("DEPLOYMENT_ENV", app_env.as_str()),
            instance_id: s.opt_string("INSTANCE_ID").unwrap_or_else(new_instance_id),
        };
        let errors = s.errors.into_inner();
        if errors.is_empty() {
            Ok(settings)
        } else {
            Err(errors)
        }
    }

    /// How long a drain spreads its closes: `DRAIN_SPREAD_MS`, but never so
    /// long that the last closes, the cluster flush and the exit would not
    /// fit in `SHUTDOWN_TIMEOUT_MS` (3 s are kept for them).
    pub fn drain_window(&self) -> std::time::Duration {
        let cap = self.shutdown_timeout_ms.saturating_sub(DRAIN_RESERVE_MS);
        std::time::Duration::from_millis(self.drain_spread_ms.min(cap))
    }

    /// Every setting by its variable name, as serving would use it, secrets
    /// redacted (a password in `REDIS_URL` included): what `check-config`
    /// prints.
    pub fn effective(&self) -> Vec<(&'static str, String)> {
        fn secret(set: bool) -> String {
            if set { "[redacted]" } else { "unset" }.to_owned()
        }
        let b = |v: bool| v.to_string();
        let n = |v: u64| v.to_string();
        let u = |v: usize| v.to_string();
        vec![
            ("APP_ENV", self.app_env.as_str().to_owned()),
            ("HOST", self.host.clone()),
            ("PORT", self.port.to_string()),
            ("WORKERS", u(self.workers)),
            ("LOG_LEVEL", self.log_level.as_str().to_ascii_lowercase()),
            (
                "LOG_FORMAT",
                match self.log_format {
                    LogFormat::Json => "json",
                    LogFormat::Pretty => "pretty",
                }
                .to_owned(),
            ),
            ("TRUST_PROXY", b(self.trust_proxy)),
            (
                "JOIN_TOKEN_SECRET",
                if self.join_token_secret_generated {
                    "[generated for this process]".to_owned()
                } else {
                    secret(true)
                },
            ),
            (
                "JOIN_TOKEN_SECRET_PREVIOUS",
                secret(self.join_token_secret_previous.is_some()),
            ),
            ("JOIN_TOKEN_MAX_TTL_SECS", n(self.join_token_max_ttl_secs)),
            ("JOIN_TOKEN_LEEWAY_SECS", n(self.join_token_leeway_secs)),
            ("JOIN_TOKEN_TTL_SECS", n(self.join_token_ttl_secs)),
            ("FEATURE_HEALTH_ENDPOINT", b(self.feature_health_endpoint)),
            ("FEATURE_METRICS_ENDPOINT", b(self.feature_metrics_endpoint)),
            (
                "FEATURE_READINESS_ENDPOINT",
                b(self.feature_readiness_endpoint),
            ),
            (
                "FEATURE_GRACEFUL_SHUTDOWN",
                b(self.feature_graceful_shutdown),
            ),
            ("FEATURE_CORS", b(self.feature_cors)),
            ("FEATURE_SECURITY_HEADERS", b(self.feature_security_headers)),
            ("FEATURE_REQUEST_ID", b(self.feature_request_id)),
            ("FEATURE_DETAILED_ERRORS", b(self.feature_detailed_errors)),
            ("FEATURE_IP_TRACKING", b(self.feature_ip_tracking)),
            (
                "FEATURE_TOKEN_REPLAY_PROTECTION",
                b(self.feature_token_replay_protection),
            ),
            (
                "FEATURE_SLOW_CONSUMER_PROTECTION",
                b(self.feature_slow_consumer_protection),
            ),
            (
                "FEATURE_AUTO_ROOM_CLEANUP",
                b(self.feature_auto_room_cleanup),
            ),
            ("FEATURE_ROOM_API", b(self.feature_room_api)),
            ("FEATURE_ECHO_ENDPOINT", b(self.feature_echo_endpoint)),
            ("FEATURE_WEB_CLIENT", b(self.feature_web_client)),
            ("MAX_CONNS_PER_IP", u(self.max_conns_per_ip)),
            ("MAX_TOTAL_CONNECTIONS", u(self.max_total_connections)),
            ("MAX_PENDING_CONNECTIONS", u(self.max_pending_connections)),
            (
                "MAX_ROOM_CREATES_PER_IP_PER_MIN",
                n(self.max_room_creates_per_ip_per_min),
            ),
            (
                "MAX_TOKEN_MINTS_PER_IP_PER_MIN",
                n(self.max_token_mints_per_ip_per_min),
            ),
            ("HTTP_PROBE_LIMIT_PER_MIN", n(self.http_probe_limit_per_min)),
            ("MAX_MSGS_PER_10S", n(self.max_msgs_per_10s)),
            ("MAX_BYTES_PER_10S", n(self.max_bytes_per_10s)),
            (
                "SLOW_CONSUMER_BUFFER_THRESHOLD",
                u(self.slow_consumer_buffer_threshold),
            ),
            ("MAX_ROOM_MEMBERS", u(self.max_room_members)),
            ("MAX_MESSAGE_BYTES", u(self.max_message_bytes)),
            ("CSP_DIRECTIVES", self.csp_directives.clone()),
            ("HSTS_MAX_AGE", n(self.hsts_max_age)),
            ("HSTS_INCLUDE_SUBDOMAINS", b(self.hsts_include_subdomains)),
            ("HSTS_PRELOAD", b(self.hsts_preload)),
            ("CORS_ALLOWED_ORIGINS", self.cors_allowed_origins.join(",")),
            ("CORS_ALLOW_CREDENTIALS", b(self.cors_allow_credentials)),
            (
                "METRICS_EXPORT_PROMETHEUS",
                b(self.metrics_export_prometheus),
            ),
            (
                "METRICS_COLLECTION_INTERVAL_MS",
                n(self.metrics_collection_interval_ms),
            ),
            (
                "LOG_HEALTH_CHECK_FAILURES",
                b(self.log_health_check_failures),
            ),
            ("HEALTH_MEMORY_WARN_MB", n(self.health_memory_warn_mb)),
            ("HEALTH_MEMORY_FAIL_MB", n(self.health_memory_fail_mb)),
            ("WS_PING_INTERVAL_MS", n(self.ws_ping_interval_ms)),
            ("WS_PING_TIMEOUT_MS", n(self.ws_ping_timeout_ms)),
            ("WS_CLOSE_TIMEOUT_MS", n(self.ws_close_timeout_ms)),
            (
                "HTTP_KEEP_ALIVE_TIMEOUT_MS",
                n(self.http_keep_alive_timeout_ms),
            ),
            ("JOIN_TIMEOUT_MS", n(self.join_timeout_ms)),
            ("TCP_USER_TIMEOUT_MS", n(self.tcp_user_timeout_ms)),
            (
                "TCP_NOTSENT_LOWAT_BYTES",
                self.tcp_notsent_lowat_bytes.to_string(),
            ),
            ("TCP_RECEIVE_BUFFER_BYTES", u(self.tcp_receive_buffer_bytes)),
            ("ROOM_IDLE_TTL_SECS", n(self.room_idle_ttl_secs)),
            ("SHUTDOWN_TIMEOUT_MS", n(self.shutdown_timeout_ms)),
            ("DRAIN_SPREAD_MS", n(self.drain_spread_ms)),
            ("DRAIN_MIN_BATCH", u(self.drain_min_batch)),
            ("ROOM_ARBITERS", u(self.room_arbiters)),
            ("COLOCATE_MAX_MEMBERS", u(self.colocate_max_members)),
            (
                "REDIS_URL",
                self.redis_url
                    .as_deref()
                    .map(redact_redis_urls)
                    .unwrap_or_else(|| "unset".to_owned()),
            ),
            ("REDIS_CLUSTER", b(self.redis_cluster)),
            (
                "CLUSTER_SECRET",
                if self.cluster_secret_derived {
                    "[derived from JOIN_TOKEN_SECRET]".to_owned()
                } else {
                    secret(true)
                },
            ),
            ("PRESENCE_TTL_MS", n(self.presence_ttl_ms)),
            ("REDIS_CONNECT_TIMEOUT", n(self.redis_connect_timeout_ms)),
            ("REDIS_COMMAND_TIMEOUT_MS", n(self.redis_command_timeout_ms)),
            (
                "REDIS_MAX_RETRIES_PER_REQUEST",
                self.redis_max_retries_per_request.to_string(),
            ),
            ("REDIS_ENABLE_READY_CHECK", b(self.redis_enable_ready_check)),
            ("REDIS_RECONNECT_MAX_MS", n(self.redis_reconnect_max_ms)),
            ("REDIS_POOL_SIZE", u(self.redis_pool_size)),
            (
                "REDIS_RECEIVE_BUFFER_BYTES",
                u(self.redis_receive_buffer_bytes),
            ),
            (
                "REDIS_PUBLISH_BUFFER_BYTES",
                u(self.redis_publish_buffer_bytes),
            ),
            ("SERVICE_VERSION", self.service_version.clone()),
            ("DEPLOYMENT_ENV", self.deployment_env.clone()),
            ("INSTANCE_ID", self.instance_id.clone()),
        ]
    }

    /// What an operator should know about settings that are valid but
    /// probably not what was meant; logged at start-up and printed by
    /// `check-config`.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.join_token_secret_generated {
            out.push(
                "JOIN_TOKEN_SECRET is not set: a random secret is used for this process only; \
                 tokens minted elsewhere will not verify (set it in production)"
                    .to_owned(),
            );
        }
        if self.app_env == AppEnv::Production && self.feature_detailed_errors {
            out.push(
                "FEATURE_DETAILED_ERRORS is on in production: error bodies say which check \
                 failed and which setting governs it"
                    .to_owned(),
            );
        }
        if self.feature_graceful_shutdown
            && u128::from(self.drain_spread_ms) > self.drain_window().as_millis()
        {
            out.push(format!(
                "DRAIN_SPREAD_MS ({}) does not fit in SHUTDOWN_TIMEOUT_MS ({}) with {} ms to spare: \
                 closes are spread over {} ms (raise SHUTDOWN_TIMEOUT_MS or lower DRAIN_SPREAD_MS)",
                self.drain_spread_ms,
                self.shutdown_timeout_ms,
                DRAIN_RESERVE_MS,
                self.drain_window().as_millis()
            ));
        }
        out
    }

    /// The main settings for the start-up log: a selection of
    /// [`Settings::effective`] (so secrets are redacted in one place), and
    /// the mode the instance runs in.
    pub fn summary(&self) -> Vec<(&'static str, String)> {
        const SHOWN: [&str; 22] = [
            "APP_ENV",
            "DEPLOYMENT_ENV",
            "HOST",
            "PORT",
            "WORKERS",
            "TRUST_PROXY",
            "JOIN_TOKEN_SECRET",
            "JOIN_TOKEN_SECRET_PREVIOUS",
            "FEATURE_IP_TRACKING",
            "FEATURE_TOKEN_REPLAY_PROTECTION",
            "FEATURE_ROOM_API",
            "MAX_CONNS_PER_IP",
            "MAX_TOTAL_CONNECTIONS",
            "MAX_PENDING_CONNECTIONS",
            "MAX_MSGS_PER_10S",
            "MAX_BYTES_PER_10S",
            "SLOW_CONSUMER_BUFFER_THRESHOLD",
            "MAX_ROOM_MEMBERS",
            "MAX_MESSAGE_BYTES",
            "JOIN_TIMEOUT_MS",
            "CLUSTER_SECRET",
            "PRESENCE_TTL_MS",
        ];
        let mode = match (&self.redis_url, self.redis_cluster) {
            (None, _) => "standalone",
            (Some(_), false) => "cluster",
            (Some(_), true) => "cluster (Redis Cluster)",
        };
        let mut out = vec![("MODE", mode.to_owned())];
        out.extend(
            self.effective()
                .into_iter()
                .filter(|(name, _)| SHOWN.contains(name)),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn defaults_need_nothing_in_development() {
        let s = Settings::from_pairs([]).unwrap();
        assert_eq!(s.app_env, AppEnv::Development);
        assert!(s.join_token_secret_generated);
        assert!(s.join_token_secret.len() >= 32);
        assert_eq!(s.port, 8080);
        assert_eq!(s.max_message_bytes, 65_536);
        assert_eq!(s.join_timeout_ms, 10_000);
        assert!(!s.feature_echo_endpoint);
    }

    #[test]
    fn production_requires_a_long_enough_secret() {
        let e = Settings::from_pairs([("NODE_ENV", "production")]).unwrap_err();
        assert_eq!(e.var, "JOIN_TOKEN_SECRET");
        let e = Settings::from_pairs([("APP_ENV", "production"), ("JOIN_TOKEN_SECRET", "short")])
            .unwrap_err();
        assert!(e.to_string().contains("at least 32"), "{e}");
        let s = Settings::from_pairs([("APP_ENV", "production"), ("JOIN_TOKEN_SECRET", SECRET)])
            .unwrap();
        assert_eq!(s.app_env, AppEnv::Production);
        assert_eq!(s.log_format, LogFormat::Json);
    }

    #[test]
    fn a_bad_number_names_the_variable_what_it_got_and_what_it_wants() {
        let e = Settings::from_pairs([("MAX_CONNS_PER_IP", "lots")]).unwrap_err();
        assert_eq!(e.var, "MAX_CONNS_PER_IP");
        assert!(
            e.problem.contains("\"lots\"") && e.problem.contains("whole number"),
            "{e}"
        );
        let e = Settings::from_pairs([("PORT", "70000")]).unwrap_err();
        assert_eq!(e.var, "PORT");
    }

    #[test]
    fn booleans_accept_the_usual_spellings_and_refuse_others() {
        let s =
            Settings::from_pairs([("FEATURE_ROOM_API", "false"), ("TRUST_PROXY", "1")]).unwrap();
        assert!(!s.feature_room_api && s.trust_proxy);
        let e = Settings::from_pairs([("FEATURE_CORS", "maybe")]).unwrap_err();
        assert_eq!(e.var, "FEATURE_CORS");
    }

    #[test]
    fn origins_are_a_comma_separated_list() {
        let s = Settings::from_pairs([(
            "CORS_ALLOWED_ORIGINS",
            "https://a.example, https://b.example/",
        )])
        .unwrap();
        assert_eq!(
            s.cors_allowed_origins,
            ["https://a.example", "https://b.example"]
        );
    }

    #[test]
    fn a_slow_consumer_threshold_below_one_message_is_refused() {
        let e = Settings::from_pairs([("MAX_MESSAGE_BYTES", "2000000")]).unwrap_err();
        assert_eq!(e.var, "MAX_BYTES_PER_10S");
        let e = Settings::from_pairs([
            ("MAX_MESSAGE_BYTES", "2000000"),
            ("MAX_BYTES_PER_10S", "9000000"),
        ])
        .unwrap_err();
        assert_eq!(e.var, "SLOW_CONSUMER_BUFFER_THRESHOLD");
    }

    #[test]
    fn a_byte_budget_below_the_message_size_is_refused() {
        let e = Settings::from_pairs([("MAX_BYTES_PER_10S", "1000")]).unwrap_err();
        assert_eq!(e.var, "MAX_BYTES_PER_10S");
        assert!(Settings::from_pairs([
            ("MAX_BYTES_PER_10S", "1000"),
            ("MAX_MESSAGE_BYTES", "1000")
        ])
        .is_ok());
    }

    #[test]
    fn files_are_layered_under_the_environment() {
        let dir = std::env::temp_dir().join(format!("blindrelay-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("default.toml"),
            "max_room_members = 7\nmax_msgs_per_10s = 11\ncors_allowed_origins = \"https://a.example\"\n",
        )
        .unwrap();
        std::fs::write(dir.join("production.toml"), "max_msgs_per_10s = 12\n").unwrap();
        let env: HashMap<String, String> = [
            ("APP_ENV", "prod"),
            ("JOIN_TOKEN_SECRET", SECRET),
            ("MAX_ROOM_MEMBERS", "9"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let s = Settings::load_from(dir.to_str().unwrap(), env).unwrap();
        assert_eq!(s.max_room_members, 9, "environment wins");
        assert_eq!(
            s.max_msgs_per_10s, 12,
            "the environment's file wins over default.toml"
        );
        assert_eq!(s.cors_allowed_origins, ["https://a.example"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_redis_url_must_parse_and_the_cluster_secret_defaults_to_a_derived_key() {
        let e = Settings::from_pairs([("REDIS_URL", "localhost:6379")]).unwrap_err();
        assert_eq!(e.var, "REDIS_URL");
        assert!(e.problem.contains("redis://"), "{e}");
        let s = Settings::from_pairs([
            ("REDIS_URL", "redis://127.0.0.1:6379/0"),
            ("JOIN_TOKEN_SECRET", SECRET),
        ])
        .unwrap();
        assert!(s.cluster_secret_derived);
        assert_ne!(
            s.cluster_secret,
            SECRET.as_bytes(),
            "never the token secret itself"
        );
        let again = Settings::from_pairs([("JOIN_TOKEN_SECRET", SECRET)]).unwrap();
        assert_eq!(
            s.cluster_secret, again.cluster_secret,
            "the same on every instance"
        );
        let e = Settings::from_pairs([("CLUSTER_SECRET", "short")]).unwrap_err();
        assert_eq!(e.var, "CLUSTER_SECRET");
        let s = Settings::from_pairs([
            ("REDIS_CLUSTER", "true"),
            (
                "REDIS_URL",
                "redis://127.0.0.1:7000, redis://127.0.0.1:7001",
            ),
        ])
        .unwrap();
        assert!(s.redis_cluster);
        let e =
            Settings::from_pairs([("REDIS_CLUSTER", "true"), ("REDIS_URL", "a,b")]).unwrap_err();
        assert_eq!(e.var, "REDIS_URL");
        let e = Settings::from_pairs([("REDIS_PUBLISH_BUFFER_BYTES", "1000")]).unwrap_err();
        assert_eq!(e.var, "REDIS_PUBLISH_BUFFER_BYTES");
    }

    #[test]
    fn unknown_environment_names_are_refused() {
        assert_eq!(
            Settings::from_pairs([("APP_ENV", "staging")])
                .unwrap_err()
                .var,
            "APP_ENV"
        );
    }

    #[test]
    fn every_problem_is_reported_not_only_the_first() {
        let vars: HashMap<String, String> = [
            ("port", "x"),
            ("feature_cors", "maybe"),
            ("max_bytes_per_10s", "10"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let all = Settings::from_vars(&vars).unwrap_err();
        let mut names: Vec<&str> = all.iter().map(|e| e.var.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["FEATURE_CORS", "MAX_BYTES_PER_10S", "PORT"]);
        let text = SettingsErrors(all).to_string();
        assert_eq!(text.lines().count(), 3, "{text}");
    }

    #[test]
    fn a_password_in_the_redis_url_is_redacted() {
        assert_eq!(
            redact_redis_urls("redis://u:pw@h:1/0"),
            "redis://u:[redacted]@h:1/0"
        );
        assert_eq!(
            redact_redis_urls("redis://:pw@a:1, redis://b:2"),
            "redis://:[redacted]@a:1,redis://b:2"
        );
        assert_eq!(redact_redis_urls("redis://h:6379"), "redis://h:6379");
    }

    #[test]
    fn the_drain_window_leaves_room_for_the_exit() {
        let s = Settings::from_pairs([]).unwrap();
        assert_eq!(s.drain_window().as_millis(), 10_000);
        assert!(s.warnings().iter().all(|w| !w.contains("DRAIN_SPREAD_MS")));
        let s = Settings::from_pairs([("SHUTDOWN_TIMEOUT_MS", "5000")]).unwrap();
        assert_eq!(s.drain_window().as_millis(), 2_000);
        assert!(s.warnings().iter().any(|w| w.contains("DRAIN_SPREAD_MS")));
        let s = Settings::from_pairs([("SHUTDOWN_TIMEOUT_MS", "1000")]).unwrap();
        assert!(s.drain_window().is_zero());
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let s = Settings::from_pairs([("JOIN_TOKEN_SECRET", SECRET)]).unwrap();
        assert!(!format!("{s:?}").contains(SECRET));
        assert!(!s.summary().iter().any(|(_, v)| v.contains(SECRET)));
        // Every name the summary selects exists (a misspelt one would vanish).
        assert_eq!(s.summary().len(), 23);
    }
}
