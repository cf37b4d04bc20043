//! Sequencer handoffs: the promise is that a join, restart, pause or leave of
//! the node whose name sorts first (the sequencer of a cluster it starts, and
//! the one that used to take over) hands out no `update` value twice and loses
//! no acknowledged write.
//!
//! Three `lbmkv node` processes `na`, `nb`, `nc` (1 s failure timeout). Table `t`
//! holds 2,000 other keys besides the counter, so a joining node's first merge
//! is not instantaneous. Two client threads run `incr t ctr` on `nb` and `nc`
//! without pause while `na` joins, is killed and restarted, is stopped longer
//! than the failure timeout, or quits. Afterwards every acknowledged value must
//! be distinct, the counter equal on every node and at least the largest
//! acknowledged value, and the counter may exceed the acknowledged increments by
//! no more than the failed ones (a failed increment may still have been
//! applied). A control run changes nothing, to check the test itself.
//!
//! Each scenario runs `ROUNDS` times with fresh processes
//! (`LBMKV_HANDOFF_ROUNDS=N` runs N), prints one summary line per round and
//! fails at the end if any round broke a promise.

mod harness;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use harness::{cluster, NodeProc, Spec};

/// Runs of each scenario per test, each with fresh processes, unless
/// `LBMKV_HANDOFF_ROUNDS` says otherwise (for a longer soak).
const ROUNDS: usize = 3;

