//! `lbmkv node`: one node driven by a line protocol.
//!
//! Commands are read one per line from stdin and executed one after the other,
//! in order: a script may pipeline many lines without waiting, and each reply
//! still belongs to the line at the same position, and a `get` after a `put`
//! sees the put. Concurrency comes from several nodes (or processes), not from
//! one shell. Replies (and, with `--events`, `EVENT` lines) go to stdout through
//! one writer, a whole reply at a time, so an event never lands inside a
//! multi-line reply.

use std::future::Future;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::pin::Pin;
use std::process::ExitCode;
use std::task::Poll;
use std::time::Duration;

use lbmkv::{Config, Error, ErrorKind, Node, TlsConfig};
use tokio::sync::mpsc;

use crate::escape;

/// What `lbmkv node --help` adds after the options.
pub(crate) const AFTER_HELP: &str =
    "Reads one command per line on stdin and writes one reply per command. The
first line is READY <name> <host:port> (with --metrics-listen, a line
METRICS <host:port> follows it), or ERR <CODE> <message> when the node cannot
start.

commands: create T [max] | put T K V | get T K | sget T K | del T K | match T KPAT [VPAT]
          incr T K | tables | members | info | connect ADDR | disconnect NAME
          addr | help | quit

The cookie is --cookie, else the file of --cookie-file, else $LBMKV_COOKIE, else
~/.lbmkv.cookie (created when missing). Prefer a file: a command line is
visible to every user of the host in ps.

SIGTERM and SIGINT make the node leave the cluster (peers see it leave at
once) and exit 0, as quit does.

exit codes:
  0  the node ran and ended by quit, the end of stdin, SIGTERM or SIGINT
     (also: --help, --version)
  1  the node could not start (the first line is ERR <CODE> <message>),
     --min-members were not reached, or the metrics address could not be bound
  2  usage error: unknown option, bad or missing value";

/// The lines of the `help` command.
const COMMANDS: &[&str] = &[
    "create T [max]        create table T (idempotent) -> OK; with `max`, this node",
    "                      settles merge conflicts of T by keeping the larger number",
    "put T K V             set K to V (V = rest of the line) -> OK | PREV <old>",
    "get T K               local read -> VALUE <v> | NIL",
    "sget T K              strong read at the sequencer -> VALUE <v> | NIL",
    "del T K               delete K -> OK | PREV <old>",
    "psetex T K MS V       set K to V for MS milliseconds -> OK | PREV <old>",
    "pttl T K              time K has left -> VALUE <ms> | NIL (no key, no expiry)",
    "watch T [PREFIX]      -> OK, then an EVENT {\"type\":\"change\",...} line per change",
    "match T KPAT [VPAT]   glob match -> ENTRY <k> <v> lines, END",
    "incr T K              atomic +1 of a decimal counter -> VALUE <new>",
    "tables                table names -> ITEM lines, END",
    "members               nodes in this node's view -> ITEM lines, END",
    "info                  the node as one line of JSON",
    "connect ADDR          connect to host:port -> OK",
    "disconnect NAME       drop node NAME until connect -> OK",
    "addr                  -> ADDR <host:port>",
    "quit                  leave the cluster and exit",
];

/// Longest accepted command line: a value of the default limit plus room for the rest.
const MAX_LINE: usize = 64 * 1024 * 1024 + 128 * 1024;

