//! Clusters across hosts: each node runs in a network namespace of its own
//! with one address (10.77.0.1, .2, ...), the hosts joined by a bridge in a
//! further namespace, so that a node listening on 0.0.0.0 has exactly one
//! address its peers can reach, as on separate machines.
//!
//! Needs root and `ip` (iproute2). The namespaces are named `lbmkv-*`, made
//! fresh by each test and deleted when it ends, also when it fails; the tests
//! take a lock each, so they run one at a time.

mod harness;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use harness::{table_stat, wait_until, NodeProc, Spec};

static SERIAL: Mutex<()> = Mutex::new(());

const SWITCH: &str = "lbmkv-sw";

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` ({e}): the host tests need iproute2 and root"));
    assert!(
        out.status.success(),
        "`ip {}` failed: {} (the host tests must run as root)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// `n` hosts on one bridge; deleted when dropped.
struct Hosts {
    n: usize,
}

impl Hosts {
    fn new(n: usize) -> Hosts {
        let hosts = Hosts { n };
        // Leftovers of a killed run would clash with the new ones.
        hosts.remove();
        ip(&["netns", "add", SWITCH]);
        ip(&["-n", SWITCH, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", SWITCH, "link", "set", "br0", "up"]);
        for i in 1..=n {
            let (ns, port) = (hosts.ns(i), format!("lbmkv-p{i}"));
            ip(&["netns", "add", &ns]);
            ip(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", SWITCH,
            ]);
            ip(&["-n", SWITCH, "link", "set", &port, "master", "br0", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", hosts.addr(i)),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        hosts
    }

    fn ns(&self, i: usize) -> String {
        format!("lbmkv-h{i}")
    }

    fn addr(&self, i: usize) -> String {
        format!("10.77.0.{i}")
    }

    /// A node named `name` on host `i`, listening on 0.0.0.0:7000.
    fn spec(&self, i: usize, name: &str) -> Spec {
        Spec::new(name).netns(&self.ns(i)).listen("0.0.0.0:7000")
    }

    fn remove(&self) {
        for ns in (1..=self.n.max(3))
            .map(|i| self.ns(i))
            .chain([SWITCH.to_string()])
        {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.remove();
    }
}

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn three_hosts_listening_on_the_wildcard_address_with_one_seed_form_a_full_mesh_and_replicate() {
    let _serial = serial();
    let hosts = Hosts::new(3);
    let seed = format!("{}:7000", hosts.addr(1));
    let mut nodes = vec![NodeProc::start(hosts.spec(1, "h1"))];
    for i in 2..=3 {
        nodes.push(NodeProc::start(hosts.spec(i, &format!("h{i}")).seed(&seed)));
    }
    // A view holds only the nodes a node has a connection of its own to:
    // three members everywhere is the full mesh.
    for n in nodes.iter_mut() {
        n.wait_members(3, Duration::from_secs(15));
    }
    for n in nodes.iter_mut() {
        n.expect("create t", "OK");
    }
    nodes[2].expect("put t k from-h3", "OK");
    nodes[1].expect("get t k", "VALUE from-h3");
    nodes[0].expect("put t k2 from-h1", "OK");
    nodes[2].expect("get t k2", "VALUE from-h1");
    for n in nodes.iter_mut() {
        let info = n.info();
        for peer in ["h1", "h2", "h3"] {
            assert!(
                info["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m == peer),
                "{} sees {peer}: {info}",
                n.name
            );
        }
    }
    for n in nodes {
        n.quit();
    }
}

#[test]
fn a_host_with_the_wrong_cookie_fails_start_with_min_members_and_says_why() {
    let _serial = serial();
    let hosts = Hosts::new(2);
    let seed = format!("{}:7000", hosts.addr(1));
    let h1 = NodeProc::start(hosts.spec(1, "h1"));
    let spec = hosts
        .spec(2, "h2")
        .seed(&seed)
        .cookie("not-the-cluster-cookie")
        .arg("--min-members")
        .arg("2")
        .arg("--request-timeout-ms")
        .arg("3000");
    let mut cmd = spec.command();
    cmd.args(["--name", "h2", "--listen", "0.0.0.0:7000"])
        .args(["--cookie", &spec.cookie])
        .args(["--seed", &seed])
        .args(&spec.extra)
        .env("LBMKV_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn lbmkv node");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for h2") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("h2 did not give up within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    let _ = child.stdout.take().unwrap().read_to_string(&mut stdout);
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    assert_eq!(
        status.code(),
        Some(1),
        "exit code; stdout {stdout:?}, stderr {stderr:?}"
    );
    assert!(
        stdout.starts_with("ERR UNAVAILABLE ") && stdout.contains(&seed),
        "the reply names the seed: {stdout:?}"
    );
    assert!(
        stdout.contains("failed authentication (different cookie)"),
        "the reply names the cause: {stdout:?}"
    );
    assert!(
        stderr.contains("WARN") && stderr.contains("different cookie"),
        "h2 logs the refusal at warn: {stderr:?}"
    );
    // The seed tells too: the dialer proves its cookie first, and the seed
    // refuses the proof without proving anything of its own.
    let seed_log = h1.stderr_text();
    assert!(
        seed_log.lines().any(|l| l.contains(" WARN ")
            && l.contains("refused a connection")
            && l.contains("h2 failed authentication (different cookie)")),
        "h1 logs the refusal at warn:\n{seed_log}"
    );
    h1.quit();
}

/// Every `node_down` among the events a node printed so far.
fn node_downs(n: &mut NodeProc) -> Vec<String> {
    n.events_seen()
        .into_iter()
        .filter(|e| e["type"] == "node_down")
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn a_60_mib_value_replicates_between_hosts_and_one_above_the_limit_is_refused_without_node_down() {
    let _serial = serial();
    let hosts = Hosts::new(2);
    let seed = format!("{}:7000", hosts.addr(1));
    const SIZE: usize = 60 * 1024 * 1024;
    // Default limits and failure detection.
    let spec = |i: usize| {
        let mut s = hosts.spec(i, &format!("h{i}"));
        s.failure_timeout_ms = 2000;
        s
    };
    let mut h1 = NodeProc::start(spec(1));
    let mut h2 = NodeProc::start(spec(2).seed(&seed));
    h1.wait_members(2, Duration::from_secs(15));
    h2.wait_members(2, Duration::from_secs(15));
    h1.expect("create big", "OK");
    h2.expect("create big", "OK");
    // `fill T 1 SIZE` writes one value of SIZE bytes under key-000000000000.
    let mut pair = [h1, h2];
    for w in 0..2 {
        let [a, b] = &mut pair;
        let (writer, reader) = if w == 0 { (a, b) } else { (b, a) };
        let started = Instant::now();
        writer.expect(&format!("fill big 1 {SIZE}"), "OK");
        let took = started.elapsed();
        let info = reader.info();
        assert_eq!(table_stat(&info, "big", "entries"), 1, "{info}");
        let bytes = table_stat(&info, "big", "bytes").as_u64().unwrap();
        assert!(
            bytes >= SIZE as u64,
            "{} holds the value: {info}",
            reader.name
        );
        println!("a {SIZE}-byte put from {} took {took:?}", writer.name);
    }
    let [mut h1, mut h2] = pair;
    for n in [&mut h1, &mut h2] {
        assert_eq!(
            node_downs(n),
            Vec::<String>::new(),
            "{} saw no node_down",
            n.name
        );
    }
    let (d1, d2) = (h1.digest("big"), h2.digest("big"));
    assert_eq!(d1, d2, "both hosts hold the same table");
    // Limits that say no: a value above the value limit is refused up front.
    let small = |i: usize| spec(i).arg("--max-value-size").arg("1048576");
    h1.quit();
    h2.quit();
    let mut s1 = NodeProc::start(small(1));
    let mut s2 = NodeProc::start(small(2).seed(&seed));
    s1.wait_members(2, Duration::from_secs(15));
    s2.wait_members(2, Duration::from_secs(15));
    s2.expect("create t", "OK");
    let reply = s2.one("fill t 1 2097152");
    assert!(
        reply.starts_with("ERR INVALID_ARGUMENT ") && reply.contains("limit"),
        "a value above the limit: {reply:?}"
    );
    s2.expect("fill t 1 1048576", "OK");
    s1.expect("get t nothing", "NIL");
    // Longer than the failure timeout: a drop would have shown by now.
    std::thread::sleep(Duration::from_millis(2500));
    for n in [&mut s1, &mut s2] {
        assert_eq!(
            node_downs(n),
            Vec::<String>::new(),
            "{} saw no node_down",
            n.name
        );
    }
    s1.quit();
    s2.quit();
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Writes 32 MiB (32 values of 1 MiB, the same keys each time) again and
/// again for `how_long`; the sender's largest RSS meanwhile, in KiB.
fn load(n: &mut NodeProc, how_long: Duration) -> (u64, usize, Vec<u64>) {
    let (mut peak, mut writes) = (0, 0);
    let mut samples = Vec::new();
    let until = Instant::now() + how_long;
    while Instant::now() < until {
        let reply = n.one("fill load 32 1048576");
        assert!(
            reply == "OK"
                || reply.starts_with("ERR UNAVAILABLE")
                || reply.starts_with("ERR TIMEOUT"),
            "{reply}"
        );
        writes += 1;
        let rss = rss_kib(n.pid());
        samples.push(rss);
        peak = peak.max(rss);
    }
    let mib: Vec<u64> = samples.iter().map(|k| k / 1024).collect();
    println!("RSS after each round, MiB: {mib:?}");
    (peak, writes, samples)
}

/// The bound this test states for the growth of the sender's RSS when its
/// peer stops: twice the write budget (62.75 MiB with default limits: the
/// writes held for the stopped peer until it is dropped, and the allocator's
/// slack for as much again) plus one round of the load. Measured: 60-130 MiB.
const STALL_BOUND_KIB: u64 = 160 * 1024;
/// Once the peer is dropped, the sender's RSS stays flat: its second half of
/// the stopped phase may not exceed the first half's peak by more than this.
const PLATEAU_SLACK_KIB: u64 = 32 * 1024;

#[test]
fn a_stalled_peer_does_not_grow_the_senders_memory() {
    let _serial = serial();
    let hosts = Hosts::new(2);
    let seed = format!("{}:7000", hosts.addr(1));
    let mut h1 = NodeProc::start(hosts.spec(1, "h1"));
    let mut h2 = NodeProc::start(hosts.spec(2, "h2").seed(&seed));
    h1.wait_members(2, Duration::from_secs(15));
    h2.wait_members(2, Duration::from_secs(15));
    h1.expect("create load", "OK");
    h2.expect("create load", "OK");
    let (before, w1, _) = load(&mut h1, Duration::from_secs(3));
    h2.pause();
    let (stalled, w2, samples) = load(&mut h1, Duration::from_secs(8));
    h2.resume();
    let growth = stalled.saturating_sub(before);
    println!(
        "sender RSS: {} MiB peak with both hosts ({w1} rounds of 32 MiB), {} MiB peak with the \
         peer stopped ({w2} rounds); growth {} MiB, bound {} MiB",
        before / 1024,
        stalled / 1024,
        growth / 1024,
        STALL_BOUND_KIB / 1024
    );
    assert!(w2 >= 4, "writes went on while the peer was stopped");
    let (first, second) = samples.split_at(samples.len() / 2);
    let first_peak = first.iter().copied().max().unwrap_or(0);
    let second_peak = second.iter().copied().max().unwrap_or(0);
    assert!(
        second_peak <= first_peak + PLATEAU_SLACK_KIB,
        "the sender kept growing with its peer stopped: {} then {} MiB",
        first_peak / 1024,
        second_peak / 1024
    );
    assert!(
        growth <= STALL_BOUND_KIB,
        "the sender grew by {growth} KiB with its peer stopped (bound {STALL_BOUND_KIB} KiB)"
    );
    h1.wait_members(2, Duration::from_secs(20));
    h1.quit();
    h2.quit();
}

/// Certificates written by `lbmkv certs` for the TLS tests, in a directory of
/// their own under the test's temporary directory: `good/` (the cluster's CA
/// and h1, h2, h3, hx), `other/` (h2 signed by another CA) and `expired/` (h2
/// signed by the cluster's CA, expired yesterday).
struct Certs {
    root: std::path::PathBuf,
}

impl Certs {
    fn new() -> Certs {
        let root = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("tls-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let certs = Certs { root };
        certs.make("good", &["--names", "h1,h2,h3,hx"]);
        certs.make("other", &["--names", "h2"]);
        let expired = certs.root.join("expired");
        std::fs::create_dir_all(&expired).unwrap();
        for f in ["ca.pem", "ca.key"] {
            std::fs::copy(certs.root.join("good").join(f), expired.join(f)).unwrap();
        }
        certs.make("expired", &["--names", "h2", "--expired"]);
        certs
    }

    fn make(&self, dir: &str, args: &[&str]) {
        let out = Command::new(env!("CARGO_BIN_EXE_lbmkv"))
            .args(["certs", "--out"])
            .arg(self.root.join(dir))
            .args(args)
            .output()
            .expect("run lbmkv certs");
        assert!(
            out.status.success(),
            "lbmkv certs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn file(&self, dir: &str, name: &str) -> String {
        self.root.join(dir).join(name).display().to_string()
    }

    /// `spec` with the certificate `cert` of `dir` and the cluster's CA.
    fn tls(&self, spec: Spec, dir: &str, cert: &str) -> Spec {
        spec.arg("--tls-cert")
            .arg(&self.file(dir, &format!("{cert}.pem")))
            .arg("--tls-key")
            .arg(&self.file(dir, &format!("{cert}.key")))
            .arg("--tls-ca")
            .arg(&self.file("good", "ca.pem"))
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Waits until a warning line of `n`'s log contains every one of `parts`.
fn wait_logged(n: &NodeProc, parts: &[&str]) {
    wait_logged_since(n, 0, parts)
}

/// [`wait_logged`] among the lines after the first `since` bytes of the log.
fn wait_logged_since(n: &NodeProc, since: usize, parts: &[&str]) {
    let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(Duration::from_secs(15), "a warning", || {
            let text = n.stderr_text();
            text.get(since..)
                .unwrap_or("")
                .lines()
                .any(|l| l.contains(" WARN ") && parts.iter().all(|p| l.contains(p)))
        })
    }));
    if found.is_err() {
        panic!(
            "{} logged no warning with {parts:?}; its log:\n{}",
            n.name,
            n.stderr_text()
        );
    }
}

/// Cuts host `i` off from every other host with nftables drop rules in its
/// own namespace; `heal` removes them.
fn cut_off(hosts: &Hosts, i: usize) {
    let rules = "table inet lbmkv_split {
        chain input { type filter hook input priority 0; policy accept; iifname \"eth0\" drop; }
        chain output { type filter hook output priority 0; policy accept; oifname \"eth0\" drop; }
    }";
    let mut child = Command::new("ip")
        .args(["netns", "exec", &hosts.ns(i), "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("run nft in the host's namespace (needs root and nftables)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(rules.as_bytes()).unwrap();
    }
    assert!(
        child.wait().unwrap().success(),
        "nft could not cut host {i} off"
    );
}

fn heal(hosts: &Hosts, i: usize) {
    let status = Command::new("ip")
        .args([
            "netns",
            "exec",
            &hosts.ns(i),
            "nft",
            "delete",
            "table",
            "inet",
            "lbmkv_split",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "nft could not heal host {i}");
}

#[test]
fn three_tls_hosts_replicate_and_heal_a_netsplit() {
    let _serial = serial();
    let certs = Certs::new();
    let hosts = Hosts::new(3);
    let seed = format!("{}:7000", hosts.addr(1));
    let spec = |i: usize| {
        let name = format!("h{i}");
        let s = hosts.spec(i, &name);
        let s = if i == 1 { s } else { s.seed(&seed) };
        certs.tls(s, "good", &name)
    };
    let mut nodes: Vec<NodeProc> = (1..=3).map(|i| NodeProc::start(spec(i))).collect();
    for n in nodes.iter_mut() {
        n.wait_members(3, Duration::from_secs(15));
    }
    for n in nodes.iter_mut() {
        n.expect("create t", "OK");
    }
    nodes[1].expect("put t k over-tls", "OK");
    nodes[0].expect("get t k", "VALUE over-tls");
    nodes[2].expect("get t k", "VALUE over-tls");
    // The netsplit: h3 alone, h1 and h2 together; both sides go on writing.
    cut_off(&hosts, 3);
    nodes[0].wait_members(2, Duration::from_secs(15));
    nodes[1].wait_members(2, Duration::from_secs(15));
    nodes[2].wait_members(1, Duration::from_secs(15));
    nodes[0].expect("put t left from-majority", "OK");
    nodes[2].expect("put t right from-h3", "OK");
    heal(&hosts, 3);
    for n in nodes.iter_mut() {
        n.wait_members(3, Duration::from_secs(20));
    }
    for n in nodes.iter_mut() {
        wait_until(Duration::from_secs(10), "the merge after the heal", || {
            n.one("get t left") == "VALUE from-majority" && n.one("get t right") == "VALUE from-h3"
        });
    }
    let digests: Vec<String> = nodes.iter_mut().map(|n| n.digest("t")).collect();
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    // Nothing went in plain text: no node warned of it.
    for n in &nodes {
        assert!(
            !n.stderr_text().contains("without TLS"),
            "{}",
            n.stderr_text()
        );
    }
    for n in nodes {
        n.quit();
    }
}

#[test]
fn tls_hosts_refuse_a_certificate_of_another_ca_an_expired_one_and_one_for_another_name() {
    let _serial = serial();
    let certs = Certs::new();
    let hosts = Hosts::new(2);
    let seed = format!("{}:7000", hosts.addr(1));
    let mut h1 = NodeProc::start(certs.tls(hosts.spec(1, "h1"), "good", "h1"));
    // (directory, certificate, what h1 says, what h2 says)
    let cases = [
        (
            "other",
            "h2",
            "not signed by this cluster's CA",
            "the peer refused this node's certificate",
        ),
        (
            "expired",
            "h2",
            "its certificate has expired",
            "the peer refused this node's certificate",
        ),
        (
            "good",
            "hx",
            "is not for node \"h2\" (it names hx)",
            "refused this node: its certificate is not for node \"h2\"",
        ),
    ];
    for (dir, cert, keeper_says, guest_says) in cases {
        // Each case looks at the lines h1 logs from its start on.
        let since = h1.stderr_text().len();
        let mut h2 = NodeProc::start(certs.tls(hosts.spec(2, "h2").seed(&seed), dir, cert));
        wait_logged_since(&h1, since, &["refused a connection", keeper_says]);
        wait_logged(&h2, &["dial refused", guest_says]);
        assert_eq!(h1.list("members"), vec!["h1"], "{dir}/{cert}");
        assert_eq!(h2.list("members"), vec!["h2"], "{dir}/{cert}");
        h2.quit();
    }
    h1.expect("create t", "OK");
    h1.quit();
}

#[test]
fn a_plain_text_host_cannot_join_a_tls_cluster_and_both_say_why() {
    let _serial = serial();
    let certs = Certs::new();
    let hosts = Hosts::new(2);
    let seed = format!("{}:7000", hosts.addr(1));
    let mut h1 = NodeProc::start(certs.tls(hosts.spec(1, "h1"), "good", "h1"));
    let mut h2 = NodeProc::start(hosts.spec(2, "h2").seed(&seed));
    wait_logged(
        &h1,
        &["refused a plain-text connection", "this node requires TLS"],
    );
    wait_logged(
        &h2,
        &["dial refused", "h1 requires TLS", "connected in plain text"],
    );
    // The plain node listens beyond loopback: it warned at start.
    wait_logged(&h2, &["non-loopback address without TLS"]);
    // And the TLS node dialing the plain one is refused too, both saying why.
    let reply = h1.one(&format!("connect {}:7000", hosts.addr(2)));
    assert!(
        reply.starts_with("ERR ") && reply.contains("a node without TLS"),
        "{reply}"
    );
    wait_logged(&h2, &["refused a TLS connection", "no TLS configured"]);
    assert_eq!(h1.list("members"), vec!["h1"]);
    assert_eq!(h2.list("members"), vec!["h2"]);
    h1.quit();
    h2.quit();
}
