//! Cluster scenarios with real `lbmkv node` processes on loopback, driven
//! through the line protocol of the node shell.

mod harness;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use harness::{cluster, percentile_us, table_stat, wait_until, NodeProc, Spec};

/// A cluster of `n` processes on 127.0.0.1 named `prefix1..`.
fn local_cluster(prefix: &str, n: usize) -> Vec<NodeProc> {
    let names: Vec<String> = (1..=n).map(|i| format!("{prefix}{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    cluster(&names, &[])
}

/// Creates `table` on the first node and waits until every node lists it.
fn create_everywhere(nodes: &mut [NodeProc], table: &str) {
    nodes[0].expect(&format!("create {table}"), "OK");
    for n in nodes.iter_mut() {
        wait_until(Duration::from_secs(10), "table replicated", || {
            n.list("tables").iter().any(|t| t == table)
        });
        // Idempotent, and returns once the table is usable on that node.
        n.expect(&format!("create {table}"), "OK");
    }
}

#[test]
fn unique_table_put_and_delete_reach_four_processes_and_a_restarted_one() {
    let mut nodes = local_cluster("u", 4);
    create_everywhere(&mut nodes, "unique");

    nodes[0].expect("put unique key value one", "OK");
    // Acknowledged only after every member applied it: local reads see it at once.
    for n in nodes.iter_mut() {
        n.expect("get unique key", "VALUE value one");
    }
    nodes[1].expect("del unique key", "PREV value one");
    for n in nodes.iter_mut() {
        n.expect("get unique key", "NIL");
    }

    // Stop the fourth node cleanly, write while it is away, start it again.
    let gone = nodes.pop().expect("four nodes");
    let name = gone.name.clone();
    gone.quit();
    for n in nodes.iter_mut() {
        n.wait_members(3, Duration::from_secs(5));
    }
    nodes[2].expect("put unique later written while away", "OK");
    let mut back = NodeProc::start(Spec::new(&name).seed(&nodes[0].addr));
    back.wait_members(4, Duration::from_secs(15));
    back.expect("create unique", "OK");
    back.expect("get unique later", "VALUE written while away");
    back.expect("get unique key", "NIL");
    // And the restarted node's writes reach the others.
    back.expect("put unique from-restarted yes", "OK");
    for n in nodes.iter_mut() {
        n.expect("get unique from-restarted", "VALUE yes");
    }
}

#[test]
fn sequencer_three_processes_900_increments_give_900_distinct_values() {
    const PER_NODE: usize = 300;
    let mut nodes = local_cluster("s", 3);
    create_everywhere(&mut nodes, "seq");
    let lines = vec!["incr seq counter".to_string(); PER_NODE];
    let started = Instant::now();
    // All three processes get their 300 lines before any reply is read, so the
    // increments of different nodes race at the sequencer.
    for n in nodes.iter_mut() {
        n.send_lines(&lines);
    }
    let mut all = Vec::new();
    for n in nodes.iter_mut() {
        let mut last = 0u64;
        for _ in 0..PER_NODE {
            let reply = n.one_reply("incr seq counter");
            let v: u64 = reply
                .strip_prefix("VALUE ")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| n.fail(&format!("incr gave {reply:?}")));
            // One shell executes its lines in order.
            assert!(v > last, "{}: {v} after {last}", n.name);
            last = v;
            all.push(v);
        }
    }
    let elapsed = started.elapsed();
    let distinct: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        3 * PER_NODE,
        "every increment got its own value"
    );
    assert_eq!(distinct.first(), Some(&1));
    assert_eq!(distinct.last(), Some(&(3 * PER_NODE as u64)));
    for n in nodes.iter_mut() {
        n.expect("get seq counter", "VALUE 900");
        n.expect("sget seq counter", "VALUE 900");
    }
    println!(
        "sequencer: 900 increments from 3 processes in {:.0} ms ({:.0} per s)",
        elapsed.as_secs_f64() * 1e3,
        900.0 / elapsed.as_secs_f64()
    );
}

