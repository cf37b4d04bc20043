//! Expiring keys on a 3-node cluster (in-memory network): 1,000 keys with
//! random ttls disappear on every node, across a sequencer crash and across
//! a netsplit and its heal, never readable past their deadline; a refreshed
//! key stays. Prints the expiry lateness it measured.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{heal_all, isolate, mem_cluster, runtime, wait_until};
use lbmkv::net::MemNet;
use lbmkv::{Cause, Table, WatchItem};

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

type Deadlines = Arc<Mutex<HashMap<Vec<u8>, u64>>>;
/// Per node, when each key's expiry arrived there (ms since the epoch).
type Arrivals = Arc<Mutex<HashMap<Vec<u8>, u64>>>;

/// Writes `n` keys with ttls between 100 ms and 2 s through `t`, in
/// batches of concurrent puts; returns each key's deadline (as the
/// sequencer set it, read back through `ttl`).
async fn write_expiring(t: &Table, n: u32, seed: u64, deadlines: &Deadlines) {
    let mut rng = Rng(seed);
    let mut batch = Vec::new();
    for i in 0..n {
        let ttl = 100 + rng.below(1900);
        let t = t.clone();
        let deadlines = deadlines.clone();
        batch.push(tokio::spawn(async move {
            let key = format!("key-{i:04}").into_bytes();
            t.put_expiring(&key, b"v", Duration::from_millis(ttl))
                .await
                .unwrap();
            let before = now_ms();
            if let Some(left) = t.ttl(&key).unwrap() {
                let deadline = before + left.as_millis() as u64;
                deadlines.lock().unwrap().insert(key, deadline);
            }
        }));
        if batch.len() == 50 {
            for b in batch.drain(..) {
                b.await.unwrap();
            }
        }
    }
    for b in batch {
        b.await.unwrap();
    }
}

/// Records when each key's delete first reaches the node of `t`: the
/// sequencer's expiry, or (for a member that missed it when the sequencer
/// crashed) the merge that brings it.
fn record_expiries(t: &Table) -> Arrivals {
    let arrivals: Arrivals = Arc::default();
    let mut w = t.watch(b"key-").unwrap();
    let out = arrivals.clone();
    tokio::spawn(async move {
        while let Some(item) = w.next().await {
            match item {
                WatchItem::Change(c) if c.value.is_none() => {
                    assert!(matches!(c.cause, Cause::Expiry | Cause::Merge), "{c:?}");
                    out.lock().unwrap().entry(c.key).or_insert_with(now_ms);
                }
                WatchItem::Lagged(n) => panic!("the expiry watch lagged by {n}"),
                _ => {}
            }
        }
    });
    arrivals
}

