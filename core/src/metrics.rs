//! The Prometheus text exposition (format 0.0.4) of a node: the one place
//! where metric names, types and help texts are defined. Every surface (Rust,
//! C, Python, Node.js, `lbmkv node --metrics-listen`) returns this text.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::context::{HistogramSnapshot, Stats, LATENCY_BUCKETS};
use crate::info::Info;

/// Writes metric families into a string.
struct Exposition {
    out: String,
}

impl Exposition {
    /// The `# HELP` and `# TYPE` lines of a family.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample line; `labels` are `(name, value)` pairs.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// A label value with `\`, `"` and line feeds escaped, as the format asks.
fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// The exposition of a node described by `info`, with the counters of `stats`.
pub(crate) fn render(info: &Info, stats: &Stats) -> String {
    let mut e = Exposition { out: String::new() };
    node_families(&mut e, info, stats);
    table_families(&mut e, info);
    write_families(&mut e, stats);
    traffic_families(&mut e, info, stats);
    peer_families(&mut e, info);
    e.out
}

/// Per peer: its send queue, when it was last heard, its probe round trip.
fn peer_families(e: &mut Exposition, info: &Info) {
    e.family(
        "lbmkv_peer_send_queue_bytes",
        "gauge",
        "Bytes queued for one peer and not yet handed to its socket.",
    );
    for p in &info.peers {
        e.sample(
            "lbmkv_peer_send_queue_bytes",
            &[("peer", &p.name)],
            p.send_queue_bytes,
        );
    }
    e.family(
        "lbmkv_peer_last_heard_seconds",
        "gauge",
        "Seconds since the last frame from a peer.",
    );
    for p in &info.peers {
        e.sample(
            "lbmkv_peer_last_heard_seconds",
            &[("peer", &p.name)],
            p.last_heard_ms as f64 / 1000.0,
        );
    }
    e.family(
        "lbmkv_peer_round_trip_seconds",
        "gauge",
        "The last round trip of a probe to a peer (measured where this node sequences).",
    );
    for p in &info.peers {
        if let Some(us) = p.round_trip_us {
            e.sample(
                "lbmkv_peer_round_trip_seconds",
                &[("peer", &p.name)],
                us as f64 / 1e6,
            );
        }
    }
}

/// A histogram family with cumulative buckets, sum and count.
fn histogram(e: &mut Exposition, name: &str, help: &str, h: &HistogramSnapshot) {
    e.family(name, "histogram", help);
    let bucket = format!("{name}_bucket");
    for (bound, count) in LATENCY_BUCKETS.iter().zip(&h.cumulative) {
        e.sample(&bucket, &[("le", &bound.to_string())], count);
    }
    e.sample(&bucket, &[("le", "+Inf")], h.count);
    e.sample(&format!("{name}_sum"), &[], h.sum_seconds);
    e.sample(&format!("{name}_count"), &[], h.count);
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// The node itself: version, uptime, view.
fn node_families(e: &mut Exposition, info: &Info, stats: &Stats) {
    e.family(
        "lbmkv_info",
        "gauge",
        "The node's version and name (always 1).",
    );
    e.sample(
        "lbmkv_info",
        &[("version", &info.version), ("node", &info.name)],
        1,
    );
    e.single(
        "lbmkv_uptime_seconds",
        "gauge",
        "Seconds since the node started.",
        info.uptime_ms as f64 / 1000.0,
    );
    e.single(
        "lbmkv_members",
        "gauge",
        "Nodes in this node's view, itself included.",
        info.members.len(),
    );
    e.single(
        "lbmkv_view_changes_total",
        "counter",
        "Peers that joined or left this node's view.",
        load(&stats.view_changes),
    );
}

/// Per table: entries, bytes, tombstones, conflict log, sequencer.
fn table_families(e: &mut Exposition, info: &Info) {
    e.family(
        "lbmkv_table_entries",
        "gauge",
        "Live entries of a table on this node.",
    );
    for t in &info.tables {
        e.sample("lbmkv_table_entries", &[("table", &t.name)], t.entries);
    }
    e.family(
        "lbmkv_table_bytes",
        "gauge",
        "Bytes of the live keys and values of a table on this node.",
    );
    for t in &info.tables {
        e.sample("lbmkv_table_bytes", &[("table", &t.name)], t.bytes);
    }
    e.family(
        "lbmkv_table_tombstones",
        "gauge",
        "Tombstones a table keeps for merges.",
    );
    for t in &info.tables {
        e.sample(
            "lbmkv_table_tombstones",
            &[("table", &t.name)],
            t.tombstones,
        );
    }
    e.family(
        "lbmkv_table_conflict_log_entries",
        "gauge",
        "Entries in a table's conflict log.",
    );
    for t in &info.tables {
        e.sample(
            "lbmkv_table_conflict_log_entries",
            &[("table", &t.name)],
            t.conflicts,
        );
    }
    e.family(
        "lbmkv_table_sequencer",
        "gauge",
        "1 for the member that orders a table's writes for this node.",
    );
    for t in &info.tables {
        if let Some(s) = &t.sequencer {
            e.sample(
                "lbmkv_table_sequencer",
                &[("table", &t.name), ("sequencer", s)],
                1,
            );
        }
    }
}

/// Writes this node submitted, their latency, and strong reads.
fn write_families(e: &mut Exposition, stats: &Stats) {
    e.single(
        "lbmkv_writes_total",
        "counter",
        "Writes (puts, deletes, batches, updates) this node submitted.",
        stats.writes.snapshot().count,
    );
    e.single(
        "lbmkv_write_errors_total",
        "counter",
        "Writes this node submitted that failed.",
        load(&stats.write_errors),
    );
    histogram(
        e,
        "lbmkv_write_duration_seconds",
        "Time from a write's submission to its acknowledgement (or failure).",
        &stats.writes.snapshot(),
    );
    e.single(
        "lbmkv_strong_reads_total",
        "counter",
        "Strong reads this node submitted to a sequencer.",
        load(&stats.strong_reads),
    );
}

/// Merges, conflicts and the traffic with peers.
fn traffic_families(e: &mut Exposition, info: &Info, stats: &Stats) {
    e.single(
        "lbmkv_merges_total",
        "counter",
        "Merges of one table with one peer that finished.",
        load(&stats.merges),
    );
    histogram(
        e,
        "lbmkv_merge_duration_seconds",
        "How long merges of one table with one peer took.",
        &stats.merge_durations.snapshot(),
    );
    e.single(
        "lbmkv_merge_bytes_sent_total",
        "counter",
        "Bytes of merge traffic this node wrote.",
        info.merge_bytes_sent,
    );
    e.family(
        "lbmkv_conflicts_total",
        "counter",
        "Conflicts settled, by how: the table's handler, or the fallback rule.",
    );
    e.sample(
        "lbmkv_conflicts_total",
        &[("resolution", "handler")],
        load(&stats.conflicts_handled),
    );
    e.sample(
        "lbmkv_conflicts_total",
        &[("resolution", "fallback")],
        load(&stats.conflicts_fallback),
    );

    e.single(
        "lbmkv_bytes_sent_total",
        "counter",
        "Bytes this node wrote to peers.",
        info.bytes_sent,
    );
    e.single(
        "lbmkv_bytes_received_total",
        "counter",
        "Bytes this node read from peers.",
        info.bytes_received,
    );
    e.single(
        "lbmkv_send_queue_bytes",
        "gauge",
        "Bytes queued for peers and not yet handed to their sockets.",
        info.send_queue_bytes,
    );
    e.single(
        "lbmkv_write_budget_in_use_bytes",
        "gauge",
        "Bytes of the write budget held by writes waiting for sequencers.",
        info.write_budget_in_use,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_escape_backslashes_quotes_and_line_feeds() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let stats = Stats::default();
        stats.writes.observe(std::time::Duration::from_micros(100));
        stats.writes.observe(std::time::Duration::from_millis(30));
        stats.writes.observe(std::time::Duration::from_secs(60));
        let h = stats.writes.snapshot();
        assert_eq!(h.count, 3);
        assert_eq!(h.cumulative[0], 1);
        assert_eq!(h.cumulative[LATENCY_BUCKETS.len() - 1], 2);
        assert_eq!(h.cumulative[LATENCY_BUCKETS.len()], 3);
    }
}
