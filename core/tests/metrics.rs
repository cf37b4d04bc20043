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
        assert!(m["lbmkv_merges_total"] >= 0.0);
        assert!(text.contains("# TYPE lbmkv_write_duration_seconds histogram"));

        // The sequencer of the table: the same member on both nodes.
        let seq = nodes[0].info().unwrap().sequencer.expect("a sequencer");
        let series = format!("lbmkv_table_sequencer{{table=\"users\",sequencer=\"{seq}\"}}");
        assert_eq!(m[&series], 1.0, "{text}");
        let other = parse(&nodes[1].metrics().unwrap());
        assert_eq!(other[&series], 1.0);
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
        let seq = info.sequencer.clone().expect("a sequencer");
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