/// Options of `lbmkv node`. Each has an `LBMKV_*` environment fallback, used
/// when the option is not given.
#[derive(Debug, Default, clap::Args)]
pub struct Options {
    /// Node name [default: <hostname>-<pid>; with TLS, the certificate's first DNS name]
    #[arg(long, value_name = "N", env = "LBMKV_NAME")]
    name: Option<String>,
    /// host:port to listen on [default: 127.0.0.1:0]
    #[arg(long, value_name = "ADDR", env = "LBMKV_LISTEN")]
    listen: Option<String>,
    /// host:port peers are told to reach this node at [default: the listen
    /// address; for 0.0.0.0, the address each peer sees this node come from]
    #[arg(long, value_name = "ADDR", env = "LBMKV_ADVERTISE")]
    advertise: Option<String>,
    /// A node to join; repeatable (LBMKV_SEEDS: comma-separated)
    #[arg(
        long = "seed",
        value_name = "ADDR",
        env = "LBMKV_SEEDS",
        value_delimiter = ','
    )]
    seeds: Vec<String>,
    /// Wait at start until N members (this node included) are in the view;
    /// else print ERR UNAVAILABLE and exit 1
    #[arg(long, value_name = "N", env = "LBMKV_MIN_MEMBERS")]
    min_members: Option<usize>,
    /// Cluster secret (visible in ps: prefer --cookie-file) [default: $LBMKV_COOKIE, else ~/.lbmkv.cookie]
    #[arg(long, value_name = "C")]
    cookie: Option<String>,
    /// File holding the cluster secret (mode 0600; surrounding whitespace is
    /// trimmed); --cookie wins over it
    #[arg(long, value_name = "PATH", env = "LBMKV_COOKIE_FILE")]
    cookie_file: Option<std::path::PathBuf>,
    /// This node's certificate chain (PEM); with --tls-key and --tls-ca,
    /// connections to peers use mutual TLS, and the node name must be a DNS
    /// name of the certificate
    #[arg(long, value_name = "FILE", env = "LBMKV_TLS_CERT")]
    tls_cert: Option<String>,
    /// This node's private key (PEM, mode 0600)
    #[arg(long, value_name = "FILE", env = "LBMKV_TLS_KEY")]
    tls_key: Option<String>,
    /// The cluster's CA certificate (PEM)
    #[arg(long, value_name = "FILE", env = "LBMKV_TLS_CA")]
    tls_ca: Option<String>,
    /// Print events as EVENT <json> lines
    #[arg(long)]
    events: bool,
    /// Silence after which a peer is down [default: 2000]
    #[arg(long, value_name = "MS", env = "LBMKV_FAILURE_TIMEOUT_MS", value_parser = positive_u64)]
    failure_timeout_ms: Option<u64>,
    /// Heartbeat interval [default: 250, or a quarter of the failure timeout when that is shorter]
    #[arg(long, value_name = "MS", env = "LBMKV_HEARTBEAT_MS", value_parser = positive_u64)]
    heartbeat_ms: Option<u64>,
    /// Bound of one write, strong read or connect [default: 5000]
    #[arg(long, value_name = "MS", env = "LBMKV_REQUEST_TIMEOUT_MS", value_parser = positive_u64)]
    request_timeout_ms: Option<u64>,
    /// Interval of digest comparisons with peers [default: 1000]
    #[arg(long, value_name = "MS", env = "LBMKV_ANTI_ENTROPY_MS", value_parser = positive_u64)]
    anti_entropy_ms: Option<u64>,
    /// Largest value [default: 65011712, 62 MiB]
    #[arg(long, value_name = "BYTES", env = "LBMKV_MAX_VALUE_SIZE", value_parser = positive_usize)]
    max_value_size: Option<usize>,
    /// Largest frame from a peer [default: 67108864, 64 MiB]; the largest key
    /// and value plus 1.25 MiB must fit
    #[arg(long, value_name = "BYTES", env = "LBMKV_MAX_FRAME_SIZE", value_parser = positive_usize)]
    max_frame_size: Option<usize>,
    /// Serve the node's metrics (Prometheus text) at http://ADDR/metrics;
    /// port 0 picks one, which the METRICS line after READY tells
    #[arg(long, value_name = "ADDR", env = "LBMKV_METRICS_LISTEN")]
    metrics_listen: Option<String>,
}

fn positive_u64(v: &str) -> Result<u64, String> {
    v.parse::<u64>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("needs a positive number of milliseconds, got {v:?}"))
}

fn positive_usize(v: &str) -> Result<usize, String> {
    v.parse::<usize>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("needs a positive number of bytes, got {v:?}"))
}

impl Options {
    /// Checks what clap cannot: the TLS files go together.
    fn check(&self) -> Result<(), String> {
        let tls = [&self.tls_cert, &self.tls_key, &self.tls_ca];
        if tls.iter().any(|f| f.is_some()) && !tls.iter().all(|f| f.is_some()) {
            return Err("--tls-cert, --tls-key and --tls-ca go together".into());
        }
        Ok(())
    }

    /// The cookie given by --cookie or read from --cookie-file; `None` leaves
    /// it to the engine ($LBMKV_COOKIE, else ~/.lbmkv.cookie).
    fn cookie(&self) -> Result<Option<Vec<u8>>, Error> {
        match (&self.cookie, &self.cookie_file) {
            (Some(c), _) => Ok(Some(c.as_bytes().to_vec())),
            (None, Some(path)) => lbmkv::read_cookie_file(path).map(Some),
            (None, None) => Ok(None),
        }
    }

