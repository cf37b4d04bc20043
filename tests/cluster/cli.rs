//! The `lbmkv` command as a process: `--help` and `--version` of every
//! subcommand, exit codes, `--cookie-file` and the `LBMKV_*` environment
//! fallbacks, and `/metrics` scraped from `lbmkv node --metrics-listen`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_lbmkv");

/// Runs `lbmkv args` with stdin closed and at most 20 s, with `LBMKV_*`
/// variables of the caller's environment removed.
fn lbmkv(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("LBMKV_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().expect("lbmkv runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("status").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("lbmkv {args:?} did not finish within 20 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn every_subcommand_answers_help_and_version_with_0_and_runs_nothing() {
    let version = format!("{}\n", env!("CARGO_PKG_VERSION"));
    for sub in ["node", "demo", "bench", "certs", "version"] {
        let started = Instant::now();
        let help = lbmkv(&[sub, "--help"], &[]);
        assert_eq!(help.status.code(), Some(0), "lbmkv {sub} --help");
        let text = stdout(&help);
        assert!(text.contains(&format!("Usage: lbmkv {sub}")), "{text}");
        assert!(text.contains("exit codes:") || sub == "version", "{text}");
        // Nothing ran: a demo or a bench takes far longer than this.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "lbmkv {sub} --help ran"
        );
        let v = lbmkv(&[sub, "--version"], &[]);
        assert_eq!(v.status.code(), Some(0), "lbmkv {sub} --version");
        assert!(stdout(&v).ends_with(&version), "{}", stdout(&v));
    }
    for args in [&["--version"][..], &["version"], &["-V"]] {
        let v = lbmkv(args, &[]);
        assert_eq!(stdout(&v), format!("lbmkv {version}"));
    }
    let help = lbmkv(&["--help"], &[]);
    assert_eq!(help.status.code(), Some(0));
    assert!(stdout(&help).contains("exit codes:"));
}

#[test]
fn usage_errors_exit_2_with_a_message_on_stderr() {
    for args in [
        &[][..],
        &["nonsense"],
        &["node", "--bogus"],
        &["node", "--failure-timeout-ms", "0"],
        &["node", "--events=yes"],
        &["node", "--tls-cert", "only-one.pem"],
        &["bench", "--ops", "many"],
        &["certs", "--out", "d"],
        &["demo", "--log-level", "loud"],
    ] {
        let o = lbmkv(args, &[]);
        assert_eq!(o.status.code(), Some(2), "lbmkv {args:?}");
        assert!(!o.stderr.is_empty(), "lbmkv {args:?} said nothing");
        assert!(o.stdout.is_empty(), "lbmkv {args:?} wrote to stdout");
    }
    let o = lbmkv(&["node"], &[("LBMKV_FAILURE_TIMEOUT_MS", "soon")]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "a bad environment value is a usage error"
    );
}

/// A node process with piped stdin and stdout, killed when dropped.
struct NodeProc {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl NodeProc {
    fn start(args: &[&str], env: &[(&str, &str)]) -> NodeProc {
        let mut cmd = Command::new(BIN);
        cmd.arg("node").args(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("LBMKV_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().copied());
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("lbmkv node runs");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        NodeProc {
            child,
            stdin,
            stdout,
        }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("a line");
        line.trim_end().to_string()
    }

    fn send(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").expect("send");
        self.line()
    }

    /// Sends `quit` and waits (at most 10 s) for the exit status.
    fn quit(mut self) -> Option<i32> {
        let _ = writeln!(self.stdin, "quit");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().expect("status") {
                return s.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` over one HTTP/1.1 connection: status code and body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics address");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("response");
    let (head, body) = reply.split_once("\r\n\r\n").expect("head and body");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (code, body.to_string())
}

/// The samples of a Prometheus text exposition; panics on a malformed line.
fn parse_exposition(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            assert!(
                line.starts_with("# HELP ") || line.starts_with("# TYPE "),
                "{line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        let value: f64 = value.parse().expect("a number");
        samples.insert(series.to_string(), value);
    }
    samples
}

#[test]
fn metrics_are_served_over_http_by_a_running_node() {
    let mut n = NodeProc::start(
        &[
            "--name",
            "m1",
            "--cookie",
            "metrics",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    let ready = n.line();
    assert!(ready.starts_with("READY m1 "), "{ready}");
    let metrics = n.line();
    let addr = metrics
        .strip_prefix("METRICS ")
        .expect("a METRICS line")
        .to_string();
    assert_eq!(n.send("create t"), "OK");
    assert_eq!(n.send("put t k value"), "OK");
    assert_eq!(n.send("put t k2 value"), "OK");
    assert_eq!(n.send("sget t k"), "VALUE value");

    let (code, body) = http_get(&addr, "/metrics");
    assert_eq!(code, 200, "{body}");
    let m = parse_exposition(&body);
    assert_eq!(
        m["lbmkv_info{version=\"0.1.0\",node=\"m1\"}"], 1.0,
        "{body}"
    );
    assert_eq!(m["lbmkv_members"], 1.0);
    assert_eq!(m["lbmkv_writes_total"], 2.0);
    assert_eq!(m["lbmkv_write_duration_seconds_count"], 2.0);
    assert_eq!(m["lbmkv_strong_reads_total"], 1.0);
    assert_eq!(m["lbmkv_table_entries{table=\"t\"}"], 2.0);
    assert_eq!(
        m["lbmkv_table_sequencer{table=\"t\",sequencer=\"m1\"}"],
        1.0
    );
    assert_eq!(http_get(&addr, "/other").0, 404);

    // info carries the same figures plus version, uptime and peers.
    let info: serde_json::Value = serde_json::from_str(&n.send("info")).expect("info JSON");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert!(info["uptime_ms"].as_u64().is_some(), "{info}");
    assert_eq!(info["peers"], serde_json::json!([]));
    assert_eq!(info["tables"][0]["sequencer"], "m1");
    assert_eq!(n.quit(), Some(0));
}

#[test]
fn a_metrics_address_that_cannot_be_bound_is_an_error_line_and_exit_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let addr = taken.local_addr().expect("address").to_string();
    let o = lbmkv(&["node", "--cookie", "m", "--metrics-listen", &addr], &[]);
    assert_eq!(o.status.code(), Some(1));
    let first = stdout(&o).lines().next().unwrap_or_default().to_string();
    assert!(
        first.starts_with("ERR IO ") && first.contains(&addr),
        "{first}"
    );
}

#[test]
fn the_cookie_file_and_environment_fallbacks_configure_the_node() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cli-cookie-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("cookie");
    std::fs::write(&file, "file-secret\n").expect("cookie file");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let path = file.to_str().expect("UTF-8 path");

    // Node a: name and listen address from the environment, cookie from the file.
    let mut a = NodeProc::start(
        &["--cookie-file", path],
        &[("LBMKV_NAME", "env-a"), ("LBMKV_LISTEN", "127.0.0.1:0")],
    );
    let ready = a.line();
    assert!(ready.starts_with("READY env-a 127.0.0.1:"), "{ready}");
    let a_addr = ready.rsplit(' ').next().expect("address").to_string();

    // Node b: the same cookie from LBMKV_COOKIE_FILE, the seed from LBMKV_SEEDS,
    // and the cluster forms (a wrong cookie would be refused).
    let mut b = NodeProc::start(
        &["--name", "b", "--min-members", "2"],
        &[("LBMKV_COOKIE_FILE", path), ("LBMKV_SEEDS", &a_addr)],
    );
    let ready = b.line();
    assert!(ready.starts_with("READY b "), "{ready}");
    assert_eq!(b.send("members"), "ITEM b");
    assert_eq!(b.line(), "ITEM env-a");
    assert_eq!(b.line(), "END");

    // A command line value wins over the environment.
    let mut c = NodeProc::start(
        &["--name", "cmdline", "--cookie", "x"],
        &[("LBMKV_NAME", "env")],
    );
    assert!(c.line().starts_with("READY cmdline "));
    assert_eq!(c.quit(), Some(0));

    // A cookie file that others may read is refused, as ~/.lbmkv.cookie is.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let o = lbmkv(&["node", "--cookie-file", path], &[]);
    assert_eq!(o.status.code(), Some(1));
    let first = stdout(&o).lines().next().unwrap_or_default().to_string();
    assert!(
        first.starts_with("ERR INVALID_ARGUMENT ") && first.contains("chmod 600"),
        "{first}"
    );

    assert_eq!(b.quit(), Some(0));
    assert_eq!(a.quit(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}
