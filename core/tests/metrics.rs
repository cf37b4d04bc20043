//! `Node::metrics()` and the operational fields of `Node::info()`, on a
//! two-node cluster over loopback TCP.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{cluster, runtime, wait_until};

/// The samples of a Prometheus text exposition: `name{labels}` -> value.
/// Panics on a line that is neither a comment nor `series value`.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        let value: f64 = value.parse().expect("a number");
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "{line}"
        );
    }
    samples
}

#[test]
fn metrics_count_writes_strong_reads_members_and_tables() {
    runtime().block_on(async {
        let nodes = cluster(2).await;
        let t = nodes[0].create_table("users").await.unwrap();
        t.put(b"alice", b"admin").await.unwrap();
        t.put(b"bob", b"user").await.unwrap();
        t.delete(b"bob").await.unwrap();
        assert_eq!(
            t.get_strong(b"alice").await.unwrap(),
            Some(b"admin".to_vec())
        );

        let text = nodes[0].metrics().unwrap();
        let m = parse(&text);
        assert_eq!(m["lbmkv_members"], 2.0, "{text}");
        assert!(m["lbmkv_view_changes_total"] >= 1.0, "{text}");
        assert_eq!(m["lbmkv_writes_total"], 3.0, "{text}");
        assert_eq!(m["lbmkv_write_duration_seconds_count"], 3.0, "{text}");
        assert_eq!(m["lbmkv_write_duration_seconds_bucket{le=\"+Inf\"}"], 3.0);
        assert_eq!(m["lbmkv_strong_reads_total"], 1.0, "{text}");
        assert_eq!(m["lbmkv_table_entries{table=\"users\"}"], 1.0, "{text}");
        assert_eq!(m["lbmkv_table_tombstones{table=\"users\"}"], 1.0, "{text}");
        assert_eq!(m["lbmkv_table_bytes{table=\"users\"}"], 10.0, "{text}");
        assert!(text.contains("# TYPE lbmkv_write_duration_seconds histogram"));
        let peer = nodes[1].name();
        let heard = format!("lbmkv_peer_last_heard_seconds{{peer=\"{peer}\"}}");
        assert!(m[&heard] < 2.0, "{text}");

        // The sequencer of the table: the same member on both nodes.
        let seq = nodes[0].info().unwrap().sequencer.expect("a sequencer");
        let series = format!("lbmkv_table_sequencer{{table=\"users\",sequencer=\"{seq}\"}}");
        assert_eq!(m[&series], 1.0, "{text}");
        let other = parse(&nodes[1].metrics().unwrap());
        assert_eq!(other[&series], 1.0);

        // A split and its heal: the merge that follows is counted and timed.
        nodes[0].disconnect(nodes[1].name()).await.unwrap();
        nodes[1].disconnect(nodes[0].name()).await.unwrap();
        wait_until(Duration::from_secs(5), || {
            nodes[0].members().unwrap().len() == 1
        })
        .await;
        t.put(b"carol", b"user").await.unwrap();
        // The first connect is refused by the side that still refuses; the
        // second may be turned away by a redial of the first, which stays.
        let _ = nodes[0].connect(nodes[1].address()).await;
        let _ = nodes[1].connect(nodes[0].address()).await;
        wait_until(Duration::from_secs(10), || {
            nodes.iter().all(|n| n.members().unwrap().len() == 2)
        })
        .await;
        let merges = |n: &lbmkv::Node| parse(&n.metrics().unwrap())["lbmkv_merges_total"];
        wait_until(Duration::from_secs(10), || {
            nodes.iter().any(|n| merges(n) >= 1.0)
        })
        .await;
        for n in &nodes {
            let m = parse(&n.metrics().unwrap());
            assert_eq!(
                m["lbmkv_merge_duration_seconds_count"], m["lbmkv_merges_total"],
                "every merge timed"
            );
        }
        for n in nodes {
            n.close().await.unwrap();
        }
    });
}

#[test]
fn info_has_version_uptime_peers_and_table_sequencers() {
    runtime().block_on(async {
        let nodes = cluster(2).await;
        nodes[0].create_table("t").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let info = nodes[0].info().unwrap();
        assert_eq!(info.version, lbmkv::VERSION);
        assert!(info.uptime_ms >= 50, "{info:?}");
        assert_eq!(info.peers.len(), 1, "{info:?}");
        assert_eq!(info.peers[0].name, nodes[1].name());
        assert_eq!(info.peers[0].address, nodes[1].address());
        assert!(info.peers[0].connected_ms >= 50, "{info:?}");
        // Heartbeats every heartbeat interval: the peer was heard lately.
        assert!(info.peers[0].last_heard_ms < 1000, "{info:?}");
        let seq = info.sequencer.clone().expect("a sequencer");
        // Only the sequencer probes, and it timed its peer's answer.
        let sequencer = if seq == nodes[0].name() { 0 } else { 1 };
        wait_until(Duration::from_secs(5), || {
            nodes[sequencer].info().unwrap().peers[0]
                .round_trip_us
                .is_some_and(|us| us < 1_000_000)
        })
        .await;
        assert_eq!(info.tables[0].sequencer.as_deref(), Some(seq.as_str()));
        let t = nodes[1].table("t").unwrap();
        assert_eq!(t.stats().unwrap().sequencer.as_deref(), Some(seq.as_str()));
        nodes[1].close().await.unwrap();
        wait_until(Duration::from_secs(5), || {
            nodes[0].info().unwrap().peers.is_empty()
        })
        .await;
        nodes[0].close().await.unwrap();
        assert!(nodes[0].metrics().is_err(), "metrics of a closed node");
    });
}