    fn config(&self) -> Result<Config, Error> {
        let mut c = Config {
            name: self.name.clone(),
            seeds: self.seeds.clone(),
            advertise: self.advertise.clone(),
            min_members: self.min_members.unwrap_or(0),
            cookie: self.cookie()?,
            tls: match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
                (Some(cert), Some(key), Some(ca)) => Some(TlsConfig {
                    cert: cert.into(),
                    key: key.into(),
                    ca: ca.into(),
                }),
                _ => None,
            },
            ..Config::default()
        };
        if let Some(l) = &self.listen {
            c.listen = l.clone();
        }
        if let Some(ms) = self.failure_timeout_ms {
            c.failure_timeout = Duration::from_millis(ms);
            // A short failure timeout needs faster heartbeats than the default.
            if self.heartbeat_ms.is_none() {
                c.heartbeat_interval = c.heartbeat_interval.min(c.failure_timeout / 4);
            }
        }
        if let Some(ms) = self.heartbeat_ms {
            c.heartbeat_interval = Duration::from_millis(ms);
        }
        if let Some(ms) = self.request_timeout_ms {
            c.request_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = self.anti_entropy_ms {
            c.anti_entropy_interval = Duration::from_millis(ms);
        }
        if let Some(n) = self.max_value_size {
            c.max_value_size = n;
        }
        if let Some(n) = self.max_frame_size {
            c.max_frame_size = n;
        }
        Ok(c)
    }
}

/// Entry point of `lbmkv node`.
pub fn main(options: Options) -> ExitCode {
    if let Err(msg) = options.check() {
        eprintln!("lbmkv node: {msg} (see lbmkv node --help)");
        return ExitCode::from(2);
    }
    let rt = match crate::runtime() {
        Ok(rt) => rt,
        Err(msg) => {
            eprintln!("lbmkv node: {msg}");
            return ExitCode::from(1);
        }
    };
    let code = rt.block_on(run(options));
    // The node is closed by now; do not wait for stray tasks.
    rt.shutdown_timeout(Duration::from_millis(200));
    code
}

/// Output lines, each message written whole.
type Out = mpsc::UnboundedSender<String>;

async fn run(options: Options) -> ExitCode {
    let (out, out_rx) = mpsc::unbounded_channel::<String>();
    let writer = std::thread::spawn(move || write_stdout(out_rx));
    let started = match options.config() {
        Ok(config) => Node::start_subscribed(config).await,
        Err(e) => Err(e),
    };
    let code = match started {
        Ok((node, events)) => match crate::metrics::start(&options.metrics_listen, &node).await {
            Ok(metrics) => {
                let addr = metrics.as_ref().map(|m| m.addr);
                serve(node, options.events.then_some(events), &out, addr).await;
                drop(metrics);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("lbmkv node: {}", e.message());
                let _ = out.send(error_line(&e));
                let _ = node.close().await;
                ExitCode::from(1)
            }
        },
        Err(e) => {
            eprintln!("lbmkv node: cannot start: {e}");
            let _ = out.send(error_line(&e));
            ExitCode::from(1)
        }
    };
    drop(out);
    let _ = writer.join();
    code
}

/// Resolves with the signal's name when the process gets SIGTERM or SIGINT.
type StopSignal = Pin<Box<dyn Future<Output = &'static str> + Send>>;

/// SIGTERM and SIGINT, caught from now on instead of ending the process, so
/// that the node leaves the cluster before it exits.
fn stop_signal() -> StopSignal {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => Box::pin(std::future::poll_fn(move |cx| {
            if term.poll_recv(cx).is_ready() {
                return Poll::Ready("SIGTERM");
            }
            int.poll_recv(cx).map(|_| "SIGINT")
        })),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!(
                "lbmkv node: signals are not caught ({e}): SIGTERM ends the node without a goodbye"
            );
            Box::pin(std::future::pending())
        }
    }
}

/// `fut`, unless `stop` resolves first (then its signal's name).
async fn unless<T>(stop: &mut StopSignal, fut: impl Future<Output = T>) -> Result<T, &'static str> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(sig) = stop.as_mut().poll(cx) {
            return Poll::Ready(Err(sig));
        }
        fut.as_mut().poll(cx).map(Ok)
    })
    .await
}

