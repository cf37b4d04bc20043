//! `lbmkv`: the command-line tool of lbmkv.
//!
//! `lbmkv node` runs one node and drives it with a line protocol on stdin and
//! stdout (see `cli/README.md`); `lbmkv demo` and `lbmkv bench` are the demo
//! and the benchmark driver.

mod bench;
mod certs;
mod demo;
mod escape;
mod metrics;
mod node;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use lbmkv::{LogLevel, LogRecord};

/// The exit codes, shown by every `--help`.
pub(crate) const EXIT_CODES: &str = "exit codes:
  0  success (also: --help, --version, and `lbmkv node` ended by quit, the end
     of stdin, SIGTERM or SIGINT)
  1  failure at run time: the node could not start or reach --min-members, the
     metrics address could not be bound, the demo or bench failed, the
     certificates could not be written
  2  usage error: unknown option, bad or missing value";

/// lbmkv: an embedded, replicated, partition-tolerant in-memory key-value store.
#[derive(Debug, Parser)]
#[command(
    name = "lbmkv",
    version = lbmkv::VERSION,
    propagate_version = true,
    arg_required_else_help = true,
    after_help = EXIT_CODES
)]
struct Cli {
    /// Logs on stderr up to L: off, error, warn, info, debug, trace
    #[arg(
        long,
        global = true,
        value_name = "L",
        env = "LBMKV_LOG",
        default_value = "warn",
        value_parser = parse_level
    )]
    log_level: LogLevel,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node and drive it with one command per line on stdin
    #[command(after_help = node::AFTER_HELP, args_override_self = true)]
    Node(Box<node::Options>),
    /// A 3-node cluster through a netsplit and its heal, narrated
    #[command(after_help = EXIT_CODES)]
    Demo,
    /// The benchmark scenarios (progress on stderr, results on stdout)
    #[command(after_help = EXIT_CODES)]
    Bench(bench::Options),
    /// A cluster CA and node certificates for mutual TLS
    #[command(after_help = certs::AFTER_HELP)]
    Certs(certs::Options),
    /// Print the version of lbmkv
    Version,
}

/// A log level; an empty one (an empty `$LBMKV_LOG`) is the default, warn.
fn parse_level(s: &str) -> Result<LogLevel, String> {
    if s.trim().is_empty() {
        return Ok(LogLevel::Warn);
    }
    LogLevel::parse(s).map_err(|e| e.message().to_string())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with 0, usage errors to stderr with 2.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    init_logging(cli.log_level);
    // One arm per subcommand.
    match cli.command {
        Command::Node(o) => node::main(*o),
        Command::Demo => run_async("demo", demo::run()),
        Command::Bench(o) => run_async("bench", bench::run(o)),
        Command::Certs(o) => certs::main(o),
        Command::Version => {
            println!("lbmkv {}", lbmkv::VERSION);
            ExitCode::SUCCESS
        }
    }
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

    fn parse(list: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("lbmkv").chain(list.iter().copied()))
    }

    #[test]
    fn the_log_level_option_goes_anywhere_after_the_command() {
        let cli = parse(&["node", "--seed", "a:1", "--log-level", "debug"]).unwrap();
        assert_eq!(cli.log_level, LogLevel::Debug);
        let cli = parse(&["bench", "--log-level=off", "--json"]).unwrap();
        assert_eq!(cli.log_level, LogLevel::Off);
        assert!(parse(&["node", "--log-level", "loud"]).is_err());
        assert!(parse(&["node", "--log-level"]).is_err());
    }

    #[test]
    fn help_and_version_are_answered_by_every_subcommand() {
        for sub in ["node", "demo", "bench", "certs", "version"] {
            for flag in ["--help", "--version"] {
                let e = parse(&[sub, flag]).unwrap_err();
                assert_eq!(e.exit_code(), 0, "{sub} {flag}");
            }
        }
        assert_eq!(parse(&["node", "--bogus"]).unwrap_err().exit_code(), 2);
        assert_eq!(parse(&["nonsense"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn the_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
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
