//! Tombstones past their retention: purged on every node and never brought
//! back by anti-entropy, and a key written again after its tombstone was purged
//! stays written.

mod common;

use std::time::Duration;

use common::{config, runtime, wait_until};
use lbmkv::{Config, Node, Table};

fn short_retention(name: &str, anti_entropy_ms: u64) -> Config {
    Config {
        tombstone_retention: Duration::from_secs(2),
        anti_entropy_interval: Duration::from_millis(anti_entropy_ms),
        ..config(name)
    }
}

async fn pair(anti_entropy_ms: u64, b_retention: Duration) -> (Node, Node) {
    let a = Node::start(short_retention("a", anti_entropy_ms))
        .await
        .unwrap();
    // Started apart, so that the two nodes' purge rounds do not line up.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let b = Node::start(Config {
        seeds: vec![a.address().to_string()],
        tombstone_retention: b_retention,
        ..short_retention("b", anti_entropy_ms)
    })
    .await
    .unwrap();
    wait_until(Duration::from_secs(5), || b.members().unwrap().len() == 2).await;
    (a, b)
}

fn tombstones(t: &Table) -> usize {
    t.stats().unwrap().tombstones
}

#[test]
fn expired_tombstones_are_purged_on_every_node_and_stay_purged() {
    runtime().block_on(async {
        let (a, b) = pair(100, Duration::from_secs(2)).await;
        let ta = a.create_table("t").await.unwrap();
        let tb = b.create_table("t").await.unwrap();
        let keys: Vec<Vec<u8>> = (0..1000).map(|i| format!("k{i}").into_bytes()).collect();
        ta.put_many(keys.iter().map(|k| (k.clone(), b"v".to_vec())).collect())
            .await
            .unwrap();
        ta.delete_many(keys).await.unwrap();
        assert_eq!((tombstones(&ta), tombstones(&tb)), (1000, 1000));
        // Retention 2 s, a purge every 500 ms on each node: gone within two
        // purge rounds after the expiry.
        tokio::time::sleep(Duration::from_millis(3000)).await;
        wait_until(Duration::from_secs(2), || {
            tombstones(&ta) == 0 && tombstones(&tb) == 0
        })
        .await;
        for _ in 0..40 {
            assert_eq!(
                (tombstones(&ta), tombstones(&tb)),
                (0, 0),
                "anti-entropy brought purged tombstones back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(ta.stats().unwrap().digest, tb.stats().unwrap().digest);
    });
}

#[test]
fn a_key_written_again_after_its_tombstone_was_purged_on_the_sequencer_stays() {
    runtime().block_on(async {
        // Anti-entropy once a second, and "b" keeps tombstones a second
        // longer (a retention set differently, or a clock behind): the
        // sequencer "a" purges first, and "b" still holds the tombstone, not
        // even expired by its own clock, when the key is written again.
        let (a, b) = pair(1000, Duration::from_secs(3)).await;
        let ta = a.create_table("t").await.unwrap();
        let tb = b.create_table("t").await.unwrap();
        ta.put(b"k", b"v1").await.unwrap();
        ta.delete(b"k").await.unwrap();
        // The sequencer ("a") purged the tombstone, "b" still has it.
        wait_until(Duration::from_secs(6), || {
            tombstones(&ta) == 0 && tombstones(&tb) == 1
        })
        .await;
        ta.put(b"k", b"v2").await.unwrap();
        assert_eq!(tb.get(b"k").unwrap(), Some(b"v2".to_vec()));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(ta.get(b"k").unwrap(), Some(b"v2".to_vec()));
        assert_eq!(tb.get(b"k").unwrap(), Some(b"v2".to_vec()));
        assert!(ta.conflicts().unwrap().is_empty() && tb.conflicts().unwrap().is_empty());
    });
}