/// Serves stdin; `events` (subscribed before the node reached its seeds) are
/// printed after READY, from the start on. SIGTERM or SIGINT end it as `quit` does.
async fn serve(
    node: Node,
    events: Option<lbmkv::Events>,
    out: &Out,
    metrics: Option<std::net::SocketAddr>,
) {
    let mut stop = stop_signal();
    let _ = out.send(format!("READY {} {}\n", node.name(), node.address()));
    if let Some(addr) = metrics {
        let _ = out.send(format!("METRICS {addr}\n"));
    }
    let event_task = events.map(|mut events| {
        let out = out.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.next().await {
                if out.send(format!("EVENT {}\n", ev.to_json())).is_err() {
                    break;
                }
            }
        })
    });
    let interactive = std::io::stdin().is_terminal();
    let mut lines = read_stdin();
    let shell = Shell {
        node: node.clone(),
        out: Some(out.clone()),
        watches: Default::default(),
    };
    loop {
        if interactive && out.send("lbmkv> ".to_string()).is_err() {
            break;
        }
        let line = match unless(&mut stop, lines.recv()).await {
            Err(sig) => {
                eprintln!("lbmkv node: {sig}: leaving the cluster");
                break;
            }
            Ok(line) => line,
        };
        let line = match line {
            Some(Ok(line)) => line,
            Some(Err(msg)) => {
                if out.send(format!("ERR INVALID_ARGUMENT {msg}\n")).is_err() {
                    break;
                }
                continue;
            }
            None => break,
        };
        let reply = match unless(&mut stop, shell.execute(&line)).await {
            Err(sig) => {
                eprintln!("lbmkv node: {sig}: leaving the cluster");
                break;
            }
            Ok(reply) => reply,
        };
        let reply = match reply {
            Ok(Reply::Text(text)) => text,
            Ok(Reply::Nothing) => continue,
            Ok(Reply::Quit) => break,
            Err(e) => error_line(&e),
        };
        // The writer is gone when stdout is closed: nobody listens any more.
        if out.send(reply).is_err() {
            break;
        }
    }
    if let Some(task) = event_task {
        task.abort();
    }
    shell.stop_watches();
    let _ = node.close().await;
}

fn error_line(e: &Error) -> String {
    format!(
        "ERR {} {}\n",
        e.kind().code(),
        escape::text(e.message().as_bytes())
    )
}

/// Writes messages to stdout, flushing whenever the queue is drained.
fn write_stdout(mut rx: mpsc::UnboundedReceiver<String>) {
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    while let Some(msg) = rx.blocking_recv() {
        if w.write_all(msg.as_bytes()).is_err() {
            return;
        }
        while let Ok(more) = rx.try_recv() {
            if w.write_all(more.as_bytes()).is_err() {
                return;
            }
        }
        if w.flush().is_err() {
            return;
        }
    }
}

/// Lines of stdin (without the line end), read ahead on a thread of their own
/// so that a pending read never holds up shutdown.
fn read_stdin() -> mpsc::Receiver<Result<Vec<u8>, String>> {
    let (tx, rx) = mpsc::channel(1024);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            // One byte more than the limit tells an oversize line apart.
            let read = (&mut input)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut buf);
            match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let item = if buf.len() > MAX_LINE && buf.last() != Some(&b'\n') {
                // Skip the rest of the oversize line.
                let mut sink = Vec::new();
                let _ = input.read_until(b'\n', &mut sink);
                Err(format!("line longer than {MAX_LINE} bytes"))
            } else {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                }
                if buf.last() == Some(&b'\r') {
                    buf.pop();
                }
                Ok(std::mem::take(&mut buf))
            };
            if tx.blocking_send(item).is_err() {
                return;
            }
        }
    });
    rx
}

/// What a command answers.
enum Reply {
    /// Reply lines, each ending in `\n`.
    Text(String),
    /// Nothing (an empty line or a comment).
    Nothing,
    /// Stop the shell.
    Quit,
}

/// Splits a command line into whitespace-separated tokens; the value of `put`
/// is the rest of the line after the single space that follows the key.
struct Tokens<'a> {
    rest: &'a [u8],
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