#[test]
fn sigkill_is_detected_within_the_failure_timeout_and_survivors_keep_writing() {
    let mut nodes = local_cluster("k", 3);
    create_everywhere(&mut nodes, "alive");
    nodes[0].expect("put alive before kill", "OK");
    for n in nodes.iter_mut() {
        n.clear_events();
    }
    let victim = nodes.pop().expect("three nodes");
    let victim_name = victim.name.clone();
    let killed_at = victim.kill();
    let failure_timeout = Duration::from_millis(1000);
    let limit = failure_timeout + Duration::from_millis(1500);
    for n in nodes.iter_mut() {
        let (seen, ev) = n.wait_event(limit, "node_down", |ev| {
            ev["type"] == "node_down" && ev["node"] == victim_name.as_str()
        });
        let took = seen.duration_since(killed_at);
        println!(
            "failure detection after SIGKILL: {} saw node_down of {victim_name} after {:.1} ms ({})",
            n.name,
            took.as_secs_f64() * 1e3,
            ev["reason"]
        );
        assert!(took <= limit, "node_down after {took:?}");
    }
    for n in nodes.iter_mut() {
        n.wait_members(2, Duration::from_secs(1));
    }
    nodes[0].expect("put alive after kill", "OK");
    nodes[1].expect("get alive after", "VALUE kill");
    nodes[1].expect("incr alive n", "VALUE 1");
    nodes[0].expect("get alive n", "VALUE 1");
}

#[test]
fn sigterm_and_sigint_make_a_node_leave_cleanly_and_exit_0() {
    let mut nodes = local_cluster("t", 3);
    for n in nodes.iter_mut() {
        n.clear_events();
    }
    let failure_timeout = Duration::from_millis(1000);
    for sig in ["-TERM", "-INT"] {
        let victim = nodes.pop().expect("a node to stop");
        let name = victim.name.clone();
        let sent = Instant::now();
        let status = victim.stop_with(sig);
        assert_eq!(status.code(), Some(0), "{name} after kill {sig}: {status}");
        for n in nodes.iter_mut() {
            let (seen, ev) = n.wait_event(Duration::from_secs(3), "node_down", |ev| {
                ev["type"] == "node_down" && ev["node"] == name.as_str()
            });
            assert_eq!(
                ev["reason"], "left the cluster",
                "{} after kill {sig}",
                n.name
            );
            let took = seen.duration_since(sent);
            println!(
                "kill {sig}: {} saw {name} leave after {:.1} ms",
                n.name,
                took.as_secs_f64() * 1e3
            );
            assert!(took < failure_timeout, "{name} left after {took:?}");
        }
    }
    nodes[0].wait_members(1, Duration::from_secs(1));
}

#[test]
fn a_node_with_the_wrong_cookie_is_refused_and_never_sees_a_table() {
    let mut nodes = local_cluster("c", 2);
    create_everywhere(&mut nodes, "secret");
    nodes[0].expect("put secret k v", "OK");
    let mut intruder = NodeProc::start(
        Spec::new("intruder")
            .cookie("not-the-cookie")
            .seed(&nodes[0].addr)
            .seed(&nodes[1].addr)
            .arg("--log-level")
            .arg("warn"),
    );
    let reply = intruder.one(&format!("connect {}", nodes[0].addr));
    assert!(
        reply.starts_with("ERR "),
        "connect with a wrong cookie gave {reply:?}"
    );
    // Several dial rounds of the intruder and a failure timeout go by.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(intruder.list("members"), ["intruder"]);
    assert!(
        intruder.list("tables").is_empty(),
        "the intruder sees no table"
    );
    intruder.expect(
        "get secret k",
        "ERR NO_SUCH_TABLE no table named \"secret\"",
    );
    for n in nodes.iter_mut() {
        let members = n.list("members");
        assert!(!members.contains(&"intruder".to_string()), "{members:?}");
        assert!(
            !n.events_seen().iter().any(|e| e["node"] == "intruder"),
            "no node_up of the intruder"
        );
    }
    nodes[1].expect("put secret k2 still writable", "OK");
    // The engine's warning reaches the command's stderr, at --log-level warn.
    let log = intruder.stderr_text();
    assert!(
        log.lines().any(
            |l| l.contains(" WARN lbmkv::cluster::membership: dial refused:")
                && l.contains("failed authentication (different cookie)")
        ),
        "no dial refused warning on the intruder's stderr:\n{log}"
    );
}

