//! The command line: serving (no arguments), `--help`, `--version`, and the
//! operator subcommands `healthcheck` (for Docker's `HEALTHCHECK`, with no
//! curl in the image) and `check-config` (for CI and init containers).
//! Parsing is pure and tested here; the binary acts on the result.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::settings::Settings;

/// What the binary was asked to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Serve until SIGTERM/SIGINT.
    Serve,
    Help,
    Version,
    /// Probe the local instance; `path` is `/live` unless `--ready`.
    Healthcheck {
        path: &'static str,
        timeout: Duration,
    },
    /// Print the effective settings, or every error in them.
    CheckConfig,
}

/// The usage text printed by `--help` and after a usage error.
pub const USAGE: &str = "\
Usage: blindrelay [COMMAND]

A relay for end-to-end-encrypted, ephemeral chat. With no command it serves,
configured by environment variables and config/*.toml (docs/configuration.md).

Commands:
  (none)         serve until SIGTERM or SIGINT, then drain and exit 0
  healthcheck    probe /live of the instance on this machine (HOST, PORT);
                 exit 0 when it answers 200, 1 otherwise
                 --ready          probe /ready instead (0 only when ready)
                 --timeout-ms N   give up after N ms (default 3000)
  check-config   read the configuration exactly as serving would and print
                 the effective settings (secrets redacted) as NAME=value
                 lines; exit 0, or 2 with every error found

Options:
  -h, --help     print this text and exit
  -V, --version  print the version and exit
";

/// A command line that does not parse; the message says what was wrong.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Parses the arguments after the program name.
pub fn parse<I, S>(args: I) -> Result<Command, UsageError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let args: Vec<String> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let Some(first) = args.first() else {
        return Ok(Command::Serve);
    };
    let rest = &args[1..];
    let command = match first.as_str() {
        "-h" | "--help" | "help" => Command::Help,
        "-V" | "--version" | "version" => Command::Version,
        "check-config" => Command::CheckConfig,
        "healthcheck" => return parse_healthcheck(rest),
        other if other.starts_with('-') => {
            return Err(UsageError(format!("unknown option {other:?}")))
        }
        other => return Err(UsageError(format!("unknown command {other:?}"))),
    };
    match rest.first() {
        None => Ok(command),
        Some(extra) => Err(UsageError(format!("unexpected argument {extra:?}"))),
    }
}

fn parse_healthcheck(rest: &[String]) -> Result<Command, UsageError> {
    let mut path = "/live";
    let mut timeout = Duration::from_millis(3000);
    let mut it = rest.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--ready" => path = "/ready",
            "--timeout-ms" => {
                let v = it
                    .next()
                    .ok_or_else(|| UsageError("--timeout-ms needs a value".into()))?;
                let ms: u64 = v
                    .parse()
                    .ok()
                    .filter(|ms| (1..=600_000).contains(ms))
                    .ok_or_else(|| {
                        UsageError(format!(
                            "--timeout-ms: got {v:?}, want a whole number from 1 to 600000"
                        ))
                    })?;
                timeout = Duration::from_millis(ms);
            }
            other => {
                return Err(UsageError(format!(
                    "healthcheck: unexpected argument {other:?}"
                )))
            }
        }
    }
    Ok(Command::Healthcheck { path, timeout })
}

/// The address a local probe connects to: the instance's own `HOST` and
/// `PORT`, loopback when it listens on every address.
pub fn probe_address(settings: &Settings) -> Result<SocketAddr, String> {
    let port = settings.port;
    if port == 0 {
        return Err("PORT is 0 (a random port): there is no fixed port to probe".into());
    }
    let ip = match settings.host.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Ok(IpAddr::V6(a)) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        Ok(ip) => ip,
        Err(_) => {
            return (settings.host.as_str(), port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| format!("HOST {:?} does not resolve", settings.host))
        }
    };
    Ok(SocketAddr::new(ip, port))
}

/// One HTTP/1.1 GET of `path`; the response's status code.
pub fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> Result<u16, String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("setting timeouts: {e}"))?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: blindrelay-healthcheck\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("sending the request to {addr}: {e}"))?;
    // The status line is all that is needed; bodies are small.
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let n = stream
            .read(&mut buf)
            .map_err(|e| format!("reading the answer from {addr}: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("{addr} did not answer HTTP"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_arguments_serve() {
        assert_eq!(parse(Vec::<String>::new()), Ok(Command::Serve));
    }

    #[test]
    fn help_and_version_have_their_usual_spellings() {
        for a in ["-h", "--help", "help"] {
            assert_eq!(parse([a]), Ok(Command::Help));
        }
        for a in ["-V", "--version", "version"] {
            assert_eq!(parse([a]), Ok(Command::Version));
        }
    }

    #[test]
    fn unknown_arguments_are_usage_errors() {
        assert!(parse(["--port", "80"]).unwrap_err().0.contains("--port"));
        assert!(parse(["serve"]).unwrap_err().0.contains("serve"));
        assert!(parse(["check-config", "x"])
            .unwrap_err()
            .0
            .contains("\"x\""));
        assert!(parse(["healthcheck", "--timeout-ms", "0"]).is_err());
        assert!(parse(["healthcheck", "--timeout-ms"]).is_err());
        assert!(parse(["healthcheck", "--live"]).is_err());
    }

    #[test]
    fn healthcheck_probes_live_unless_asked_for_ready() {
        assert_eq!(
            parse(["healthcheck"]),
            Ok(Command::Healthcheck {
                path: "/live",
                timeout: Duration::from_millis(3000)
            })
        );
        assert_eq!(
            parse(["healthcheck", "--timeout-ms", "500", "--ready"]),
            Ok(Command::Healthcheck {
                path: "/ready",
                timeout: Duration::from_millis(500)
            })
        );
    }

    #[test]
    fn a_wildcard_host_is_probed_on_loopback() {
        let s = Settings::from_pairs([("HOST", "0.0.0.0"), ("PORT", "9000")]).unwrap();
        assert_eq!(
            probe_address(&s).unwrap(),
            "127.0.0.1:9000".parse().unwrap()
        );
        let s = Settings::from_pairs([("HOST", "::"), ("PORT", "9000")]).unwrap();
        assert_eq!(probe_address(&s).unwrap(), "[::1]:9000".parse().unwrap());
        let s = Settings::from_pairs([("PORT", "0")]).unwrap();
        assert!(probe_address(&s).is_err());
    }
}