impl<'a> Tokens<'a> {
    fn next(&mut self) -> Option<&'a [u8]> {
        let start = self.rest.iter().position(|&b| !is_blank(b))?;
        let rest = &self.rest[start..];
        let end = rest.iter().position(|&b| is_blank(b)).unwrap_or(rest.len());
        self.rest = &rest[end..];
        Some(&rest[..end])
    }

    /// Everything after one separator; `None` when the line ended after the last token.
    fn rest_of_line(&mut self) -> Option<&'a [u8]> {
        let (&first, rest) = self.rest.split_first()?;
        debug_assert!(is_blank(first));
        self.rest = &[];
        Some(rest)
    }

    fn is_done(&self) -> bool {
        self.rest.iter().all(|&b| is_blank(b))
    }
}

fn usage(text: &str) -> Error {
    Error::new(ErrorKind::InvalidArgument, format!("usage: {text}"))
}

fn ok() -> Reply {
    Reply::Text("OK\n".to_string())
}

fn value_reply(v: Option<Vec<u8>>) -> Reply {
    Reply::Text(match v {
        Some(v) => format!("VALUE {}\n", escape::text(&v)),
        None => "NIL\n".to_string(),
    })
}

fn previous_reply(v: Option<Vec<u8>>) -> Reply {
    Reply::Text(match v {
        Some(v) => format!("PREV {}\n", escape::text(&v)),
        None => "OK\n".to_string(),
    })
}

fn items<S: AsRef<[u8]>>(list: impl IntoIterator<Item = S>) -> Reply {
    let mut text = String::new();
    for item in list {
        text.push_str("ITEM ");
        text.push_str(&escape::text(item.as_ref()));
        text.push('\n');
    }
    text.push_str("END\n");
    Reply::Text(text)
}

fn utf8<'a>(what: &str, bytes: &'a [u8]) -> Result<&'a str, Error> {
    std::str::from_utf8(bytes).map_err(|e| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("{what} is not valid UTF-8: {e}"),
        )
    })
}

/// The counter in `value` plus one; absent counts as 0.
fn increment(key: &[u8], value: Option<Vec<u8>>) -> Result<Option<Vec<u8>>, Error> {
    let current: i64 = match &value {
        None => 0,
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "the value of {} is not a decimal integer: {}",
                        escape::text(key),
                        escape::text(v)
                    ),
                )
            })?,
    };
    let next = current.checked_add(1).ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("the counter {} would overflow", escape::text(key)),
        )
    })?;
    Ok(Some(next.to_string().into_bytes()))
}

/// Executes command lines against one node.
struct Shell {
    node: Node,
    /// Where `watch` prints changes (`None`: no watches).
    out: Option<Out>,
    /// The tasks that print the changes of each `watch`.
    watches: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// A string as a JSON string, escaped as replies escape bytes first.
fn json_bytes(b: Option<&[u8]>) -> String {
    match b {
        Some(b) => serde_json::Value::String(escape::text(b)).to_string(),
        None => "null".to_string(),
    }
}

/// One `watch` item as an `EVENT` line.
fn watch_line(item: &lbmkv::WatchItem, table: &str) -> String {
    match item {
        lbmkv::WatchItem::Change(c) => format!(
            "EVENT {{\"type\":\"change\",\"table\":{},\"key\":{},\"value\":{},\"prev\":{},\"cause\":\"{}\",\"node\":{}}}\n",
            json_bytes(Some(c.table.as_bytes())),
            json_bytes(Some(&c.key)),
            json_bytes(c.value.as_deref()),
            json_bytes(c.prev.as_deref()),
            c.cause,
            json_bytes(Some(c.node.as_bytes())),
        ),
        lbmkv::WatchItem::Lagged(n) => format!(
            "EVENT {{\"type\":\"lagged\",\"table\":{},\"count\":{n}}}\n",
            json_bytes(Some(table.as_bytes()))
        ),
        _ => String::new(),
    }
}

impl Shell {
    fn stop_watches(&self) {
        if let Ok(mut tasks) = self.watches.lock() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
    }

    fn table(&self, name: &[u8]) -> Result<lbmkv::Table, Error> {
        let name = lbmkv::name_from_bytes("table name", name)?;
        self.node.table(name)
    }