/// Whether the node closed `stream` (EOF or reset) within `limit`; how long it took.
fn closed_by_peer(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    while start.elapsed() < limit {
        let _ = stream.set_read_timeout(Some(
            limit
                .saturating_sub(start.elapsed())
                .max(Duration::from_millis(1)),
        ));
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            // The node may answer with its own handshake first.
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

#[test]
fn garbage_and_oversize_frames_close_the_connection_and_the_node_keeps_serving() {
    let mut node = NodeProc::start(Spec::new("g1"));
    node.expect("create raw", "OK");
    node.expect("put raw k v0", "OK");
    let cases: [(&str, Vec<u8>); 4] = [
        ("a malformed frame", {
            let mut f = 16u32.to_be_bytes().to_vec();
            f.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef].repeat(4));
            f
        }),
        (
            "an oversize length prefix",
            vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
        ),
        (
            "a prefix just above the pre-auth bound",
            4097u32.to_be_bytes().to_vec(),
        ),
        (
            "text that is not the protocol",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
    ];
    for (i, (what, bytes)) in cases.into_iter().enumerate() {
        let mut s = TcpStream::connect(&node.addr).expect("connect to the node");
        s.write_all(&bytes).expect("send");
        match closed_by_peer(&mut s, Duration::from_secs(5)) {
            Some(t) => println!(
                "{what}: connection closed by the node after {:.1} ms",
                t.as_secs_f64() * 1e3
            ),
            None => node.fail(&format!(
                "{what}: the node kept the connection open for 5 s"
            )),
        }
        // The node still serves, with its data intact.
        node.expect(&format!("put raw k v{}", i + 1), &format!("PREV v{i}"));
        node.expect("get raw k", &format!("VALUE v{}", i + 1));
    }
    assert_eq!(node.list("members"), ["g1"]);
    assert_eq!(node.list("tables"), ["raw"]);
}

#[test]
fn the_shell_answers_every_command_in_the_documented_format() {
    let mut n = NodeProc::start(Spec::new("p1"));
    n.expect("create t", "OK");
    n.expect("create t", "OK");
    n.expect("put t k  two  spaces ", "OK");
    n.expect("get t k", "VALUE  two  spaces ");
    n.expect(
        "put t k",
        "ERR INVALID_ARGUMENT usage: put T K V (V is the rest of the line)",
    );
    n.expect("put t e ", "OK");
    n.expect("get t e", "VALUE ");
    n.expect("GET t e", "VALUE ");
    n.expect("get t missing", "NIL");
    n.expect("sget t k", "VALUE  two  spaces ");
    n.expect("del t missing", "OK");
    n.expect("del t e", "PREV ");
    n.expect("incr t c", "VALUE 1");
    n.expect("incr t c", "VALUE 2");
    let e = n.one("incr t k");
    assert!(e.starts_with("ERR INVALID_ARGUMENT "), "{e}");
    n.expect("put t a:1 x", "OK");
    n.expect("put t a:2 y", "OK");
    assert_eq!(n.cmd("match t a:*"), ["ENTRY a:1 x", "ENTRY a:2 y", "END"]);
    assert_eq!(n.cmd("match t a:* y"), ["ENTRY a:2 y", "END"]);
    assert_eq!(n.cmd("match t nothing*"), ["END"]);
    let e = n.cmd("match t [");
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("ERR INVALID_ARGUMENT bad key pattern"),
        "{e:?}"
    );
    assert_eq!(n.list("tables"), ["t"]);
    assert_eq!(n.list("members"), ["p1"]);
    let addr = n.addr.clone();
    n.expect("addr", &format!("ADDR {addr}"));
    let info = n.info();
    assert_eq!(info["name"], "p1");
    assert_eq!(info["address"], addr.as_str());
    assert_eq!(table_stat(&info, "t", "entries"), 4);

    // Errors: unknown command, arity, missing table, bad names, oversize key.
    n.expect(
        "frobnicate",
        "ERR INVALID_ARGUMENT unknown command \"frobnicate\" (try help)",
    );
    n.expect("get t", "ERR INVALID_ARGUMENT usage: get T K");
    n.expect("get t k extra", "ERR INVALID_ARGUMENT usage: get T K");
    n.expect("tables now", "ERR INVALID_ARGUMENT usage: tables");
    for cmd in [
        "get nope k",
        "put nope k v",
        "del nope k",
        "incr nope k",
        "sget nope k",
    ] {
        n.expect(cmd, "ERR NO_SUCH_TABLE no table named \"nope\"");
    }
    assert_eq!(
        n.cmd("match nope *"),
        ["ERR NO_SUCH_TABLE no table named \"nope\""]
    );
    let long = "x".repeat(256);
    let e = n.one(&format!("create {long}"));
    assert!(
        e.starts_with("ERR INVALID_ARGUMENT table name must be 1 to 255 bytes"),
        "{e}"
    );
    let e = n.one(&format!("put t {} v", "k".repeat(70_000)));
    assert!(
        e.starts_with("ERR INVALID_ARGUMENT key of 70000 bytes"),
        "{e}"
    );
    let e = n.one("connect nowhere");
    assert!(e.starts_with("ERR INVALID_ARGUMENT "), "{e}");
    // Empty lines and comments get no reply: the next reply is the next command's.
    n.send_lines(&["".into(), "   ".into(), "# a comment".into()]);
    n.expect("get t c", "VALUE 2");
    assert!(n.list("help").len() >= 10);
    n.quit();
}

