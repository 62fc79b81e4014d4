//! The `blindrelay` binary: parses the command line, reads settings, builds
//! the logger, serves (or runs an operator subcommand).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use blindrelay::cli::{self, Command};
use blindrelay::{logging, Application, Settings};

/// The fan-out allocates on room threads and frees on HTTP worker threads;
/// glibc's allocator serialises that on arena locks (a quarter of the CPU
/// time at load in profiles), mimalloc's per-thread free lists do not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status of a configuration error (serving and `check-config` alike).
const CONFIG_ERROR: u8 = 2;

fn main() -> ExitCode {
    let command = match cli::parse(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("blindrelay: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    match command {
        Command::Help => {
            print!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("blindrelay {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::CheckConfig => check_config(),
        Command::Healthcheck { path, timeout } => healthcheck(path, timeout),
        Command::Serve => {
            let Some(settings) = load_settings() else {
                return ExitCode::from(CONFIG_ERROR);
            };
            match actix_web::rt::System::new().block_on(serve(settings)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("blindrelay: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Settings as serving reads them; every error printed, one per line.
fn load_settings() -> Option<Settings> {
    match Settings::load() {
        Ok(s) => Some(s),
        Err(e) => {
            for line in format!("{e:#}").lines() {
                eprintln!("blindrelay: configuration error: {line}");
            }
            None
        }
    }
}

fn check_config() -> ExitCode {
    let Some(settings) = load_settings() else {
        return ExitCode::from(CONFIG_ERROR);
    };
    let dir = std::env::var("CONFIG_DIR").unwrap_or_else(|_| "config".to_owned());
    println!(
        "# blindrelay {}: effective settings",
        env!("CARGO_PKG_VERSION")
    );
    println!("# files read (when present): {dir}/default.toml, {dir}/<APP_ENV>.toml; then the environment");
    for (name, value) in settings.effective() {
        println!("{name}={value}");
    }
    for w in settings.warnings() {
        eprintln!("blindrelay: warning: {w}");
    }
    ExitCode::SUCCESS
}

fn healthcheck(path: &str, timeout: std::time::Duration) -> ExitCode {
    let Some(settings) = load_settings() else {
        return ExitCode::FAILURE;
    };
    let outcome = cli::probe_address(&settings).and_then(|a| cli::probe(a, path, timeout));
    match outcome {
        Ok(200) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("blindrelay: healthcheck: {path} answered {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("blindrelay: healthcheck: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let log = logging::build(&settings);
    let mut summary = Vec::new();
    for (k, v) in settings.summary() {
        summary.push(format!("{k}={v}"));
    }
    slog::info!(log, "starting"; "version" => &settings.service_version, "config" => summary.join(" "));
    let app = match Application::build_with_logger(settings, log.clone()).await {
        Ok(app) => app,
        Err(e) => {
            slog::crit!(log, "start-up failed"; "error" => format!("{e:#}"));
            // Give the async drain a moment to write the line.
            std::thread::sleep(std::time::Duration::from_millis(100));
            return Err(e);
        }
    };
    app.run_until_stopped().await?;
    slog::info!(log, "exited cleanly");
    std::thread::sleep(std::time::Duration::from_millis(50));
    Ok(())
}
