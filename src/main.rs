//! The `blindrelay` binary: reads settings, builds the logger, serves.
#![forbid(unsafe_code)]

use blindrelay::{logging, Application, Settings};

/// The fan-out allocates on room threads and frees on HTTP worker threads;
/// glibc's allocator serialises that on arena locks (a quarter of the CPU
/// time at load in profiles), mimalloc's per-thread free lists do not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("blindrelay: configuration error: {e:#}");
            std::process::exit(2);
        }
    };
    let log = logging::build(&settings);
    let mut summary = Vec::new();
    for (k, v) in settings.summary() {
        summary.push(format!("{k}={v}"));
    }
    slog::info!(log, "starting"; "version" => &settings.service_version, "config" => summary.join(" "));
    if settings.join_token_secret_generated {
        slog::warn!(
            log,
            "JOIN_TOKEN_SECRET is not set: using a random secret for this process only; \
                          tokens minted elsewhere will not verify (set it in production)"
        );
    }
    let app = match Application::build_with_logger(settings, log.clone()).await {
        Ok(app) => app,
        Err(e) => {
            slog::crit!(log, "start-up failed"; "error" => format!("{e:#}"));
            // Give the async drain a moment to write the line.
            std::thread::sleep(std::time::Duration::from_millis(100));
            eprintln!("blindrelay: {e:#}");
            std::process::exit(1);
        }
    };
    app.run_until_stopped().await?;
    slog::info!(log, "exited cleanly");
    std::thread::sleep(std::time::Duration::from_millis(50));
    Ok(())
}