#[test]
fn bytes_that_are_not_printable_utf8_are_hex_escaped() {
    let mut n = NodeProc::start(Spec::new("b1").arg("--events"));
    n.expect("create bin", "OK");
    // Raw bytes on stdin: an invalid UTF-8 byte in the key and the value.
    n.send_raw(b"put bin k\xff v\xfe\\x\n");
    assert_eq!(n.read_reply("put"), ["OK"]);
    n.send_raw(b"get bin k\xff\n");
    assert_eq!(n.read_reply("get"), ["VALUE v\\xfe\\x"]);
    n.send_raw(b"put bin sp a\tb\n");
    assert_eq!(n.read_reply("put"), ["OK"]);
    assert_eq!(
        n.cmd("match bin *"),
        ["ENTRY k\\xff v\\xfe\\x", "ENTRY sp a\tb", "END"]
    );
    // A non-UTF-8 table name is refused with a typed error.
    n.send_raw(b"create t\xff\n");
    let e = n.read_reply("create");
    assert!(
        e[0].starts_with("ERR INVALID_ARGUMENT table name is not valid UTF-8"),
        "{e:?}"
    );
}

/// Puts through `node` with one command in flight; sorted latencies as a client
/// of the shell sees them (pipe, parse, sequencer round trip, replica
/// acknowledgements, reply).
fn timed_puts(node: &mut NodeProc, prefix: &str, n: usize, value: &str) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let cmd = format!("put lat {prefix}-{i:08} {value}");
        let begun = Instant::now();
        let reply = node.cmd(&cmd);
        samples.push(begun.elapsed());
        assert_eq!(reply, ["OK"]);
    }
    samples.sort_unstable();
    samples
}

#[test]
fn replicated_puts_on_three_processes_are_visible_everywhere_and_timed() {
    const N: usize = 1000;
    // Names order actor ids: l1 is the sequencer of every table.
    let mut nodes = local_cluster("l", 3);
    create_everywhere(&mut nodes, "lat");
    let value = "v".repeat(100);
    let at_sequencer = timed_puts(&mut nodes[0], "s", N, &value);
    let at_member = timed_puts(&mut nodes[2], "m", N, &value);
    // Pipelined: lines written at once, executed one after the other.
    let lines: Vec<String> = (0..N)
        .map(|i| format!("put lat m-{i:08} {value}"))
        .collect();
    let started = Instant::now();
    nodes[1].send_lines(&lines);
    for _ in 0..N {
        let r = nodes[1].one_reply("put");
        assert!(r.starts_with("PREV "), "{r}");
    }
    let pipelined = started.elapsed();
    for n in nodes.iter_mut() {
        let info = n.info();
        assert_eq!(table_stat(&info, "lat", "entries"), 2 * N);
        n.expect(
            &format!("get lat s-{:08}", N - 1),
            &format!("VALUE {value}"),
        );
    }
    // The shell's own cost: a local read through the same pipes.
    let mut reads = Vec::with_capacity(N);
    for i in 0..N {
        let cmd = format!("get lat s-{i:08}");
        let begun = Instant::now();
        nodes[0].one(&cmd);
        reads.push(begun.elapsed());
    }
    reads.sort_unstable();
    println!(
        "local get through `lbmkv node` (pipe and shell overhead): p50 {:.0} µs",
        percentile_us(&reads, 0.50)
    );
    for (what, samples) in [
        ("at the sequencer", &at_sequencer),
        ("at another member", &at_member),
    ] {
        println!(
            "replicated put through `lbmkv node`, 3 processes, 100-byte values, {what}: \
             p50 {:.0} µs, p99 {:.0} µs (one in flight)",
            percentile_us(samples, 0.50),
            percentile_us(samples, 0.99),
        );
    }
    println!(
        "replicated put through `lbmkv node`, pipelined at another member: {:.0} puts/s",
        N as f64 / pipelined.as_secs_f64()
    );
}