    async fn execute(&self, line: &[u8]) -> Result<Reply, Error> {
        let mut t = Tokens { rest: line };
        let Some(command) = t.next() else {
            return Ok(Reply::Nothing);
        };
        if command.starts_with(b"#") {
            return Ok(Reply::Nothing);
        }
        let command = String::from_utf8_lossy(command).to_ascii_lowercase();
        match command.as_str() {
            "create" => {
                let (name, handler) = match (t.next(), t.next(), t.is_done()) {
                    (Some(name), None, true) => (name, None),
                    (Some(name), Some(b"max"), true) => (name, Some(keep_max())),
                    _ => return Err(usage("create T [max]")),
                };
                let name = lbmkv::name_from_bytes("table name", name)?;
                self.node.create_table_with(name, handler).await?;
                Ok(ok())
            }
            "put" => {
                let (Some(table), Some(key), Some(value)) = (t.next(), t.next(), t.rest_of_line())
                else {
                    return Err(usage("put T K V (V is the rest of the line)"));
                };
                let prev = self.table(table)?.put(key, value).await?;
                Ok(previous_reply(prev))
            }
            "get" | "sget" => {
                let (Some(table), Some(key), true) = (t.next(), t.next(), t.is_done()) else {
                    return Err(usage(&format!("{command} T K")));
                };
                let table = self.table(table)?;
                let v = if command == "sget" {
                    table.get_strong(key).await?
                } else {
                    table.get(key)?
                };
                Ok(value_reply(v))
            }
            "del" => {
                let (Some(table), Some(key), true) = (t.next(), t.next(), t.is_done()) else {
                    return Err(usage("del T K"));
                };
                let prev = self.table(table)?.delete(key).await?;
                Ok(previous_reply(prev))
            }
            "psetex" => {
                let (Some(table), Some(key), Some(ms), Some(value)) =
                    (t.next(), t.next(), t.next(), t.rest_of_line())
                else {
                    return Err(usage("psetex T K MS V (V is the rest of the line)"));
                };
                let ms = std::str::from_utf8(ms)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .filter(|ms| *ms > 0)
                    .ok_or_else(|| {
                        usage("psetex T K MS V (MS is a number of milliseconds, at least 1)")
                    })?;
                let prev = self
                    .table(table)?
                    .put_expiring(key, value, Duration::from_millis(ms))
                    .await?;
                Ok(previous_reply(prev))
            }
            "pttl" => {
                let (Some(table), Some(key), true) = (t.next(), t.next(), t.is_done()) else {
                    return Err(usage("pttl T K"));
                };
                let left = self.table(table)?.ttl(key)?;
                Ok(Reply::Text(match left {
                    Some(d) => format!("VALUE {}\n", d.as_millis()),
                    None => "NIL\n".to_string(),
                }))
            }
            "watch" => {
                let (Some(table), prefix, true) = (t.next(), t.next(), t.is_done()) else {
                    return Err(usage("watch T [PREFIX]"));
                };
                let Some(out) = &self.out else {
                    return Err(usage("watch needs the node's output"));
                };
                let table = self.table(table)?;
                let mut watch = table.watch(prefix.unwrap_or(b""))?;
                // OK first: the change lines follow it.
                let _ = out.send("OK\n".to_string());
                let out = out.clone();
                let name = table.name().to_string();
                let task = tokio::spawn(async move {
                    while let Some(item) = watch.next().await {
                        if out.send(watch_line(&item, &name)).is_err() {
                            break;
                        }
                    }
                });
                if let Ok(mut tasks) = self.watches.lock() {
                    tasks.push(task);
                }
                Ok(Reply::Nothing)
            }
            "match" => {
                let (Some(table), Some(kpat)) = (t.next(), t.next()) else {
                    return Err(usage("match T KPAT [VPAT]"));
                };
                let vpat = t.next().unwrap_or(b"*");
                if !t.is_done() {
                    return Err(usage("match T KPAT [VPAT]"));
                }
                let entries = self.table(table)?.match_entries(kpat, vpat)?;
                let mut text = String::new();
                for (k, v) in entries {
                    text.push_str("ENTRY ");
                    text.push_str(&escape::field(&k));
                    text.push(' ');
                    text.push_str(&escape::text(&v));
                    text.push('\n');
                }
                text.push_str("END\n");
                Ok(Reply::Text(text))
            }
            "incr" => {
                let (Some(table), Some(key), true) = (t.next(), t.next(), t.is_done()) else {
                    return Err(usage("incr T K"));
                };
                let (_, new) = self
                    .table(table)?
                    .update_with(key, |k, v| std::future::ready(increment(k, v)))
                    .await?;
                Ok(value_reply(new))
            }
            "tables" | "members" => {
                if !t.is_done() {
                    return Err(usage(&command));
                }
                let list = if command == "tables" {
                    self.node.tables()?
                } else {
                    self.node.members()?
                };
                Ok(items(list))
            }
            "info" => {
                if !t.is_done() {
                    return Err(usage("info"));
                }
                let json = serde_json::to_string(&self.node.info()?)
                    .map_err(|e| Error::new(ErrorKind::Internal, format!("info as JSON: {e}")))?;
                Ok(Reply::Text(json + "\n"))
            }
            "connect" => {
                let (Some(addr), true) = (t.next(), t.is_done()) else {
                    return Err(usage("connect ADDR"));
                };
                self.node.connect(utf8("address", addr)?).await?;
                Ok(ok())
            }
            "disconnect" => {
                let (Some(name), true) = (t.next(), t.is_done()) else {
                    return Err(usage("disconnect NAME"));
                };
                self.node.disconnect(utf8("node name", name)?).await?;
                Ok(ok())
            }
            "addr" => {
                if !t.is_done() {
                    return Err(usage("addr"));
                }
                Ok(Reply::Text(format!("ADDR {}\n", self.node.address())))
            }
            "fill" => {
                let (Some(table), Some(n), Some(size), true) =
                    (t.next(), t.next(), t.next(), t.is_done())
                else {
                    return Err(usage("fill T N SIZE"));
                };
                let number = |what: &str, b: &[u8]| {
                    std::str::from_utf8(b)
                        .ok()
                        .and_then(|s| s.parse::<usize>().ok())
                        .ok_or_else(|| usage(&format!("fill T N SIZE ({what} is a number)")))
                };
                let (n, size) = (number("N", n)?, number("SIZE", size)?);
                fill(&self.table(table)?, n, size).await?;
                Ok(ok())
            }
            "help" => Ok(items(COMMANDS)),
            "quit" | "exit" => Ok(Reply::Quit),
            other => Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("unknown command {other:?} (try help)"),
            )),
        }
    }
}

