//! Sequencer handoffs on the in-memory network: a node whose name sorts first
//! joins, restarts, or loses its link to one member while counters are being
//! incremented from the other nodes. No `update` value may be handed out twice,
//! and no acknowledged increment may be lost.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{ip, mem_cluster, mem_node, runtime, wait_until};
use lbmkv::net::MemNet;
use lbmkv::{Node, Table};
use tokio::task::JoinHandle;

const KEY: &[u8] = b"ctr";

fn incremented(v: Option<&[u8]>) -> Option<Vec<u8>> {
    let n: u64 = v
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(0);
    Some((n + 1).to_string().into_bytes())
}

fn counter(t: &Table) -> u64 {
    t.get(KEY)
        .unwrap()
        .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(0)
}

/// What one client loop saw: the values its increments were acknowledged
/// with, and how many increments failed.
#[derive(Default)]
struct Seen {
    acked: Vec<u64>,
    failed: usize,
}

/// Two client loops per table incrementing [`KEY`] until `stop` is set.
fn start_clients(tables: &[Table], stop: &Arc<AtomicBool>) -> Vec<JoinHandle<Seen>> {
    let mut clients = Vec::new();
    for t in tables {
        for _ in 0..2 {
            let (t, stop) = (t.clone(), stop.clone());
            clients.push(tokio::spawn(async move {
                let mut seen = Seen::default();
                while !stop.load(Ordering::Relaxed) {
                    match t.update(KEY, |_, v| incremented(v)).await {
                        Ok((_, Some(new))) => seen
                            .acked
                            .push(String::from_utf8(new).unwrap().parse().unwrap()),
                        Ok((_, None)) => unreachable!("an increment never deletes"),
                        Err(_) => {
                            seen.failed += 1;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
                seen
            }));
        }
    }
    clients
}

/// Stops the clients, waits for the replicas to converge and checks the counter.
async fn check_counter(
    stop: &AtomicBool,
    clients: Vec<JoinHandle<Seen>>,
    tables: &[Table],
    base: u64,
) {
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    let mut failed = 0;
    for c in clients {
        let seen = c.await.unwrap();
        acked.extend(seen.acked);
        failed += seen.failed;
    }
    wait_until(Duration::from_secs(10), || {
        let d: HashSet<String> = tables.iter().map(|t| t.stats().unwrap().digest).collect();
        d.len() == 1
    })
    .await;
    let finals: Vec<u64> = tables.iter().map(counter).collect();
    let mut distinct = HashSet::new();
    let twice: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|v| !distinct.insert(*v))
        .collect();
    println!(
        "{} increments acknowledged, {failed} failed, {} handed out twice, counter {finals:?}",
        acked.len(),
        twice.len()
    );
    assert!(
        twice.is_empty(),
        "values handed out twice: {:?}",
        &twice[..twice.len().min(10)]
    );
    let last = finals[0];
    assert!(
        finals.iter().all(|f| *f == last),
        "counters differ: {finals:?}"
    );
    let largest = acked.iter().copied().max().unwrap_or(base);
    assert!(last >= largest, "counter {last} fell below {largest}");
    let applied = last - base;
    assert!(
        applied >= acked.len() as u64 && applied - acked.len() as u64 <= failed as u64,
        "{applied} increments applied, {} acknowledged, {failed} failed",
        acked.len()
    );
}

/// Fills `t` with filler entries (so that a merge takes a while) and counts to `base`.
async fn preload(t: &Table, fillers: usize, base: u64) {
    for chunk in 0..fillers / 1000 {
        let entries = (0..1000)
            .map(|i| (format!("filler-{chunk}-{i}").into_bytes(), vec![7u8; 100]))
            .collect();
        t.put_many(entries).await.unwrap();
    }
    for _ in 0..base {
        t.update(KEY, |_, v| incremented(v)).await.unwrap();
    }
}

#[test]
fn a_node_whose_name_sorts_first_joins_during_updates_and_no_value_is_handed_out_twice() {
    runtime().block_on(async {
        let net = MemNet::new();
        // "b" and "c" at 127.0.0.1 and .2; "a" joins at .3.
        let nodes = mem_cluster(&net, &["b", "c"]).await;
        let tb = nodes[0].create_table("seq").await.unwrap();
        let tc = nodes[1].create_table("seq").await.unwrap();
        preload(&tb, 50_000, 200).await;
        let stop = Arc::new(AtomicBool::new(false));
        let clients = start_clients(&[tb.clone(), tc.clone()], &stop);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let a = mem_node(&net, 3, "a", &[&nodes[0]]).await;
        let ta = a.create_table("seq").await.unwrap();
        assert!(
            ta.len().unwrap() >= 50_000,
            "create_table returned before the table arrived: {} entries",
            ta.len().unwrap()
        );
        wait_until(Duration::from_secs(10), || {
            nodes
                .iter()
                .chain([&a])
                .all(|n| n.members().unwrap().len() == 3)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        check_counter(&stop, clients, &[ta, tb, tc], 200).await;
    });
}

#[test]
fn the_node_whose_name_sorts_first_crashes_and_restarts_and_no_value_is_handed_out_twice() {
    runtime().block_on(async {
        let net = MemNet::new();
        let mut nodes = mem_cluster(&net, &["a", "b", "c"]).await;
        let ta = nodes[0].create_table("seq").await.unwrap();
        let tb = nodes[1].create_table("seq").await.unwrap();
        let tc = nodes[2].create_table("seq").await.unwrap();
        preload(&ta, 20_000, 200).await;
        drop(ta);
        let stop = Arc::new(AtomicBool::new(false));
        let clients = start_clients(&[tb.clone(), tc.clone()], &stop);
        tokio::time::sleep(Duration::from_millis(300)).await;
        // A crash: no goodbye, every connection of "a" ends at once.
        drop(nodes.remove(0));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let a = mem_node(&net, 1, "a", &[&nodes[0]]).await;
        let ta = a.create_table("seq").await.unwrap();
        wait_until(Duration::from_secs(10), || {
            nodes
                .iter()
                .chain([&a])
                .all(|n| n.members().unwrap().len() == 3)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        check_counter(&stop, clients, &[ta, tb, tc], 200).await;
    });
}

#[test]
fn a_member_that_loses_the_sequencer_but_not_the_others_does_not_become_a_second_sequencer() {
    runtime().block_on(async {
        let net = MemNet::new();
        let nodes: Vec<Node> = mem_cluster(&net, &["p1", "p2", "p3"]).await;
        let mut tables = Vec::new();
        for n in &nodes {
            tables.push(n.create_table("seq").await.unwrap());
        }
        let stop = Arc::new(AtomicBool::new(false));
        let clients = start_clients(&tables[1..], &stop);
        tokio::time::sleep(Duration::from_millis(300)).await;
        // p1 and p2 lose each other for longer than the failure timeout (not
        // long enough for the partial partition rule to act); p3 still sees both.
        net.cut(ip(1), ip(2));
        tokio::time::sleep(Duration::from_millis(900)).await;
        net.heal(ip(1), ip(2));
        wait_until(Duration::from_secs(10), || {
            nodes.iter().all(|n| n.members().unwrap().len() == 3)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        check_counter(&stop, clients, &tables, 0).await;
    });
}
