//! `lbmkv`: the command-line tool of lbmkv.
//!
//! `lbmkv node` runs one node and drives it with a line protocol on stdin and
//! stdout (see `cli/README.md`); `lbmkv demo` and `lbmkv bench` are the demo
//! and the benchmark driver.

mod bench;
mod certs;
mod demo;
mod escape;
mod node;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use lbmkv::{LogLevel, LogRecord};

const USAGE: &str = "usage: lbmkv <command> [options]

commands:
  node    run a node and drive it with one command per line on stdin
          (lbmkv node --help for its options)
  demo    a 3-node cluster through a netsplit and its heal, narrated
  bench   the benchmark scenarios
  certs   a cluster CA and node certificates for mutual TLS
          (lbmkv certs --help for its options)
  help    this text
  version the version of lbmkv

options of node, demo and bench:
  --log-level L  logs on stderr up to L: off, error, warn, info, debug,
                 trace (default $LBMKV_LOG, else warn)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, rest) = match args.split_first() {
        Some((c, rest)) => (c.as_str(), rest),
        None => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (level, rest) = match log_level(rest) {
        Ok(found) => found,
        Err(msg) => {
            eprintln!("lbmkv: {msg}");
            return ExitCode::from(2);
        }
    };
    let rest = &rest[..];
    init_logging(level);
    // One arm per subcommand; each gets the arguments after its name.
    match command {
        "node" => node::main(rest),
        "demo" => run_async("demo", demo::run()),
        "bench" => run_async("bench", bench::run(rest)),
        "certs" => certs::main(rest),
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        "version" | "-V" | "--version" => {
            println!("lbmkv {}", lbmkv::VERSION);
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("lbmkv: unknown command {other:?}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// The log level (`--log-level L` anywhere after the command, else
/// `$LBMKV_LOG`, else warn) and the other arguments.
fn log_level(args: &[String]) -> Result<(LogLevel, Vec<String>), String> {
    let mut level = None;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let value = if arg == "--log-level" {
            it.next().ok_or("--log-level needs a value")?.clone()
        } else if let Some(v) = arg.strip_prefix("--log-level=") {
            v.to_string()
        } else {
            rest.push(arg.clone());
            continue;
        };
        level = Some(LogLevel::parse(&value).map_err(|e| e.message().to_string())?);
    }
    let level = match level {
        Some(l) => l,
        None => match std::env::var("LBMKV_LOG") {
            Ok(v) if !v.trim().is_empty() => {
                LogLevel::parse(&v).map_err(|e| format!("$LBMKV_LOG: {}", e.message()))?
            }
            _ => LogLevel::Warn,
        },
    };
    Ok((level, rest))
}

/// Logs go to stderr, one line each (stdout carries the node protocol).
fn init_logging(level: LogLevel) {
    let sink: lbmkv::LogSink = Arc::new(|r: &LogRecord<'_>| {
        let line = format!(
            "{} {:>5} {}: {}\n",
            utc_now(),
            r.level.name().to_ascii_uppercase(),
            r.target,
            r.message
        );
        // One write per line, so that lines of several threads do not mix.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    });
    if let Err(e) = lbmkv::set_log_sink(level, Some(sink)) {
        eprintln!("lbmkv: logs are off: {e}");
    }
}

/// The current time in UTC, `2024-05-01T12:34:56.789Z`.
fn utc_now() -> String {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm), 1970-01-01 on.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Runs an async subcommand; an error is printed and gives exit code 1.
fn run_async(name: &str, fut: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    let result = runtime().and_then(|rt| rt.block_on(fut));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbmkv {name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Builds the tokio runtime a subcommand runs on.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("lbmkv")
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_log_level_option_is_taken_out_of_the_arguments() {
        let (level, rest) = log_level(&args(&["--seed", "a:1", "--log-level", "debug"])).unwrap();
        assert_eq!(level, LogLevel::Debug);
        assert_eq!(rest, args(&["--seed", "a:1"]));
        let (level, rest) = log_level(&args(&["--log-level=off", "--json"])).unwrap();
        assert_eq!(level, LogLevel::Off);
        assert_eq!(rest, args(&["--json"]));
        assert!(log_level(&args(&["--log-level", "loud"])).is_err());
        assert!(log_level(&args(&["--log-level"])).is_err());
    }

    #[test]
    fn timestamps_are_utc_dates() {
        let t = utc_now();
        assert_eq!(t.len(), 24, "{t}");
        assert!(
            t.starts_with("20") && t.ends_with('Z') && t.as_bytes()[10] == b'T',
            "{t}"
        );
    }
}
