//! Drives real `lbmkv node` processes through their line protocol: start one,
//! read its `READY` line, send commands and read replies with time limits,
//! collect `EVENT` lines, and kill it when dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The cookie of the test clusters.
pub const COOKIE: &str = "lbmkv-cluster-tests";
/// Longest wait for any single reply.
pub const REPLY_LIMIT: Duration = Duration::from_secs(20);

/// One line of a node's stdout and when it was read.
struct Line {
    at: Instant,
    text: String,
}

/// One `lbmkv node` process.
pub struct NodeProc {
    /// The node's name (from its `READY` line).
    pub name: String,
    /// Where it listens, `host:port` (from its `READY` line).
    pub addr: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Line>,
    /// `EVENT` lines read so far and not yet taken, with their arrival time.
    events: Vec<(Instant, Value)>,
    log: PathBuf,
    /// Stopped with `SIGSTOP` by `pause` and not yet resumed.
    paused: bool,
}

/// Options of one node process.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    pub listen: String,
    pub seeds: Vec<String>,
    pub cookie: String,
    pub events: bool,
    pub failure_timeout_ms: u64,
    pub extra: Vec<String>,
    /// The network namespace to run in (a host of `hosts.rs`); `None`: this one.
    pub netns: Option<String>,
}

impl Spec {
    /// A node named `name` on `127.0.0.1`, with the test cookie, events on and a
    /// 1 s failure timeout.
    pub fn new(name: &str) -> Spec {
        Spec {
            name: name.to_string(),
            listen: "127.0.0.1:0".to_string(),
            seeds: Vec::new(),
            cookie: COOKIE.to_string(),
            events: true,
            failure_timeout_ms: 1000,
            extra: Vec::new(),
            netns: None,
        }
    }
    pub fn listen(mut self, addr: &str) -> Spec {
        self.listen = addr.to_string();
        self
    }
    pub fn seed(mut self, addr: &str) -> Spec {
        self.seeds.push(addr.to_string());
        self
    }
    pub fn cookie(mut self, cookie: &str) -> Spec {
        self.cookie = cookie.to_string();
        self
    }
    pub fn netns(mut self, ns: &str) -> Spec {
        self.netns = Some(ns.to_string());
        self
    }
    pub fn arg(mut self, arg: &str) -> Spec {
        self.extra.push(arg.to_string());
        self
    }
}

impl Spec {
    /// `lbmkv node`, inside the spec's network namespace when it has one
    /// (`ip netns exec` execs the command: the child is the node itself).
    pub fn command(&self) -> Command {
        let bin = env!("CARGO_BIN_EXE_lbmkv");
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, bin]);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("node");
        cmd
    }
}

/// Where the nodes' logs go.
pub fn log_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cluster-logs");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

