//! A node joins a node that holds 1,000,000 entries (16-byte keys, 100-byte
//! values, as `lbmkv bench` writes them), ten times in a row with a fresh
//! joiner: `create big` on the joiner must answer `OK` with every entry there,
//! without a `node_down` on either side while it joins.
//!
//! Joiners whose name sorts before the big node's lead the merge (the big node
//! answers it: it snapshots and sends the whole table from its reader), the
//! others follow it (the big node leads and sends the table as summaries);
//! the ten alternate between the two.
//!
//! Run it in the release profile (`cargo test --release ...`, as
//! `make test-cli` does): with the debug binary a join takes 12-17 s instead of
//! 2-3 s, and the test well over 2 minutes.

mod harness;

use std::time::{Duration, Instant};

use harness::{table_stat, NodeProc, Spec};
use serde_json::Value;

const ENTRIES: u64 = 1_000_000;
const VALUE_SIZE: usize = 100;
const JOINS: usize = 10;
/// Bound of loading the table and of one join (`create` itself gives up after
/// 12 request timeouts, 60 s).
const STEP_LIMIT: Duration = Duration::from_secs(90);

fn entries(node: &mut NodeProc, table: &str) -> u64 {
    let info = node.info();
    table_stat(&info, table, "entries").as_u64().unwrap_or(0)
}

fn node_downs(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|e| e["type"] == "node_down").collect()
}

#[test]
fn ten_joins_of_a_node_holding_a_million_entries() {
    if cfg!(debug_assertions) {
        println!("debug profile: expect 12-17 s per join; run with --release");
    }
    let started = Instant::now();
    let mut big = NodeProc::start(Spec::new("m-big"));
    big.expect("create big", "OK");
    let load = Instant::now();
    let filled = big.one_within(&format!("fill big {ENTRIES} {VALUE_SIZE}"), STEP_LIMIT);
    if filled != "OK" {
        big.fail(&format!("fill gave {filled:?}"));
    }
    let load = load.elapsed();
    assert_eq!(entries(&mut big, "big"), ENTRIES);
    let digest = big.digest("big");
    println!(
        "loaded {ENTRIES} entries of {VALUE_SIZE}-byte values in {:.2} s",
        load.as_secs_f64()
    );

    let mut times = Vec::new();
    for i in 0..JOINS {
        big.clear_events();
        // Alternately before and after "m-big": who leads the merge.
        let name = if i % 2 == 0 {
            format!("a-join-{i}")
        } else {
            format!("z-join-{i}")
        };
        let t0 = Instant::now();
        let mut joiner = NodeProc::start(Spec::new(&name).seed(&big.addr));
        let reply = joiner.one_within("create big", STEP_LIMIT);
        let took = t0.elapsed();
        if reply != "OK" {
            joiner.fail(&format!("join {i}: create big gave {reply:?}"));
        }
        let have = entries(&mut joiner, "big");
        let downs: Vec<String> = node_downs(&joiner.events_seen())
            .into_iter()
            .chain(node_downs(&big.events_seen()))
            .map(Value::to_string)
            .collect();
        println!(
            "join {i} ({name}, {}): {:.2} s, {have} entries, node_down events: {}",
            if i % 2 == 0 { "leads" } else { "follows" },
            took.as_secs_f64(),
            downs.len()
        );
        if !downs.is_empty() {
            joiner.fail(&format!("join {i}: node_down during the join: {downs:?}"));
        }
        if have != ENTRIES {
            joiner.fail(&format!("join {i}: {have} of {ENTRIES} entries after OK"));
        }
        let theirs = joiner.digest("big");
        if theirs != digest {
            joiner.fail(&format!("join {i}: digest {theirs} differs from {digest}"));
        }
        times.push(took);
        joiner.quit();
        // The goodbye of `quit` is the only node_down the big node may see.
        big.wait_event(Duration::from_secs(5), "node_down of the joiner", |e| {
            e["type"] == "node_down" && e["node"] == name.as_str()
        });
    }
    let secs: Vec<String> = times
        .iter()
        .map(|t| format!("{:.2}", t.as_secs_f64()))
        .collect();
    let mut sorted = times.clone();
    sorted.sort();
    println!(
        "join times (s): {}; median {:.2} s, max {:.2} s; whole test {:.1} s",
        secs.join(" "),
        sorted[JOINS / 2].as_secs_f64(),
        sorted[JOINS - 1].as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    big.quit();
}