fn rounds() -> usize {
    std::env::var("LBMKV_HANDOFF_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(ROUNDS)
}

/// `incr` lines a client writes before reading their replies.
const BATCH: usize = 10;
/// A client loop ends by itself after this long even if nobody stops it.
const CLIENT_LIMIT: Duration = Duration::from_secs(45);
/// Longest wait for the replicas to agree once the writes have stopped.
const CONVERGE_LIMIT: Duration = Duration::from_secs(10);
const INCR: &str = "incr t ctr";
/// Other keys in table `t`, so that a joining node's first merge takes a while.
const FILLER: usize = 2000;

/// Creates `table` on the first node and waits until every node has it.
fn create_everywhere(nodes: &mut [&mut NodeProc], table: &str) {
    nodes[0].expect(&format!("create {table}"), "OK");
    for n in nodes.iter_mut() {
        // Idempotent; returns once the node holds the cluster's copy.
        n.expect(&format!("create {table}"), "OK");
    }
}

/// What one client loop saw.
struct ClientRun {
    node: String,
    /// Acknowledged values, in the order of the replies.
    values: Vec<u64>,
    /// `ERR` replies by code.
    errors: BTreeMap<String, usize>,
    /// Longest time without an acknowledgement, from the loop's start to its
    /// end (so writes refused up to the end count too).
    longest_gap: Duration,
}

impl ClientRun {
    fn failed(&self) -> usize {
        self.errors.values().sum()
    }
}

/// `incr t ctr` in a loop on one node, `BATCH` lines at a time, until `stop`.
fn client_loop(mut node: NodeProc, stop: Arc<AtomicBool>) -> (NodeProc, ClientRun) {
    let batch = vec![INCR.to_string(); BATCH];
    let started = Instant::now();
    let mut run = ClientRun {
        node: node.name.clone(),
        values: Vec::new(),
        errors: BTreeMap::new(),
        longest_gap: Duration::ZERO,
    };
    let mut last_ack = started;
    while !stop.load(Ordering::SeqCst) && started.elapsed() < CLIENT_LIMIT {
        node.send_lines(&batch);
        for _ in 0..BATCH {
            let reply = node.one_reply(INCR);
            let now = Instant::now();
            if let Some(v) = reply.strip_prefix("VALUE ") {
                match v.parse() {
                    Ok(v) => run.values.push(v),
                    Err(_) => node.fail(&format!("incr gave {reply:?}")),
                }
                run.longest_gap = run.longest_gap.max(now - last_ack);
                last_ack = now;
            } else if let Some(err) = reply.strip_prefix("ERR ") {
                let code = err.split(' ').next().unwrap_or_default().to_string();
                *run.errors.entry(code).or_default() += 1;
            } else {
                node.fail(&format!("incr gave {reply:?}"));
            }
        }
    }
    run.longest_gap = run.longest_gap.max(last_ack.elapsed());
    (node, run)
}

/// The client threads; dropping them stops and joins them.
struct Clients {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<(NodeProc, ClientRun)>>,
}

impl Clients {
    fn start(nodes: Vec<NodeProc>) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = nodes
            .into_iter()
            .map(|node| {
                let stop = stop.clone();
                std::thread::spawn(move || client_loop(node, stop))
            })
            .collect();
        Clients { stop, threads }
    }

    /// Stops the loops and gives the nodes back with what their loops saw; a
    /// loop that panicked (a reply that never came) panics here.
    fn stop(mut self) -> Vec<(NodeProc, ClientRun)> {
        self.stop.store(true, Ordering::SeqCst);
        let joined: Vec<_> = self.threads.drain(..).map(JoinHandle::join).collect();
        let mut out = Vec::new();
        for j in joined {
            match j {
                Ok(r) => out.push(r),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Waits until every node has `n` members and the same non-empty digest of
/// `table`; returns how long that took.
fn converge(nodes: &mut [&mut NodeProc], table: &str) -> Duration {
    let started = Instant::now();
    let n = nodes.len();
    for node in nodes.iter_mut() {
        let left = CONVERGE_LIMIT.saturating_sub(started.elapsed());
        node.wait_members(n, left.max(Duration::from_millis(100)));
        // Idempotent; on a node that just joined it returns once the node
        // holds the cluster's copy.
        node.expect(&format!("create {table}"), "OK");
    }
    loop {
        let digests: Vec<(String, String)> = nodes
            .iter_mut()
            .map(|n| (n.name.clone(), n.digest(table)))
            .collect();
        if !digests[0].1.is_empty() && digests.iter().all(|(_, d)| *d == digests[0].1) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < CONVERGE_LIMIT,
            "digests of {table} still differ after {CONVERGE_LIMIT:?}: {digests:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How `na` is disturbed while the clients write.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// None: the three nodes stay as they are (checks the test itself).
    Nothing,
    /// `na` is not there at first and joins.
    Joins,
    /// `na` is killed with SIGKILL and a new `na` starts.
    KilledAndRestarted,
    /// `na` is stopped with SIGSTOP for longer than the failure timeout.
    Paused,
    /// `na` leaves with `quit`.
    Quits,
}

/// The numbers of one round.
struct Round {
    acked: usize,
    failed: usize,
    errors: BTreeMap<String, usize>,
    duplicates: usize,
    final_counter: i64,
    longest_gap: Duration,
    converged_in: Duration,
    /// Broken promises, empty when the round passed.
    problems: Vec<String>,
}

/// One round of `fault` with fresh processes.
fn counter_round(fault: Fault) -> Round {
    let na_first = !matches!(fault, Fault::Joins);
    let names: &[&str] = if na_first {
        &["na", "nb", "nc"]
    } else {
        &["nb", "nc"]
    };
    let mut nodes = cluster(names, &[]);
    let mut nc = nodes.pop().expect("nc");
    let mut nb = nodes.pop().expect("nb");
    let mut na = nodes.pop();
    {
        let mut all: Vec<&mut NodeProc> = na.iter_mut().collect();
        all.push(&mut nb);
        all.push(&mut nc);
        create_everywhere(&mut all, "t");
    }
    let puts: Vec<String> = (0..FILLER).map(|i| format!("put t f{i} {i}")).collect();
    for (put, reply) in puts.iter().zip(pipelined(&mut nb, &puts, 100)) {
        if reply != "OK" {
            nb.fail(&format!("{put:?} gave {reply:?}"));
        }
    }
    let seed = nb.addr.clone();

    let clients = Clients::start(vec![nb, nc]);
    std::thread::sleep(Duration::from_secs(1));
    match fault {
        Fault::Nothing => std::thread::sleep(Duration::from_secs(2)),
        Fault::Joins => {
            na = Some(NodeProc::start(Spec::new("na").seed(&seed)));
            std::thread::sleep(Duration::from_secs(2));
        }
        Fault::KilledAndRestarted => {
            na.take().expect("na").kill();
            std::thread::sleep(Duration::from_millis(500));
            na = Some(NodeProc::start(Spec::new("na").seed(&seed)));
            std::thread::sleep(Duration::from_secs(2));
        }
        Fault::Paused => {
            let n = na.as_mut().expect("na");
            n.pause();
            std::thread::sleep(Duration::from_millis(2500));
            n.resume();
            std::thread::sleep(Duration::from_secs(2));
        }
        Fault::Quits => {
            na.take().expect("na").quit();
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let runs = clients.stop();

    let (mut live, runs): (Vec<NodeProc>, Vec<ClientRun>) = runs.into_iter().unzip();
    if let Some(na) = na {
        live.insert(0, na);
    }
    let converged_in = {
        let mut refs: Vec<&mut NodeProc> = live.iter_mut().collect();
        converge(&mut refs, "t")
    };

    let mut problems = Vec::new();
    // 1. Every acknowledged value is distinct.
    let mut owners: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for r in &runs {
        for &v in &r.values {
            owners.entry(v).or_default().push(&r.node);
        }
    }
    let acked: usize = runs.iter().map(|r| r.values.len()).sum();
    let duplicates = acked - owners.len();
    if duplicates > 0 {
        let examples: Vec<String> = owners
            .iter()
            .filter(|(_, o)| o.len() > 1)
            .take(5)
            .map(|(v, o)| format!("{v} to {}", o.join("+")))
            .collect();
        problems.push(format!(
            "{duplicates} acknowledged values handed out more than once, e.g. {}",
            examples.join(", ")
        ));
    }
    // 2. The counter is equal everywhere and no less than any acknowledged value.
    let finals: Vec<(String, i64)> = live
        .iter_mut()
        .map(|n| {
            let reply = n.one("get t ctr");
            let v = reply
                .strip_prefix("VALUE ")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| n.fail(&format!("get t ctr gave {reply:?}")));
            (n.name.clone(), v)
        })
        .collect();
    let final_counter = finals[0].1;
    if finals.iter().any(|(_, v)| *v != final_counter) {
        problems.push(format!("the nodes disagree on the counter: {finals:?}"));
    }
    let largest = owners.keys().next_back().copied().unwrap_or(0);
    if final_counter < largest as i64 {
        problems.push(format!(
            "the counter fell: {final_counter} after the value {largest} was acknowledged"
        ));
    }
    // 3. Increments beyond the acknowledged ones come from failed ones only.
    let failed: usize = runs.iter().map(ClientRun::failed).sum();
    if final_counter - acked as i64 > failed as i64 {
        problems.push(format!(
            "the counter {final_counter} exceeds the {acked} acknowledged increments by more than the {failed} failed ones"
        ));
    }

    let mut errors = BTreeMap::new();
    for r in &runs {
        for (code, n) in &r.errors {
            *errors.entry(code.clone()).or_default() += n;
        }
    }
    let longest_gap = runs.iter().map(|r| r.longest_gap).max().unwrap_or_default();
    Round {
        acked,
        failed,
        errors,
        duplicates,
        final_counter,
        longest_gap,
        converged_in,
        problems,
    }
}

/// Runs `fault` `rounds()` times, prints a line per round, fails if any round did.
fn counter_scenario(name: &str, fault: Fault) {
    let started = Instant::now();
    let mut failures = Vec::new();
    let rounds = rounds();
    for round in 1..=rounds {
        let r = counter_round(fault);
        println!(
            "{name} round {round}: acknowledged {}, failed {} {:?}, duplicates {}, final counter {}, \
             longest gap {:.0} ms, converged in {:.0} ms: {}",
            r.acked,
            r.failed,
            r.errors,
            r.duplicates,
            r.final_counter,
            r.longest_gap.as_secs_f64() * 1e3,
            r.converged_in.as_secs_f64() * 1e3,
            if r.problems.is_empty() { "ok" } else { "FAILED" }
        );
        for p in &r.problems {
            println!("  {p}");
            failures.push(format!("round {round}: {p}"));
        }
        assert!(
            r.acked > 0,
            "{name} round {round}: no increment acknowledged"
        );
    }
    println!(
        "{name}: {rounds} rounds in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{name}: broken promises:\n{}",
        failures.join("\n")
    );
}

#[test]
fn no_membership_change_control() {
    counter_scenario("no_membership_change_control", Fault::Nothing);
}

#[test]
fn na_joins() {
    counter_scenario("na_joins", Fault::Joins);
}

#[test]
fn na_killed_and_restarted() {
    counter_scenario("na_killed_and_restarted", Fault::KilledAndRestarted);
}

#[test]
fn na_paused_longer_than_failure_timeout() {
    counter_scenario("na_paused_longer_than_failure_timeout", Fault::Paused);
}

#[test]
fn na_quits() {
    counter_scenario("na_quits", Fault::Quits);
}

/// Sends `commands` pipelined, `chunk` at a time, and returns the replies.
fn pipelined(node: &mut NodeProc, commands: &[String], chunk: usize) -> Vec<String> {
    let mut replies = Vec::with_capacity(commands.len());
    for part in commands.chunks(chunk) {
        node.send_lines(part);
        for c in part {
            replies.push(node.one_reply(c));
        }
    }
    replies
}

#[test]
fn deletes_while_na_joins() {
    const KEYS: usize = 500;
    const DELETE_LIMIT: Duration = Duration::from_secs(20);
    let started = Instant::now();
    let mut failures = Vec::new();
    let rounds = rounds();
    for round in 1..=rounds {
        let mut nodes = cluster(&["nb", "nc"], &[]);
        let mut nc = nodes.pop().expect("nc");
        let mut nb = nodes.pop().expect("nb");
        create_everywhere(&mut [&mut nb, &mut nc], "d");
        let puts: Vec<String> = (0..KEYS).map(|i| format!("put d k{i} v{i}")).collect();
        for (put, reply) in puts.iter().zip(pipelined(&mut nb, &puts, 50)) {
            if reply != "OK" {
                nb.fail(&format!("{put:?} gave {reply:?}"));
            }
        }

        let mut na = NodeProc::start(Spec::new("na").seed(&nb.addr));
        // Delete every key from nc while na joins; retry what is refused.
        let deleting = Instant::now();
        let mut left: Vec<usize> = (0..KEYS).collect();
        let mut refused = BTreeMap::<String, usize>::new();
        // Every key was there, so `OK` (nothing to delete) to a first attempt
        // means the delete was ordered by a sequencer that did not hold the
        // table's state (a retry may find a refused attempt applied after all).
        let mut answered_ok = 0;
        let mut first = true;
        while !left.is_empty() && deleting.elapsed() < DELETE_LIMIT {
            let dels: Vec<String> = left.iter().map(|i| format!("del d k{i}")).collect();
            let replies = pipelined(&mut nc, &dels, 50);
            let mut again = Vec::new();
            for ((i, del), reply) in left.iter().zip(&dels).zip(replies) {
                if reply == "OK" {
                    answered_ok += usize::from(first);
                    continue;
                }
                if reply.starts_with("PREV ") {
                    continue;
                }
                match reply.strip_prefix("ERR ") {
                    Some(err) => {
                        let code = err.split(' ').next().unwrap_or_default().to_string();
                        *refused.entry(code).or_default() += 1;
                        again.push(*i);
                    }
                    None => nc.fail(&format!("{del:?} gave {reply:?}")),
                }
            }
            left = again;
            first = false;
            if !left.is_empty() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let deleted_in = deleting.elapsed();
        assert!(
            left.is_empty(),
            "round {round}: {} deletes still refused after {DELETE_LIMIT:?} ({refused:?})",
            left.len()
        );

        let converged_in = converge(&mut [&mut na, &mut nb, &mut nc], "d");
        let gets: Vec<String> = (0..KEYS).map(|i| format!("get d k{i}")).collect();
        let mut present = Vec::new();
        for node in [&mut na, &mut nb, &mut nc] {
            let replies = pipelined(node, &gets, 100);
            let back: Vec<String> = gets
                .iter()
                .zip(replies)
                .filter(|(_, r)| r != "NIL")
                .map(|(g, r)| format!("{} -> {r}", &g["get d ".len()..]))
                .collect();
            if !back.is_empty() {
                present.push(format!(
                    "{}: {} deleted keys present, e.g. {}",
                    node.name,
                    back.len(),
                    back[..back.len().min(5)].join(", ")
                ));
            }
        }
        println!(
            "deletes_while_na_joins round {round}: {KEYS} deletes in {:.0} ms, refused {refused:?}, \
             {answered_ok} answered OK instead of PREV, converged in {:.0} ms: {}",
            deleted_in.as_secs_f64() * 1e3,
            converged_in.as_secs_f64() * 1e3,
            if present.is_empty() { "ok" } else { "FAILED" }
        );
        for p in present {
            println!("  {p}");
            failures.push(format!("round {round}: {p}"));
        }
    }
    println!(
        "deletes_while_na_joins: {rounds} rounds in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "deletes_while_na_joins: deleted keys came back:\n{}",
        failures.join("\n")
    );
}
