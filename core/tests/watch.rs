//! Table watches across a 3-node cluster on the in-memory network: writes
//! from every node in application order, deletes, merges after a netsplit,
//! a conflict resolution, a slow consumer and the end of a watch.

mod common;

use std::time::Duration;

use common::{heal_all, isolate, mem_cluster, runtime, wait_until};
use lbmkv::net::MemNet;
use lbmkv::{Cause, Change, Resolution, Watch, WatchItem};

/// Takes changes from `w` until `done` holds for what was taken (10 s at most).
async fn collect(w: &mut Watch, seen: &mut Vec<Change>, done: impl Fn(&[Change]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done(seen) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, w.next()).await {
            Ok(Some(WatchItem::Change(c))) => seen.push(c),
            Ok(Some(WatchItem::Lagged(n))) => panic!("a watch with room lagged by {n}"),
            Ok(Some(other)) => panic!("unexpected item {other:?}"),
            Ok(None) => panic!("the watch ended early"),
            Err(_) => panic!(
                "changes missing after 10 s; seen {} of them: {:?}",
                seen.len(),
                seen.iter().map(|c| (&c.key, c.cause)).collect::<Vec<_>>()
            ),
        }
    }
}

fn key_str(c: &Change) -> String {
    String::from_utf8_lossy(&c.key).into_owned()
}

