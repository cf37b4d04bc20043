//! Netsplits between real `lbmkv node` processes. Each node listens on its own
//! loopback address (127.0.0.11, .12, ...; the whole 127/8 is loopback on
//! Linux) and its outgoing connections come from that address, so nftables
//! rules that silently drop packets between two addresses cut exactly those
//! two nodes apart, with no reset: peers only notice the silence.
//!
//! Needs root and the `nft` binary (Debian package `nftables`; `make test-cli`
//! installs it). Without them these tests fail with a message saying so.
//! They take a lock each, so they run one at a time even in one test binary.

mod harness;

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use harness::{cluster, table_stat, wait_until, NodeProc};

/// Our own nftables table; nothing else on the host is touched.
const NFT_TABLE: &str = "lbmkv_test";
const FAILURE_TIMEOUT: Duration = Duration::from_millis(1000);

static SERIAL: Mutex<()> = Mutex::new(());

fn nft(args: &[&str]) -> Result<(), String> {
    let out = Command::new("nft")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            format!(
                "cannot run `nft` ({e}): the partition tests need the nft binary \
                 (Debian package nftables; `make test-cli` installs it) and root"
            )
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`nft {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The table `inet lbmkv_test` with an input chain; deleted when dropped, also
/// when the test fails. Drops happen on input, so the sender sees nothing.
struct Firewall {
    cuts: Vec<(String, String)>,
}

impl Firewall {
    fn new() -> Firewall {
        match effective_uid() {
            Some(0) => {}
            uid => panic!(
                "the partition tests cut loopback traffic with nftables and must run as root \
                 (effective uid {uid:?}); run them as root, or leave them out with \
                 `make test-cli LBMKV_NO_NFT=1`"
            ),
        }
        // A table left over by a killed run would cut the new nodes.
        let _ = nft(&["delete", "table", "inet", NFT_TABLE]);
        let setup = format!(
            "add table inet {NFT_TABLE}\n\
             add chain inet {NFT_TABLE} input {{ type filter hook input priority 0; policy accept; }}\n"
        );
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `nft` ({e}): the partition tests need the nft binary \
                     (Debian package nftables; `make test-cli` installs it)"
                )
            });
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("nft stdin");
            stdin.write_all(setup.as_bytes()).expect("write nft rules");
        }
        let status = child.wait().expect("wait for nft");
        assert!(
            status.success(),
            "nft could not create table inet {NFT_TABLE}"
        );
        Firewall { cuts: Vec::new() }
    }

    /// Drops every packet between the IPs `a` and `b`, both directions.
    fn cut(&mut self, a: &str, b: &str) {
        for (from, to) in [(a, b), (b, a)] {
            if let Err(e) = nft(&[
                "add", "rule", "inet", NFT_TABLE, "input", "ip", "saddr", from, "ip", "daddr", to,
                "drop",
            ]) {
                panic!("{e}");
            }
        }
        self.cuts.push((a.to_string(), b.to_string()));
    }

    /// Cuts every node of `left` from every node of `right`.
    fn split(&mut self, left: &[&NodeProc], right: &[&NodeProc]) {
        for l in left {
            for r in right {
                self.cut(ip(l), ip(r));
            }
        }
    }

    /// Removes every rule.
    fn heal(&mut self) {
        if let Err(e) = nft(&["flush", "chain", "inet", NFT_TABLE, "input"]) {
            panic!("{e}");
        }
        self.cuts.clear();
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        if let Err(e) = nft(&["delete", "table", "inet", NFT_TABLE]) {
            eprintln!("warning: {e}");
        }
    }
}

fn ip(n: &NodeProc) -> &str {
    n.addr
        .rsplit_once(':')
        .map_or(n.addr.as_str(), |(ip, _)| ip)
}

/// Takes the serial lock (a failed test must not stop the others).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Nodes named `names` on 127.0.0.11, .12, ... joined into one cluster,
/// with `table` created and replicated.
fn start(names: &[&str], table: &str) -> Vec<NodeProc> {
    let listen: Vec<String> = (0..names.len())
        .map(|i| format!("127.0.0.{}:0", 11 + i))
        .collect();
    let listen: Vec<&str> = listen.iter().map(String::as_str).collect();
    let mut nodes = cluster(names, &listen);
    nodes[0].expect(&format!("create {table}"), "OK");
    for n in nodes.iter_mut() {
        wait_until(Duration::from_secs(10), "table replicated", || {
            n.list("tables").iter().any(|t| t == table)
        });
        n.expect(&format!("create {table}"), "OK");
        n.clear_events();
    }
    nodes
}

/// Waits until each node of `side` has seen `node_down` for every node of
/// `other`; prints and returns the longest detection time since `cut_at`.
fn wait_detected(side: &mut [NodeProc], other: &[String], cut_at: Instant) -> Duration {
    let limit = FAILURE_TIMEOUT + Duration::from_millis(2000);
    let mut longest = Duration::ZERO;
    for n in side.iter_mut() {
        for gone in other {
            let (seen, ev) = n.wait_event(limit, "node_down", |ev| {
                ev["type"] == "node_down" && ev["node"] == gone.as_str()
            });
            let took = seen.duration_since(cut_at);
            println!(
                "failure detection after a silent cut: {} saw {gone} down after {:.0} ms ({})",
                n.name,
                took.as_secs_f64() * 1e3,
                ev["reason"]
            );
            assert!(took <= limit, "{} detected {gone} after {took:?}", n.name);
            longest = longest.max(took);
        }
    }
    longest
}

/// Heals and waits until every node sees all and every digest of `table` is
/// the same; prints and returns the time from the heal.
fn heal_and_converge(fw: &mut Firewall, nodes: &mut [NodeProc], table: &str) -> Duration {
    let n = nodes.len();
    let healed_at = Instant::now();
    fw.heal();
    let took = wait_until(Duration::from_secs(15), "digests equal after heal", || {
        let digests: Vec<String> = nodes.iter_mut().map(|node| node.digest(table)).collect();
        digests.iter().all(|d| !d.is_empty() && *d == digests[0])
    });
    for node in nodes.iter_mut() {
        node.wait_members(n, Duration::from_secs(10));
    }
    println!(
        "heal: identical digests of {table:?} on {n} nodes {:.0} ms after the rules were removed",
        healed_at.elapsed().as_secs_f64() * 1e3
    );
    took
}

/// Cuts the third of three nodes off from the first two, and waits until both
/// sides have seen the other side go down.
fn cut_off_the_third(fw: &mut Firewall, nodes: &mut [NodeProc]) {
    let cut_at = Instant::now();
    {
        let (ab, c) = nodes.split_at(2);
        fw.split(&[&ab[0], &ab[1]], &[&c[0]]);
    }
    let (ab, c) = nodes.split_at_mut(2);
    let (ab_names, c_names) = (names(ab), names(c));
    wait_detected(ab, &c_names, cut_at);
    wait_detected(c, &ab_names, cut_at);
}

fn names(nodes: &[NodeProc]) -> Vec<String> {
    nodes.iter().map(|n| n.name.clone()).collect()
}

#[test]
fn simple_netsplit_writes_on_both_sides_are_everywhere_after_heal() {
    let _serial = serial();
    let mut fw = Firewall::new();
    let mut nodes = start(&["ns1", "ns2", "ns3"], "split");
    nodes[0].expect("put split before both", "OK");

    cut_off_the_third(&mut fw, &mut nodes);
    let (ab, c) = nodes.split_at_mut(2);
    ab[0].wait_members(2, Duration::from_secs(2));
    c[0].wait_members(1, Duration::from_secs(2));

    // Both sides stay writable, with keys the other side does not touch.
    for i in 0..5 {
        ab[i % 2].expect(&format!("put split left{i} L{i}"), "OK");
        c[0].expect(&format!("put split right{i} R{i}"), "OK");
    }
    c[0].expect("get split left0", "NIL");
    ab[0].expect("get split right0", "NIL");

    heal_and_converge(&mut fw, &mut nodes, "split");
    for n in nodes.iter_mut() {
        n.expect("get split before", "VALUE both");
        for i in 0..5 {
            n.expect(&format!("get split left{i}"), &format!("VALUE L{i}"));
            n.expect(&format!("get split right{i}"), &format!("VALUE R{i}"));
        }
        assert_eq!(table_stat(&n.info(), "split", "entries"), 11);
    }
    // The healed cluster orders writes again across all nodes.
    nodes[2].expect("incr split n", "VALUE 1");
    nodes[0].expect("incr split n", "VALUE 2");
}

#[test]
fn a_conflict_without_handler_keeps_the_newest_write_everywhere_and_logs_the_loser() {
    let _serial = serial();
    let mut fw = Firewall::new();
    let mut nodes = start(&["cf1", "cf2", "cf3"], "conf");
    nodes[0].expect("put conf x base", "OK");

    cut_off_the_third(&mut fw, &mut nodes);
    nodes[0].expect("put conf x older", "PREV base");
    // Clock dots carry millisecond timestamps: the second write is newer.
    std::thread::sleep(Duration::from_millis(50));
    nodes[2].expect("put conf x newer", "PREV base");

    heal_and_converge(&mut fw, &mut nodes, "conf");
    let mut logged = 0u64;
    for n in nodes.iter_mut() {
        n.expect("get conf x", "VALUE newer");
        let conflicts = table_stat(&n.info(), "conf", "conflicts")
            .as_u64()
            .unwrap_or(0);
        logged += conflicts;
    }
    assert!(logged >= 1, "the losing version is in a conflict log");
    // The nodes that logged it said so with a fallback `conflict` event.
    let events: Vec<serde_json::Value> = nodes.iter_mut().flat_map(|n| n.events_seen()).collect();
    assert!(
        events.iter().any(|e| e["type"] == "conflict"
            && e["table"] == "conf"
            && e["key"] == "x"
            && e["resolution"] == "fallback"),
        "a fallback conflict event: {events:?}"
    );
    println!("conflict: {logged} conflict log entries across the nodes");
}

#[test]
fn a_conflict_with_a_handler_gets_the_handlers_value_everywhere() {
    let _serial = serial();
    let mut fw = Firewall::new();
    let mut nodes = start(&["hd1", "hd2", "hd3"], "hand");
    for n in nodes.iter_mut() {
        n.expect("create hand max", "OK");
    }
    nodes[0].expect("put hand x 1", "OK");

    cut_off_the_third(&mut fw, &mut nodes);
    // The fallback would keep the newer write (5); the handler keeps the larger (70).
    nodes[1].expect("put hand x 70", "PREV 1");
    std::thread::sleep(Duration::from_millis(50));
    nodes[2].expect("put hand x 5", "PREV 1");

    heal_and_converge(&mut fw, &mut nodes, "hand");
    // The handler's decision is a replicated write made just after the merge.
    wait_until(
        Duration::from_secs(10),
        "the handler's value everywhere",
        || nodes.iter_mut().all(|n| n.one("get hand x") == "VALUE 70"),
    );
    for n in nodes.iter_mut() {
        let conflicts = table_stat(&n.info(), "hand", "conflicts")
            .as_u64()
            .unwrap_or(0);
        assert_eq!(conflicts, 0, "a decided conflict is not a logged loss");
    }
    let events: Vec<serde_json::Value> = nodes.iter_mut().flat_map(|n| n.events_seen()).collect();
    let decided: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["type"] == "conflict" && e["table"] == "hand" && e["key"] == "x")
        .collect();
    assert_eq!(
        decided.len(),
        1,
        "one node decided the conflict once: {decided:?}"
    );
    assert_eq!(decided[0]["resolution"], "handler");
}

#[test]
fn a_key_deleted_on_one_side_of_a_split_stays_deleted_after_heal() {
    let _serial = serial();
    let mut fw = Firewall::new();
    let mut nodes = start(&["dl1", "dl2", "dl3"], "del");
    nodes[0].expect("put del doomed v", "OK");
    nodes[0].expect("put del kept v", "OK");

    cut_off_the_third(&mut fw, &mut nodes);
    nodes[2].expect("del del doomed", "PREV v");
    // The other side writes too, just not that key.
    nodes[1].expect("put del other w", "OK");

    heal_and_converge(&mut fw, &mut nodes, "del");
    for n in nodes.iter_mut() {
        n.expect("get del doomed", "NIL");
        n.expect("get del kept", "VALUE v");
        n.expect("get del other", "VALUE w");
        let info = n.info();
        assert!(table_stat(&info, "del", "tombstones").as_u64().unwrap_or(0) >= 1);
    }
}

#[test]
fn heal_of_10000_keys_with_1_percent_differing_sends_under_a_tenth_of_the_table() {
    const KEYS: usize = 10_000;
    const DIFFERING: usize = KEYS / 100;
    let _serial = serial();
    let mut fw = Firewall::new();
    let mut nodes = start(&["hb1", "hb2"], "big");
    let value = "v".repeat(100);
    let lines: Vec<String> = (0..KEYS)
        .map(|i| format!("put big key-{i:08} {value}"))
        .collect();
    nodes[0].send_lines(&lines);
    for _ in 0..KEYS {
        let r = nodes[0].one_reply("put");
        assert_eq!(r, "OK");
    }
    let table_bytes = table_stat(&nodes[1].info(), "big", "bytes")
        .as_u64()
        .unwrap_or(0);
    assert!(
        table_bytes >= (KEYS * 100) as u64,
        "{table_bytes} bytes replicated"
    );

    let cut_at = Instant::now();
    {
        let (a, b) = nodes.split_at(1);
        fw.split(&[&a[0]], &[&b[0]]);
    }
    let detection = {
        let (a, b) = nodes.split_at_mut(1);
        let (a_names, b_names) = (names(a), names(b));
        wait_detected(a, &b_names, cut_at).max(wait_detected(b, &a_names, cut_at))
    };
    let changed: Vec<String> = (0..DIFFERING)
        .map(|i| format!("put big key-{:08} changed-{i}", i * 100))
        .collect();
    nodes[1].send_lines(&changed);
    for _ in 0..DIFFERING {
        let r = nodes[1].one_reply("put");
        assert!(r.starts_with("PREV "), "{r}");
    }
    let sent_before: u64 = nodes
        .iter_mut()
        .map(|n| n.info()["merge_bytes_sent"].as_u64().unwrap_or(0))
        .sum();

    let heal = heal_and_converge(&mut fw, &mut nodes, "big");
    let sent_after: u64 = nodes
        .iter_mut()
        .map(|n| n.info()["merge_bytes_sent"].as_u64().unwrap_or(0))
        .sum();
    let merge_bytes = sent_after - sent_before;
    for i in [0, 1, DIFFERING - 1] {
        nodes[0].expect(
            &format!("get big key-{:08}", i * 100),
            &format!("VALUE changed-{i}"),
        );
    }
    nodes[0].expect("get big key-00000001", &format!("VALUE {value}"));
    println!(
        "heal of {KEYS} keys with {DIFFERING} differing: {:.0} ms to identical digests, \
         {merge_bytes} merge bytes sent (table: {table_bytes} bytes, {:.1}%); \
         failure detection {:.0} ms",
        heal.as_secs_f64() * 1e3,
        merge_bytes as f64 * 100.0 / table_bytes as f64,
        detection.as_secs_f64() * 1e3
    );
    assert!(merge_bytes > 0, "the merge sent something");
    // A full copy would be the whole table plus clocks. The digest descent
    // (16 bucket digests per differing bucket and level), the summaries of the
    // differing buckets and both versions of each differing key come on top of
    // the 1% that differs: a tenth of the table bounds all that.
    assert!(
        merge_bytes * 10 < table_bytes,
        "merge sent {merge_bytes} bytes for a table of {table_bytes} bytes"
    );
}