impl NodeProc {
    /// Starts a node and waits for its `READY` line.
    pub fn start(spec: Spec) -> NodeProc {
        let log = log_dir().join(format!("{}-{}.log", spec.name, std::process::id()));
        let stderr = std::fs::File::create(&log).expect("create the node's log file");
        let mut cmd = spec.command();
        cmd.args(["--name", &spec.name, "--listen", &spec.listen])
            .args(["--cookie", &spec.cookie])
            .args(["--failure-timeout-ms", &spec.failure_timeout_ms.to_string()]);
        for s in &spec.seeds {
            cmd.args(["--seed", s]);
        }
        if spec.events {
            cmd.arg("--events");
        }
        cmd.args(&spec.extra);
        if std::env::var_os("LBMKV_LOG").is_none() {
            cmd.env("LBMKV_LOG", "info");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn lbmkv node");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("the node's stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for text in BufReader::new(stdout).lines() {
                let Ok(text) = text else { return };
                if tx
                    .send(Line {
                        at: Instant::now(),
                        text,
                    })
                    .is_err()
                {
                    return;
                }
            }
        });
        let mut node = NodeProc {
            name: spec.name.clone(),
            addr: String::new(),
            child,
            stdin,
            lines,
            events: Vec::new(),
            log,
            paused: false,
        };
        let first = node.next_line(Duration::from_secs(15), "READY");
        let mut parts = first.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("READY"), Some(name), Some(addr)) => {
                assert_eq!(name, spec.name, "READY names the node");
                node.addr = addr.to_string();
            }
            _ => node.fail(&format!("first line is not READY: {first:?}")),
        }
        node
    }

    /// Panics with `what` and the end of the node's log.
    pub fn fail(&self, what: &str) -> ! {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "node {}: {what}\n--- last lines of {} ---\n{}",
            self.name,
            self.log.display(),
            tail.join("\n")
        );
    }

    /// The next non-event line, storing events on the way; an event in the
    /// middle of a multi-line reply (`inside`) is a protocol violation.
    fn next_line(&mut self, limit: Duration, waiting_for: &str) -> String {
        self.next_line_in(limit, waiting_for, false)
    }

    fn next_line_in(&mut self, limit: Duration, waiting_for: &str, inside: bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(json) = line.text.strip_prefix("EVENT ") {
                        if inside {
                            self.fail(&format!(
                                "EVENT line inside the reply to {waiting_for}: {:?}",
                                line.text
                            ));
                        }
                        match serde_json::from_str(json) {
                            Ok(v) => self.events.push((line.at, v)),
                            Err(e) => self.fail(&format!("bad EVENT line {:?}: {e}", line.text)),
                        }
                        continue;
                    }
                    return line.text;
                }
                Err(RecvTimeoutError::Timeout) => self.fail(&format!(
                    "no reply within {limit:?} while waiting for {waiting_for}"
                )),
                Err(RecvTimeoutError::Disconnected) => {
                    self.fail(&format!("stdout closed while waiting for {waiting_for}"))
                }
            }
        }
    }

    /// Writes lines to the node's stdin without waiting for replies.
    pub fn send_lines(&mut self, lines: &[String]) {
        let mut text = String::new();
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        self.send_raw(text.as_bytes());
    }

    /// Sends a single-line command that may take up to `limit` (longer than
    /// [`REPLY_LIMIT`]) and returns its reply line.
    pub fn one_within(&mut self, command: &str, limit: Duration) -> String {
        self.send_lines(&[command.to_string()]);
        self.next_line(limit, command)
    }

    /// Reads the reply to `command` (one line, or lines up to `END`).
    pub fn read_reply(&mut self, command: &str) -> Vec<String> {
        let multi = matches!(
            command.split_whitespace().next(),
            Some("match" | "tables" | "members" | "help")
        );
        let mut reply = Vec::new();
        loop {
            let line = self.next_line_in(REPLY_LIMIT, command, !reply.is_empty());
            let done = !multi || line == "END" || line.starts_with("ERR ");
            reply.push(line);
            if done {
                return reply;
            }
        }
    }

    /// Writes raw bytes (which need not be UTF-8) to the node's stdin.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let ok = match self.stdin.as_mut() {
            Some(stdin) => stdin.write_all(bytes).and_then(|_| stdin.flush()).is_ok(),
            None => false,
        };
        if !ok {
            self.fail("cannot write to stdin");
        }
    }

    /// Reads the one-line reply to a command sent earlier.
    pub fn one_reply(&mut self, command: &str) -> String {
        let mut r = self.read_reply(command);
        if r.len() != 1 {
            self.fail(&format!("{command:?} gave {r:?}"));
        }
        r.remove(0)
    }

    /// The events read so far and not taken (reads what has arrived first).
    pub fn events_seen(&mut self) -> Vec<Value> {
        while let Ok(line) = self.lines.try_recv() {
            match line.text.strip_prefix("EVENT ").map(serde_json::from_str) {
                Some(Ok(v)) => self.events.push((line.at, v)),
                _ => self.fail(&format!("unexpected line {:?}", line.text)),
            }
        }
        self.events.iter().map(|(_, v)| v.clone()).collect()
    }

    /// Sends one command and returns its reply lines.
    pub fn cmd(&mut self, command: &str) -> Vec<String> {
        self.send_lines(&[command.to_string()]);
        self.read_reply(command)
    }

    /// Sends one single-line command and returns its reply line.
    pub fn one(&mut self, command: &str) -> String {
        let mut r = self.cmd(command);
        if r.len() != 1 {
            self.fail(&format!("{command:?} gave {r:?}"));
        }
        r.remove(0)
    }

    /// Sends one command and panics unless the reply is `expected`.
    pub fn expect(&mut self, command: &str, expected: &str) {
        let got = self.one(command);
        if got != expected {
            self.fail(&format!("{command:?} gave {got:?}, expected {expected:?}"));
        }
    }

    /// `ITEM` values of a list reply.
    pub fn list(&mut self, command: &str) -> Vec<String> {
        let reply = self.cmd(command);
        if reply.last().map(String::as_str) != Some("END") {
            self.fail(&format!("{command:?} gave {reply:?}"));
        }
        reply[..reply.len() - 1]
            .iter()
            .map(|l| l.strip_prefix("ITEM ").unwrap_or(l).to_string())
            .collect()
    }

    /// The `info` JSON.
    pub fn info(&mut self) -> Value {
        let line = self.one("info");
        match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => self.fail(&format!("info is not JSON ({e}): {line:?}")),
        }
    }

    /// The digest of `table` from `info`.
    pub fn digest(&mut self, table: &str) -> String {
        let info = self.info();
        table_stat(&info, table, "digest")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits (polling `members`) until the view has exactly `n` members.
    pub fn wait_members(&mut self, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let m = self.list("members");
            if m.len() == n {
                return;
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "view is {m:?} after {limit:?}, expected {n} members"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for an event for which `pred` holds (events seen before count too)
    /// and takes it; returns it and when its line was read.
    pub fn wait_event(
        &mut self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> (Instant, Value) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(i) = self.events.iter().position(|(_, v)| pred(v)) {
                return self.events.remove(i);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => match line.text.strip_prefix("EVENT ") {
                    Some(json) => match serde_json::from_str(json) {
                        Ok(v) => self.events.push((line.at, v)),
                        Err(e) => self.fail(&format!("bad EVENT line {:?}: {e}", line.text)),
                    },
                    None => self.fail(&format!(
                        "unexpected line {:?} while waiting for {what}",
                        line.text
                    )),
                },
                Err(_) => self.fail(&format!("no {what} event within {limit:?}")),
            }
        }
    }

    /// Forgets the events seen so far.
    pub fn clear_events(&mut self) {
        // Lines already read by the reader thread but not yet received count too.
        while let Ok(line) = self.lines.try_recv() {
            if !line.text.starts_with("EVENT ") {
                self.fail(&format!("unexpected line {:?}", line.text));
            }
        }
        self.events.clear();
    }

    /// Sends `quit` and waits for a clean exit.
    pub fn quit(mut self) {
        self.send_lines(&["quit".to_string()]);
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    assert!(status.success(), "node {} exited with {status}", self.name);
                    return;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => self.fail("did not exit within 10 s of quit"),
            }
        }
    }

    /// Sends `sig` (`-TERM`, `-INT`) and waits up to 10 s for the process to
    /// exit; returns its exit status.
    pub fn stop_with(mut self, sig: &str) -> std::process::ExitStatus {
        self.signal(sig);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => self.fail(&format!("did not exit within 10 s of kill {sig}")),
            }
        }
    }

    /// What the node wrote to stderr (its logs) so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the process with SIGKILL (no goodbye to the peers) and reaps it.
    pub fn kill(mut self) -> Instant {
        let _ = self.child.kill();
        let at = Instant::now();
        let _ = self.child.wait();
        at
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the process with `SIGSTOP`: it keeps its sockets open but neither
    /// answers nor sends heartbeats until `resume`. Dropping a paused node
    /// continues it before killing it.
    pub fn pause(&mut self) {
        self.signal("-STOP");
        self.paused = true;
    }

    /// Continues a process stopped by `pause` with `SIGCONT`.
    pub fn resume(&mut self) {
        self.signal("-CONT");
        self.paused = false;
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            self.fail(&format!(
                "kill {sig} {} failed: {status:?}",
                self.child.id()
            ));
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        // Not reaped yet (`try_wait` gives `None`), so the pid is still its own.
        if self.paused && matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-CONT", &self.child.id().to_string()])
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `field` of `table` in an `info` JSON (`Value::Null` when absent).
pub fn table_stat(info: &Value, table: &str, field: &str) -> Value {
    info["tables"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == table))
        .map(|t| t[field].clone())
        .unwrap_or(Value::Null)
}

/// Starts `names.len()` nodes, each seeded with the first, and waits until every
/// view is complete. `listen` gives each node's listen address.
pub fn cluster(names: &[&str], listen: &[&str]) -> Vec<NodeProc> {
    let mut nodes: Vec<NodeProc> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut spec = Spec::new(name).listen(listen.get(i).copied().unwrap_or("127.0.0.1:0"));
        if let Some(first) = nodes.first() {
            spec = spec.seed(&first.addr);
        }
        nodes.push(NodeProc::start(spec));
    }
    let n = nodes.len();
    for node in &mut nodes {
        node.wait_members(n, Duration::from_secs(15));
    }
    nodes
}

/// Polls `cond` every 10 ms until it holds; panics with `what` after `limit`.
/// Returns how long it took.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "{what}: not reached within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

/// Percentile `q` (0..1) of sorted durations, in microseconds.
pub fn percentile_us(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len() - 1);
    sorted[i].as_secs_f64() * 1e6
}