#[test]
fn watches_see_writes_deletes_merges_and_resolutions_in_application_order() {
    runtime().block_on(async {
        let net = MemNet::new();
        let nodes = mem_cluster(&net, &["w1", "w2", "w3"]).await;
        let mut tables = Vec::new();
        for n in &nodes {
            let keep_max = lbmkv::handler_fn(|c| {
                let l = c.local.clone().unwrap_or_default();
                let r = c.remote.clone().unwrap_or_default();
                Ok(Resolution::Value(l.max(r)))
            });
            tables.push(n.create_table_with("t", Some(keep_max)).await.unwrap());
        }
        let mut watches: Vec<Watch> = tables.iter().map(|t| t.watch(b"k").unwrap()).collect();
        let mut other = tables[1].watch(b"zzz").unwrap();

        // Each node writes 20 keys of its own, one after the other, all at once.
        let mut writers = Vec::new();
        for (i, t) in tables.iter().enumerate() {
            let t = t.clone();
            writers.push(tokio::spawn(async move {
                for j in 0..20 {
                    let key = format!("k{i}-{j:02}");
                    t.put(key.as_bytes(), format!("v{j}").as_bytes())
                        .await
                        .unwrap();
                }
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        assert_eq!(
            tables[2].delete(b"k0-05").await.unwrap(),
            Some(b"v5".to_vec())
        );
        tables[0].put(b"not-watched", b"x").await.unwrap();

        let mut seen: Vec<Vec<Change>> = vec![Vec::new(); 3];
        for (w, s) in watches.iter_mut().zip(seen.iter_mut()) {
            collect(w, s, |s| s.len() == 61).await;
        }
        for (n, s) in seen.iter().enumerate() {
            // The writes of each node in the order it made them.
            for i in 0..3 {
                let mine: Vec<String> = s
                    .iter()
                    .filter(|c| c.value.is_some() && key_str(c).starts_with(&format!("k{i}-")))
                    .map(key_str)
                    .collect();
                let want: Vec<String> = (0..20).map(|j| format!("k{i}-{j:02}")).collect();
                assert_eq!(mine, want, "node {n}: writes of node {i}");
            }
            let last = &s[60];
            assert_eq!(
                (
                    key_str(last).as_str(),
                    last.value.as_deref(),
                    last.prev.as_deref()
                ),
                ("k0-05", None, Some(&b"v5"[..])),
                "node {n}: the delete comes last"
            );
            assert!(s.iter().all(|c| c.table == "t" && c.node == "w1"));
        }
        // Every node applied the same sequence: the sequencer's order.
        let order = |s: &[Change]| {
            s.iter()
                .map(|c| (c.key.clone(), c.value.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(order(&seen[0]), order(&seen[1]));
        assert_eq!(order(&seen[0]), order(&seen[2]));
        // w1 sequences: its changes are its own writes, the others' replicated.
        assert!(seen[0].iter().all(|c| c.cause == Cause::Write));
        assert!(seen[1..]
            .iter()
            .flatten()
            .all(|c| c.cause == Cause::Replicated));
        assert!(
            matches!(other.try_next(), lbmkv::TryNext::Empty),
            "a prefix filters"
        );

        // A netsplit: w3 alone on one side.
        isolate(&net, 3, 3);
        wait_until(Duration::from_secs(5), || {
            nodes[2].members().unwrap().len() == 1 && nodes[0].members().unwrap().len() == 2
        })
        .await;
        tables[0].put(b"k-only-a", b"a").await.unwrap();
        tables[0].put(b"k-both", b"a-side").await.unwrap();
        tables[2].put(b"k-only-b", b"b").await.unwrap();
        tables[2].put(b"k-both", b"b-side").await.unwrap();
        let mut split: Vec<Vec<Change>> = vec![Vec::new(); 3];
        for (w, s) in watches.iter_mut().zip(split.iter_mut()) {
            collect(w, s, |s| s.len() == 2).await;
        }
        heal_all(&net, 3);
        let resolved = |s: &[Change]| {
            s.iter()
                .any(|c| c.cause == Cause::Resolve && c.key == b"k-both")
        };
        let merged =
            |s: &[Change], key: &[u8]| s.iter().any(|c| c.cause == Cause::Merge && c.key == key);
        for (n, (w, s)) in watches.iter_mut().zip(split.iter_mut()).enumerate() {
            let missing: &[u8] = if n == 2 { b"k-only-a" } else { b"k-only-b" };
            collect(w, s, |s| resolved(s) && merged(s, missing)).await;
            let c = s.iter().rev().find(|c| c.cause == Cause::Resolve).unwrap();
            assert_eq!(c.value.as_deref(), Some(&b"b-side"[..]), "node {n}: {c:?}");
        }
        for t in &tables {
            wait_until(Duration::from_secs(5), || {
                t.get(b"k-both").unwrap() == Some(b"b-side".to_vec())
            })
            .await;
        }

        // Closing the node ends its watch cleanly, after what it buffered.
        nodes[1].close().await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            while watches[1].next().await.is_some() {}
        })
        .await;
        assert!(ended.is_ok(), "a watch of a closed node ends");
        assert!(other.next().await.is_none());
        assert!(tables[1].watch(b"").is_err(), "no watch on a closed node");
    });
}

#[test]
fn a_slow_consumer_is_told_how_many_changes_it_missed() {
    runtime().block_on(async {
        let net = MemNet::new();
        let nodes = mem_cluster(&net, &["s1", "s2", "s3"]).await;
        let t1 = nodes[0].create_table("t").await.unwrap();
        let t3 = nodes[2].create_table("t").await.unwrap();
        let mut slow = t3.watch_with(b"", 8).unwrap();
        let entries = |i: u32| vec![(i.to_be_bytes().to_vec(), b"v".to_vec())];
        for i in 0..50u32 {
            t1.put_many(entries(i)).await.unwrap();
        }
        let mut changes = 0u64;
        let mut lagged = 0u64;
        let mut order = Vec::new();
        while changes + lagged < 50 {
            match tokio::time::timeout(Duration::from_secs(5), slow.next()).await {
                Ok(Some(WatchItem::Change(c))) => {
                    changes += 1;
                    order.push(c.key);
                }
                Ok(Some(WatchItem::Lagged(n))) => {
                    lagged += n;
                    order.push(b"lag".to_vec());
                }
                other => panic!("{other:?} after {changes} changes and {lagged} lagged"),
            }
        }
        assert_eq!(changes, 8, "the buffer's worth");
        assert_eq!(lagged, 42, "the rest counted, not lost silently");
        assert_eq!(order.last().map(Vec::as_slice), Some(&b"lag"[..]));
        // Room again: the next change comes through.
        t1.put(b"after", b"v").await.unwrap();
        match tokio::time::timeout(Duration::from_secs(5), slow.next()).await {
            Ok(Some(WatchItem::Change(c))) => assert_eq!(c.key, b"after"),
            other => panic!("{other:?}"),
        }
        slow.close();
        assert!(slow.next().await.is_none(), "a closed watch ends");
        for n in nodes {
            n.close().await.unwrap();
        }
    });
}