/// Entries per `put_many` of `fill`.
const FILL_BATCH: usize = 10_000;

/// `fill T N SIZE`: writes N entries with `put_many` batches of
/// [`FILL_BATCH`]: the key of entry i is `key-` and i in 12 digits (16 bytes,
/// as `lbmkv bench` writes them), its value i in 16 digits, cut or padded with
/// `v` to SIZE bytes.
async fn fill(table: &lbmkv::Table, n: usize, size: usize) -> Result<(), Error> {
    let mut next = 0;
    while next < n {
        let end = (next + FILL_BATCH).min(n);
        let batch = (next..end)
            .map(|i| {
                let mut v = format!("{i:016}").into_bytes();
                v.resize(size, b'v');
                (format!("key-{i:012}").into_bytes(), v)
            })
            .collect();
        table.put_many(batch).await?;
        next = end;
    }
    Ok(())
}

/// The conflict handler of `create T max` (the one of lbm_kv's sequencer
/// sample): the larger decimal number wins; values that are not numbers
/// compare as bytes, after any number; a deleted side loses.
fn keep_max() -> std::sync::Arc<dyn lbmkv::ConflictHandler> {
    fn rank(v: &Option<Vec<u8>>) -> (u8, Option<u128>, Option<&[u8]>) {
        match v {
            None => (0, None, None),
            Some(b) => match std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse::<u128>().ok())
            {
                Some(n) => (1, Some(n), None),
                None => (2, None, Some(b.as_slice())),
            },
        }
    }
    lbmkv::handler_fn(|c| {
        let winner = if rank(&c.local) >= rank(&c.remote) {
            &c.local
        } else {
            &c.remote
        };
        Ok(match winner {
            Some(v) => lbmkv::Resolution::Value(v.clone()),
            None => lbmkv::Resolution::Delete,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(line: &str) -> Vec<String> {
        let mut t = Tokens {
            rest: line.as_bytes(),
        };
        std::iter::from_fn(|| t.next())
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    #[test]
    fn tokens_split_on_runs_of_blanks() {
        assert_eq!(tokens("  get\tt   k "), ["get", "t", "k"]);
        assert!(tokens("   ").is_empty());
    }

    #[test]
    fn the_value_is_the_rest_of_the_line_after_one_blank() {
        let mut t = Tokens {
            rest: b"put t k  two  words ",
        };
        assert_eq!(t.next(), Some(&b"put"[..]));
        assert_eq!(t.next(), Some(&b"t"[..]));
        assert_eq!(t.next(), Some(&b"k"[..]));
        assert_eq!(t.rest_of_line(), Some(&b" two  words "[..]));
        let mut t = Tokens { rest: b"put t k" };
        t.next();
        t.next();
        t.next();
        assert_eq!(t.rest_of_line(), None);
        let mut t = Tokens { rest: b"put t k " };
        t.next();
        t.next();
        t.next();
        assert_eq!(t.rest_of_line(), Some(&b""[..]));
    }

    #[test]
    fn increment_counts_from_zero_and_rejects_non_numbers() {
        assert_eq!(increment(b"k", None).unwrap(), Some(b"1".to_vec()));
        assert_eq!(
            increment(b"k", Some(b"41".to_vec())).unwrap(),
            Some(b"42".to_vec())
        );
        let e = increment(b"k", Some(b"x".to_vec())).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        let e = increment(b"k", Some(i64::MAX.to_string().into_bytes())).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn fill_puts_n_keys_of_16_bytes_with_values_of_size_bytes() {
        let rt = crate::runtime().unwrap();
        rt.block_on(async {
            let node = Node::start(Config {
                name: Some("fill".into()),
                cookie: Some(b"fill".to_vec()),
                ..Config::default()
            })
            .await
            .unwrap();
            let shell = Shell {
                node: node.clone(),
                out: None,
                watches: Default::default(),
            };
            let run = |line: &'static str| shell.execute(line.as_bytes());
            assert!(matches!(run("create t").await, Ok(Reply::Text(t)) if t == "OK\n"));
            assert!(matches!(run("fill t 12345 100").await, Ok(Reply::Text(t)) if t == "OK\n"));
            let t = node.table("t").unwrap();
            assert_eq!(t.len().unwrap(), 12345);
            let v = t.get(b"key-000000012344").unwrap().unwrap();
            assert_eq!(v.len(), 100);
            assert!(v.starts_with(b"0000000000012344v"));
            assert_eq!(t.get(b"key-000000012345").unwrap(), None);
            for bad in ["fill t", "fill t x 100", "fill t 10 -1", "fill t 1 2 3"] {
                let e = run(bad).await.err().unwrap();
                assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}");
            }
            let e = run("fill nope 1 1").await.err().unwrap();
            assert_eq!(e.kind(), ErrorKind::NoSuchTable);
            node.close().await.unwrap();
        });
    }

    fn parse(list: &[&str]) -> Result<Options, clap::Error> {
        use clap::{Args, FromArgMatches};
        let cmd = Options::augment_args(clap::Command::new("node"));
        let m = cmd.try_get_matches_from(std::iter::once("node").chain(list.iter().copied()))?;
        Options::from_arg_matches(&m)
    }

    #[test]
    fn options_parse_both_forms_and_reject_unknown_ones() {
        let o = parse(&[
            "--name",
            "a",
            "--seed=127.0.0.1:1",
            "--seed",
            "127.0.0.1:2",
            "--events",
            "--failure-timeout-ms",
            "400",
        ])
        .unwrap();
        assert_eq!(o.name.as_deref(), Some("a"));
        assert_eq!(o.seeds, ["127.0.0.1:1", "127.0.0.1:2"]);
        assert!(o.events);
        let c = o.config().unwrap();
        assert_eq!(c.failure_timeout, Duration::from_millis(400));
        assert_eq!(c.heartbeat_interval, Duration::from_millis(100));
        c.validate().unwrap();
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--failure-timeout-ms", "x"]).is_err());
        assert!(parse(&["--failure-timeout-ms", "0"]).is_err());
        assert!(parse(&["--events=yes"]).is_err());
        let both = parse(&["--cookie", "a", "--cookie-file", "/nonexistent"]).unwrap();
        assert_eq!(both.config().unwrap().cookie.as_deref(), Some(&b"a"[..]));
        let half_tls = parse(&["--tls-cert", "c.pem"]).unwrap();
        assert!(half_tls.check().is_err());
    }

    #[test]
    fn the_cookie_file_is_read_trimmed_and_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("lbmkv-cookie-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cookie");
        std::fs::write(&file, "s3cret\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = file.to_str().unwrap();
        let o = parse(&["--cookie-file", path]).unwrap();
        assert_eq!(o.config().unwrap().cookie.as_deref(), Some(&b"s3cret"[..]));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = o.config().unwrap_err();
        assert!(e.message().contains("chmod 600"), "{e}");
        let missing = parse(&["--cookie-file", "/nonexistent/lbmkv.cookie"]).unwrap();
        assert!(missing.config().is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