/// Checks every 20 ms that no node returns a key past its deadline,
/// until `stop`.
fn check_reads(tables: Vec<Table>, deadlines: Deadlines, stop: Arc<Mutex<bool>>) {
    tokio::spawn(async move {
        while !*stop.lock().unwrap() {
            let known: Vec<(Vec<u8>, u64)> = deadlines
                .lock()
                .unwrap()
                .iter()
                .map(|(k, d)| (k.clone(), *d))
                .collect();
            for t in &tables {
                for (k, d) in &known {
                    let before = now_ms();
                    if let Ok(Some(_)) = t.get(k) {
                        assert!(
                            *d > before,
                            "{k:?} read {} ms past its deadline",
                            before - d
                        );
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Lateness of every arrival against its deadline, sorted.
fn lateness(arrivals: &[Arrivals], deadlines: &Deadlines) -> Vec<u64> {
    let deadlines = deadlines.lock().unwrap();
    let mut late: Vec<u64> = arrivals
        .iter()
        .flat_map(|a| {
            a.lock()
                .unwrap()
                .iter()
                .filter_map(|(k, at)| deadlines.get(k).map(|d| at.saturating_sub(*d)))
                .collect::<Vec<_>>()
        })
        .collect();
    late.sort_unstable();
    late
}

async fn all_expired(tables: &[Table], limit: Duration) {
    wait_until(limit, || {
        tables
            .iter()
            .all(|t| t.len().unwrap() == 0 && t.keys().unwrap().is_empty())
    })
    .await;
}

#[test]
fn a_thousand_expiring_keys_disappear_everywhere_across_a_sequencer_crash() {
    runtime().block_on(async {
        let net = MemNet::new();
        let mut nodes = mem_cluster(&net, &["x1", "x2", "x3"]).await;
        let mut tables = Vec::new();
        for n in &nodes {
            tables.push(n.create_table("t").await.unwrap());
        }
        let arrivals: Vec<Arrivals> = tables[1..].iter().map(record_expiries).collect();
        let deadlines: Deadlines = Arc::default();
        let stop = Arc::new(Mutex::new(false));
        check_reads(tables[1..].to_vec(), deadlines.clone(), stop.clone());
        let started = now_ms();
        write_expiring(&tables[1], 1000, 7, &deadlines).await;
        assert_eq!(deadlines.lock().unwrap().len(), 1000);
        // The sequencer crashes in the middle of the expiries.
        let wait = (started + 1000).saturating_sub(now_ms());
        tokio::time::sleep(Duration::from_millis(wait)).await;
        drop(tables.remove(0));
        drop(nodes.remove(0));
        all_expired(&tables, Duration::from_secs(10)).await;
        *stop.lock().unwrap() = true;
        let late = lateness(&arrivals, &deadlines);
        assert_eq!(late.len(), 2000, "every expiry reached both survivors");
        let worst = *late.last().unwrap_or(&0);
        println!(
            "expiry lateness across a sequencer crash: p50 {} ms, p99 {} ms, max {} ms ({} deletes)",
            percentile(&late, 0.5),
            percentile(&late, 0.99),
            worst,
            late.len()
        );
        // The survivors take over within a failure timeout (600 ms here) plus a merge.
        assert!(worst < 3000, "an expiry arrived {worst} ms late");
        for n in nodes {
            n.close().await.unwrap();
        }
    });
}

#[test]
fn expiring_keys_expire_on_each_side_of_a_netsplit_and_stay_gone_after_the_heal() {
    runtime().block_on(async {
        let net = MemNet::new();
        let nodes = mem_cluster(&net, &["y1", "y2", "y3"]).await;
        let mut tables = Vec::new();
        for n in &nodes {
            tables.push(n.create_table("t").await.unwrap());
        }
        let arrivals: Vec<Arrivals> = tables.iter().map(record_expiries).collect();
        let deadlines: Deadlines = Arc::default();
        let stop = Arc::new(Mutex::new(false));
        check_reads(tables.clone(), deadlines.clone(), stop.clone());
        write_expiring(&tables[0], 1000, 11, &deadlines).await;
        isolate(&net, 3, 3);
        let latest = deadlines
            .lock()
            .unwrap()
            .values()
            .copied()
            .max()
            .unwrap_or(0);
        // Each side deletes them on its own: y3 once it sequences alone.
        all_expired(&tables, Duration::from_secs(10)).await;
        let late = lateness(&arrivals, &deadlines);
        println!(
            "expiry lateness across a netsplit: p50 {} ms, p99 {} ms, max {} ms ({} deletes)",
            percentile(&late, 0.5),
            percentile(&late, 0.99),
            late.last().copied().unwrap_or(0),
            late.len()
        );
        assert_eq!(late.len(), 3000, "each side wrote and applied its deletes");
        assert_eq!(
            arrivals[2].lock().unwrap().len(),
            1000,
            "on the cut-off node too"
        );
        let wait = (latest + 100).saturating_sub(now_ms());
        tokio::time::sleep(Duration::from_millis(wait)).await;
        heal_all(&net, 3);
        wait_until(Duration::from_secs(10), || {
            nodes.iter().all(|n| n.members().unwrap().len() == 3)
        })
        .await;
        // Merges and anti-entropy rounds run; nothing comes back.
        let mut back = tables[0].watch(b"key-").unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for t in &tables {
            assert_eq!(t.len().unwrap(), 0);
        }
        while let lbmkv::TryNext::Item(item) = back.try_next() {
            if let WatchItem::Change(c) = item {
                assert!(c.value.is_none(), "a merge brought {:?} back", c.key);
            }
        }
        *stop.lock().unwrap() = true;
        for n in nodes {
            n.close().await.unwrap();
        }
    });
}

#[test]
fn a_refreshed_key_does_not_expire_and_ttl_reports_the_time_left() {
    runtime().block_on(async {
        let net = MemNet::new();
        let nodes = mem_cluster(&net, &["r1", "r2", "r3"]).await;
        let mut tables = Vec::new();
        for n in &nodes {
            tables.push(n.create_table("t").await.unwrap());
        }
        let ttl = Duration::from_millis(300);
        tables[1].put_expiring(b"svc", b"up", ttl).await.unwrap();
        let left = tables[2].ttl(b"svc").unwrap().expect("a ttl");
        assert!(left <= ttl && left > Duration::from_millis(200), "{left:?}");
        // Refreshed every 100 ms for 1.5 s: by put and by update.
        for i in 0..15 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            for t in &tables {
                assert_eq!(t.get(b"svc").unwrap(), Some(b"up".to_vec()), "round {i}");
            }
            if i % 2 == 0 {
                tables[i % 3]
                    .put_expiring(b"svc", b"up", ttl)
                    .await
                    .unwrap();
            } else {
                tables[i % 3]
                    .update_expiring(b"svc", ttl, |_, v| v.map(<[u8]>::to_vec))
                    .await
                    .unwrap();
            }
        }
        // An update without a ttl keeps the deadline; a put without one drops it.
        tables[0]
            .update(b"svc", |_, _| Some(b"still".to_vec()))
            .await
            .unwrap();
        assert!(tables[0].ttl(b"svc").unwrap().is_some());
        tables[0].put(b"perm", b"x").await.unwrap();
        tables[0]
            .put_many_expiring(vec![(b"perm".to_vec(), b"y".to_vec())], ttl)
            .await
            .unwrap();
        tables[0].put(b"perm", b"z").await.unwrap();
        assert_eq!(tables[1].ttl(b"perm").unwrap(), None);
        assert_eq!(tables[1].ttl(b"absent").unwrap(), None);
        assert!(tables[0]
            .put_expiring(b"k", b"v", Duration::ZERO)
            .await
            .is_err());
        // Not refreshed any more: gone within its ttl and the bound.
        wait_until(Duration::from_millis(300 + 500), || {
            tables.iter().all(|t| t.get(b"svc").unwrap().is_none())
        })
        .await;
        wait_until(Duration::from_secs(2), || {
            tables.iter().all(|t| t.len().unwrap() == 1)
        })
        .await;
        assert_eq!(tables[2].get(b"perm").unwrap(), Some(b"z".to_vec()));
        for n in nodes {
            n.close().await.unwrap();
        }
    });
}