#[test]
fn min_members_that_do_not_come_make_the_node_say_why_and_exit_1() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let refused = closed.local_addr().expect("its address").to_string();
    drop(closed);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lbmkv"))
        .args(["node", "--name", "mm", "--cookie", harness::COOKIE])
        .args(["--seed", &refused, "--min-members", "2"])
        .args(["--request-timeout-ms", "1500"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("lbmkv node runs");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first = stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("ERR UNAVAILABLE ") && first.contains(&refused),
        "first line: {first:?}"
    );
}

/// `lbmkv demo` ends with its nodes closed and the process exiting, every time:
/// a task that outlives `close` keeps the runtime from shutting down.
#[test]
fn the_demo_finishes_and_its_process_exits_every_time() {
    for run in 1..=20 {
        let err_path = std::env::temp_dir().join(format!("lbmkv-demo-{}.err", std::process::id()));
        let err_file = std::fs::File::create(&err_path).expect("a file for the demo's stderr");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lbmkv"))
            .arg("demo")
            .stdout(std::process::Stdio::null())
            .stderr(err_file)
            .spawn()
            .expect("lbmkv demo runs");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            match child.try_wait().expect("the demo's status") {
                Some(status) => break Some(status),
                None if Instant::now() >= deadline => break None,
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        let _ = std::fs::remove_file(&err_path);
        assert!(
            status.is_some_and(|s| s.success()),
            "run {run}: the demo {}; its stderr:\n{stderr}",
            match status {
                Some(s) => format!("failed with {s}"),
                None => "did not exit within 30 s".to_string(),
            }
        );
    }
}

#[test]
fn watch_psetex_and_pttl_in_the_shell_across_two_processes() {
    let mut nodes = local_cluster("wt", 2);
    create_everywhere(&mut nodes, "t");
    // wt1 sorts first and sequences: a write is executed there (cause
    // `write`) and applied on wt2 (cause `replicated`); either way the dot,
    // and so the node a change names, is the sequencer's.
    let sequencer = nodes[0].name.clone();
    for n in nodes.iter_mut() {
        n.expect("watch t user/", "OK");
    }
    let is_change = |key: &'static str, cause: &'static str| {
        move |v: &serde_json::Value| {
            v["type"] == "change" && v["table"] == "t" && v["key"] == key && v["cause"] == cause
        }
    };
    let limit = Duration::from_secs(10);

    nodes[1].expect("put t user/a 1", "OK");
    for (n, cause) in nodes.iter_mut().zip(["write", "replicated"]) {
        let (_, a) = n.wait_event(limit, "change of user/a", is_change("user/a", cause));
        assert_eq!(a["value"], "1");
        assert_eq!(a["prev"], serde_json::Value::Null);
        assert_eq!(a["node"], sequencer.as_str());
    }

    // Keys outside the prefix are not reported.
    nodes[0].expect("put t other/x 1", "OK");
    nodes[1].expect("del t user/a", "PREV 1");
    let (_, d) = nodes[1].wait_event(limit, "delete of user/a", is_change("user/a", "replicated"));
    assert_eq!(d["value"], serde_json::Value::Null);
    assert_eq!(d["prev"], "1");

    // An expiring key: its time left, then its expiry, on both processes.
    nodes[1].expect("psetex t user/b 400 v", "OK");
    let left = nodes[1].one("pttl t user/b");
    let ms: u64 = left
        .strip_prefix("VALUE ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("pttl gave {left:?}"));
    assert!(ms <= 400, "{ms} ms left of 400");
    nodes[1].expect("pttl t other/x", "NIL");
    nodes[1].expect("pttl t missing", "NIL");
    for n in nodes.iter_mut() {
        let (_, e) = n.wait_event(limit, "expiry of user/b", is_change("user/b", "expiry"));
        assert_eq!(e["value"], serde_json::Value::Null);
        assert_eq!(e["prev"], "v");
        n.expect("get t user/b", "NIL");
        let others = n.events_seen();
        assert!(
            others.iter().all(|v| v["key"] != "other/x"),
            "a key outside the prefix was reported: {others:?}"
        );
    }
}
