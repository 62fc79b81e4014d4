//! Structured logs: slog with JSON (`LOG_FORMAT=json`) or human-readable
//! (`pretty`) output through an async drain. What may be logged is decided
//! at each call site; see PROTOCOL.md section 7: never message data, tokens,
//! `jti`, room or member ids, and client IPs only with
//! `FEATURE_IP_TRACKING=true`.

use std::io::Write;

use slog::{o, Drain, Logger};

use crate::settings::{LogFormat, Settings};

/// The logger the binary uses: stdout, in the configured format and level.
pub fn build(settings: &Settings) -> Logger {
    match settings.log_format {
        LogFormat::Json => json_logger(std::io::stdout(), settings),
        LogFormat::Pretty => {
            let decorator = slog_term::PlainSyncDecorator::new(std::io::stdout());
            let drain = slog_term::FullFormat::new(decorator).build().fuse();
            finish(drain, settings)
        }
    }
}

/// A JSON logger writing to `out` (tests pass a buffer to read the lines).
pub fn json_logger<W: Write + Send + 'static>(out: W, settings: &Settings) -> Logger {
    let drain = slog_json::Json::new(out)
        .set_newlines(true)
        .add_default_keys()
        .build()
        .fuse();
    finish(drain, settings)
}

fn finish<D>(drain: D, settings: &Settings) -> Logger
where
    D: Drain<Ok = (), Err = slog::Never> + Send + 'static,
{
    let drain = slog_async::Async::new(drain)
        .chan_size(4096)
        .overflow_strategy(slog_async::OverflowStrategy::DropAndReport)
        .build()
        .fuse();
    let drain = drain.filter_level(settings.log_level).fuse();
    Logger::root(
        drain,
        o!("service" => "blindrelay", "instance" => settings.instance_id.clone()),
    )
}

/// A logger that drops everything.
pub fn discard() -> Logger {
    Logger::root(slog::Discard, o!())
}
