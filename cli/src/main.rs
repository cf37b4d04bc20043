//! `lbmkv`: the command-line tool of lbmkv.
//!
//! `lbmkv node` runs one node and drives it with a line protocol on stdin and
//! stdout (see `cli/README.md`); `lbmkv demo` and `lbmkv bench` are the demo
//! and the benchmark driver.

mod bench;
mod demo;
mod escape;
mod node;

use std::process::ExitCode;

const USAGE: &str = "usage: lbmkv <command> [options]

commands:
  node    run a node and drive it with one command per line on stdin
          (lbmkv node --help for its options)
  demo    a 3-node cluster through a netsplit and its heal, narrated
  bench   the benchmark scenarios
  help    this text
  version the version of lbmkv";

fn main() -> ExitCode {
    init_logging();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, rest) = match args.split_first() {
        Some((c, rest)) => (c.as_str(), rest),
        None => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    // One arm per subcommand; each gets the arguments after its name.
    match command {
        "node" => node::main(rest),
        "demo" => run_async("demo", demo::run()),
        "bench" => run_async("bench", bench::run(rest)),
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

/// Logs go to stderr (stdout carries the node protocol), filtered by `RUST_LOG`;
/// warnings and errors by default.
fn init_logging() {
    use tracing_subscriber::filter::{EnvFilter, LevelFilter};
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::WARN.into())
        .from_env_lossy();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
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
