//! The checker of a recorded history.
//!
//! Every seed is *strict* or *split* (drawn from the seed, see
//! [`super::world::Params::strict`]). Strict seeds draw only faults after
//! which the design promises one total order per table: crashes and restarts
//! (the sequencer's included), clean leaves, the join of a node whose name
//! sorts first, pauses past the failure timeout, partial partitions in which
//! one node still sees every other (so any two nodes see each other or a
//! common neighbour), stalls of such links, slow and lossy links, connection
//! resets and clock skew. Split seeds may also draw partitions into halves and
//! isolated nodes whose clients keep writing, where both sides legitimately
//! accept writes and the merge settles what they did concurrently.
//!
//! | property (calls of a paused node over its pause count as failed) | strict | split |
//! |---|---|---|
//! | no `update` value acknowledged twice | yes | counted, not a violation |
//! | final counter >= every acknowledged value; final - acknowledged <= failed increments | yes | no |
//! | a strong read returns no counter value below an increment acknowledged before it began, and no register value overwritten (by an acknowledged write) before it began | yes | no |
//! | local counter reads on one node incarnation never go back below a value they returned that was acknowledged before the read began (a value whose increment failed may be taken back) | yes | no |
//! | each key's final value is one written by a write that is not followed (in real time) by an acknowledged write; an acknowledged delete is not undone | yes | unless a conflict on that key was recorded (conflict log or `conflict` event) |
//! | no value appears that no call wrote | yes | yes |
//! | every replica identical (digest) and every view whole within failure timeout + 1 s reconnect backoff + 4 anti-entropy rounds after the writes stop | yes | yes |
//! | after the final heal, failure timeout + 1 s + 2 anti-entropy rounds, every node acknowledges writes again | yes | yes |
//!
//! Calls that failed may or may not have taken effect: a failed write counts
//! as a possible final value at any later time, and a failed increment may
//! account for one increment more than were acknowledged.
//!
//! Writes and strong reads made on a node while it was paused (their call
//! overlaps the pause) count as failed, whatever they returned: the pause
//! emulation keeps that node's engine running, so a batch it ordered just
//! before its links went down is acknowledged for a view of one once it drops
//! its silent peers, while the others order the same values again. The
//! project's promise for a pause is about the clients of the other nodes (as
//! in its process test, `tests/cluster/handoffs.rs`); how many such calls
//! were acknowledged is reported per seed ("paused acks").

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use super::clients::{parse_counter, Call, Op, Res};
use super::world::{FinalState, Outcome, Sim, COUNTERS, REGISTERS};

/// One broken promise.
#[derive(Clone, Debug)]
pub struct Violation {
    pub what: String,
    /// Ids of the calls that show it.
    pub calls: Vec<u64>,
    /// The key concerned, if any.
    pub key: Option<Vec<u8>>,
}

fn v(what: String, calls: Vec<u64>, key: Option<&[u8]>) -> Violation {
    Violation {
        what,
        calls,
        key: key.map(<[u8]>::to_vec),
    }
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn check(
    sim: &Arc<Sim>,
    healed_at: u64,
    quiet_at: u64,
    converged_at: Option<u64>,
    finals: &[FinalState],
) -> Outcome {
    let p = &sim.params;
    let rec = sim.rec();
    let strict = p.strict;
    // The pause emulation keeps the paused node's engine running: what it
    // had in flight when it was cut off can be acknowledged for a view of
    // one once it drops its peers. Those calls (on the paused node, over
    // its pause) count as failed: their outcome is unknown, as for a client
    // of a process that was stopped.
    let mut paused_acks = 0;
    let calls: Vec<Call> = rec
        .calls
        .iter()
        .map(|c| {
            let checked = c.is_write() || matches!(c.op, Op::GetStrong(_));
            if c.ok() && checked && overlaps_pause(&rec.paused, c) {
                paused_acks += 1;
                let mut c = c.clone();
                c.res = Res::Failed("outcome unknown: its node was paused".into());
                c
            } else {
                c.clone()
            }
        })
        .collect();
    let calls = &calls;
    let mut out = Vec::new();
    let ft_us = p.failure_timeout_ms * 1000;
    let ae_us = p.anti_entropy_ms * 1000;

    // Convergence.
    let bound = ft_us + 1_000_000 + 4 * ae_us;
    match converged_at {
        None => out.push(v(
            "replicas never became identical with whole views (20 s after the writes stopped)"
                .into(),
            vec![],
            None,
        )),
        Some(t) if t.saturating_sub(quiet_at) > bound => out.push(v(
            format!(
                "replicas became identical only {} ms after the writes stopped (bound {} ms)",
                (t - quiet_at) / 1000,
                bound / 1000
            ),
            vec![],
            None,
        )),
        _ => {}
    }
    let final_of = |key: &[u8]| -> Option<Vec<u8>> {
        finals.first().and_then(|f| {
            f.values
                .iter()
                .find(|(k, _)| k == key)
                .and_then(|(_, v)| v.clone())
        })
    };
    let conflicted: BTreeSet<Vec<u8>> = rec.conflicts.iter().map(|c| c.key.clone()).collect();
    let written: BTreeSet<Vec<u8>> = calls
        .iter()
        .flat_map(|c| match &c.op {
            Op::Put(_, v) => vec![v.clone()],
            Op::PutMany(kvs) => kvs.iter().map(|(_, v)| v.clone()).collect(),
            _ => vec![],
        })
        .collect();

    // Counters.
    let mut acked_total = 0;
    let mut split_dups = 0;
    for key in COUNTERS.iter().map(|k| k.as_bytes()) {
        let incs: Vec<&Call> = calls
            .iter()
            .filter(|c| c.op == Op::Incr(key.to_vec()))
            .collect();
        let acked: Vec<(&Call, u64)> = incs
            .iter()
            .filter_map(|c| match c.res {
                Res::Incr(_, new) => Some((*c, new)),
                _ => None,
            })
            .collect();
        let failed = incs.len() - acked.len();
        acked_total += acked.len();
        let mut by_value: BTreeMap<u64, Vec<&Call>> = BTreeMap::new();
        for (c, new) in &acked {
            by_value.entry(*new).or_default().push(c);
        }
        let fin = parse_counter(final_of(key).as_deref()).unwrap_or(0);
        for (value, owners) in by_value.iter().filter(|(_, o)| o.len() > 1) {
            if strict {
                out.push(v(
                    format!(
                        "{}: value {value} acknowledged to {} increments",
                        show(key),
                        owners.len()
                    ),
                    owners.iter().map(|c| c.id).collect(),
                    Some(key),
                ));
            } else {
                split_dups += owners.len() - 1;
            }
        }
        if !strict {
            continue;
        }
        if let Some((c, largest)) = acked.iter().max_by_key(|(_, n)| *n) {
            if fin < *largest {
                out.push(v(
                    format!(
                        "{}: final counter {fin} is below the acknowledged value {largest}",
                        show(key)
                    ),
                    vec![c.id],
                    Some(key),
                ));
            }
        }
        if fin > (acked.len() + failed) as u64 {
            out.push(v(
                format!(
                    "{}: final counter {fin} exceeds {} acknowledged + {failed} failed increments",
                    show(key),
                    acked.len()
                ),
                vec![],
                Some(key),
            ));
        }
        // Strong reads see every increment acknowledged before they began.
        for r in calls.iter().filter(|c| c.op == Op::GetStrong(key.to_vec())) {
            let Res::Value(val) = &r.res else { continue };
            let got = parse_counter(val.as_deref()).unwrap_or(0);
            if let Some((c, n)) = acked
                .iter()
                .filter(|(c, _)| c.end_us < r.start_us)
                .max_by_key(|(_, n)| *n)
            {
                if got < *n {
                    out.push(v(
                        format!(
                            "{}: strong read returned {got} after increment #{} was acknowledged with {n}",
                            show(key),
                            c.id
                        ),
                        vec![c.id, r.id],
                        Some(key),
                    ));
                }
            }
        }
        // Local reads on one incarnation never go back below an acknowledged
        // value they returned. A read may return a value whose increment is
        // still being acknowledged; when that increment fails, the sequencer
        // and the members that applied it take it back, and a read there then
        // returns the value before it.
        let mut reads: BTreeMap<(usize, u32), Vec<(&Call, u64)>> = BTreeMap::new();
        for r in calls.iter().filter(|c| c.op == Op::Get(key.to_vec())) {
            if let Res::Value(val) = &r.res {
                let got = parse_counter(val.as_deref()).unwrap_or(0);
                reads
                    .entry((r.slot, r.incarnation))
                    .or_default()
                    .push((r, got));
            }
        }
        for list in reads.values() {
            let mut best: Option<(&Call, u64)> = None;
            for &(r, got) in list {
                if let Some((b, bv)) = best {
                    if got < bv && b.end_us <= r.start_us {
                        out.push(v(
                            format!(
                                "{}: local reads on {}#{} went back from {bv} to {got}",
                                show(key),
                                r.node,
                                r.incarnation
                            ),
                            vec![b.id, r.id],
                            Some(key),
                        ));
                        break;
                    }
                }
                // Only a value acknowledged before the read began: the read
                // may have seen a failed increment's version, taken back
                // since, whose value a later increment was acknowledged with.
                let acknowledged = got == 0
                    || by_value
                        .get(&got)
                        .is_some_and(|o| o.iter().any(|c| c.end_us <= r.start_us));
                if acknowledged && best.is_none_or(|(_, bv)| got > bv) {
                    best = Some((r, got));
                }
            }
        }
    }

    // Registers.
    for i in 0..REGISTERS {
        let key = format!("r{i}").into_bytes();
        let writes: Vec<(&Call, Option<&[u8]>)> = calls
            .iter()
            .filter_map(|c| c.writes(&key).map(|w| (c, w)))
            .collect();
        // Whether write `x` was followed by an acknowledged write that began
        // after it ended, itself ending before `before`.
        let overwritten = |x: &Call, before: u64| {
            x.ok()
                && writes.iter().any(|(w, _)| {
                    w.id != x.id && w.ok() && w.start_us > x.end_us && w.end_us < before
                })
        };
        let fin = final_of(&key);
        let candidates: Vec<&(&Call, Option<&[u8]>)> = writes
            .iter()
            .filter(|(x, _)| !overwritten(x, u64::MAX))
            .collect();
        let any_acked = writes.iter().any(|(w, _)| w.ok());
        let valid = match &fin {
            Some(val) => candidates.iter().any(|(_, w)| *w == Some(val.as_slice())),
            None => !any_acked || candidates.iter().any(|(_, w)| w.is_none()),
        };
        if let Some(val) = &fin {
            if !written.contains(val) {
                out.push(v(
                    format!(
                        "{}: final value {} was never written",
                        show(&key),
                        show(val)
                    ),
                    vec![],
                    Some(&key),
                ));
                continue;
            }
        }
        if !valid && (strict || !conflicted.contains(&key)) {
            let source = writes
                .iter()
                .find(|(_, w)| w.map(<[u8]>::to_vec) == fin && fin.is_some());
            let lost: Vec<u64> = candidates
                .iter()
                .filter(|(c, _)| c.ok())
                .map(|(c, _)| c.id)
                .collect();
            let undone_delete = source.is_some_and(|(x, _)| {
                writes
                    .iter()
                    .any(|(d, w)| w.is_none() && d.ok() && d.start_us > x.end_us && x.ok())
            });
            let mut ids = lost.clone();
            ids.extend(source.map(|(c, _)| c.id));
            out.push(v(
                format!(
                    "{}: final value {:?} {}; the last acknowledged writes were {}{}",
                    show(&key),
                    fin.as_deref().map(show),
                    match source {
                        Some((c, _)) => format!("comes from #{}", c.id),
                        None => "(absent)".into(),
                    },
                    lost.iter()
                        .map(|id| format!("#{id}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    if undone_delete {
                        " (an acknowledged delete was undone)"
                    } else if strict {
                        ""
                    } else {
                        " (no conflict recorded)"
                    }
                ),
                ids,
                Some(&key),
            ));
        }
        // Strong reads: not overwritten before they began.
        if strict {
            for r in calls.iter().filter(|c| c.op == Op::GetStrong(key.clone())) {
                let Res::Value(val) = &r.res else { continue };
                let ok = match val {
                    Some(val) => writes.iter().any(|(x, w)| {
                        *w == Some(val.as_slice())
                            && x.start_us <= r.end_us
                            && !overwritten(x, r.start_us)
                    }),
                    None => {
                        !writes.iter().any(|(w, _)| w.ok() && w.end_us < r.start_us)
                            || writes.iter().any(|(x, w)| {
                                w.is_none() && x.start_us <= r.end_us && !overwritten(x, r.start_us)
                            })
                    }
                };
                if !ok {
                    let newer: Vec<u64> = writes
                        .iter()
                        .filter(|(w, _)| w.ok() && w.end_us < r.start_us)
                        .map(|(w, _)| w.id)
                        .rev()
                        .take(2)
                        .collect();
                    let mut ids = vec![r.id];
                    ids.extend(newer);
                    out.push(v(
                        format!(
                            "{}: strong read #{} returned {:?}, overwritten before it began",
                            show(&key),
                            r.id,
                            val.as_deref().map(show)
                        ),
                        ids,
                        Some(&key),
                    ));
                }
            }
        }
        // No local read returns a value nobody wrote.
        for r in calls.iter().filter(|c| c.op == Op::Get(key.clone())) {
            if let Res::Value(Some(val)) = &r.res {
                if !written.contains(val) {
                    out.push(v(
                        format!("{}: read a value never written", show(&key)),
                        vec![r.id],
                        Some(&key),
                    ));
                }
            }
        }
    }

    // Liveness after the final heal.
    let recover = healed_at + ft_us + 1_000_000 + 2 * ae_us;
    let stop_at = healed_at + p.after_heal_ms * 1000;
    for (slot, s) in rec.slots.iter().enumerate() {
        let since = recover.max(s.ready_at.unwrap_or(u64::MAX));
        if since.saturating_add(300_000) > stop_at {
            continue;
        }
        let tried = calls
            .iter()
            .any(|c| c.slot == slot && c.is_write() && c.start_us >= since);
        let done = calls
            .iter()
            .any(|c| c.slot == slot && c.is_write() && c.ok() && c.end_us >= since);
        if tried && !done {
            out.push(v(
                format!(
                    "{}: no write acknowledged from {} ms on (the final heal was at {} ms)",
                    s.name,
                    since / 1000,
                    healed_at / 1000
                ),
                vec![],
                None,
            ));
        }
    }

    // Calls as a set: what each client asked, when, and what it got, in
    // (start, client) order without the record's ids. Tasks woken at the
    // same instant may record in another order from run to run (see the
    // determinism notes in `tests/simulation.rs`).
    let mut h = DefaultHasher::new();
    let mut canonical: Vec<(u64, usize, u64, &Op, &Res, u32)> = calls
        .iter()
        .map(|c| (c.start_us, c.client, c.end_us, &c.op, &c.res, c.incarnation))
        .collect();
    canonical.sort_by_key(|c| (c.0, c.1));
    canonical.hash(&mut h);
    for f in &rec.faults {
        f.at_us.hash(&mut h);
        f.what.hash(&mut h);
    }
    for f in finals {
        f.digest.hash(&mut h);
    }
    let report = if out.is_empty() {
        String::new()
    } else {
        let faults: Vec<(u64, String)> = rec
            .faults
            .iter()
            .map(|f| (f.at_us, f.what.clone()))
            .collect();
        report(p, calls, &faults, &out)
    };
    Outcome {
        seed: p.seed,
        strict,
        nodes: p.nodes + usize::from(p.joiner),
        faults: rec
            .faults
            .iter()
            .filter(|f| {
                !f.what.starts_with("heal")
                    && !f.what.starts_with("restart")
                    && !f.what.starts_with("resume")
                    && !f.what.starts_with("links fast")
                    && f.what != "final heal"
            })
            .count(),
        ops: calls.len(),
        acked_increments: acked_total,
        duplicates_in_split: split_dups,
        paused_acks,
        fingerprint: h.finish(),
        converged_after_ms: converged_at.map(|t| t.saturating_sub(quiet_at) / 1000),
        sim_ms: sim.now_us() / 1000,
        violations: out,
        report,
        timeline: {
            let mut lines: Vec<(u64, String)> = rec
                .faults
                .iter()
                .map(|f| {
                    (
                        f.at_us,
                        format!("  ! {:>9.3} ms {}\n", f.at_us as f64 / 1000.0, f.what),
                    )
                })
                .collect();
            for c in &rec.conflicts {
                lines.push((
                    c.at_us,
                    format!(
                        "  ~ {:>9.3} ms conflict on {} at {}: {} kept {:?} lost {:?}\n",
                        c.at_us as f64 / 1000.0,
                        show(&c.key),
                        rec.slots[c.slot].name,
                        c.what,
                        c.kept.clone().flatten().map(|v| show(&v)),
                        c.lost.clone().flatten().map(|v| show(&v)),
                    ),
                ));
            }
            if std::env::var("LBMKV_SIM_CALLS").is_ok() {
                for c in calls {
                    lines.push((c.start_us, format!("    {c}\n")));
                }
            }
            lines.sort_by_key(|(t, _)| *t);
            lines.into_iter().map(|(_, l)| l).collect()
        },
        ..Outcome::default()
    }
}

fn overlaps_pause(paused: &[Vec<(u64, u64)>], c: &Call) -> bool {
    paused[c.slot]
        .iter()
        .any(|(from, to)| c.start_us < *to && c.end_us > *from)
}

/// The shortest history that shows the violations: the calls involved, every
/// acknowledged write and strong read of the same key between them, and the
/// faults from a little before the first to the last.
fn report(
    p: &super::world::Params,
    calls: &[Call],
    faults: &[(u64, String)],
    violations: &[Violation],
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "seed {}: {} nodes{}, {} seed, failure timeout {} ms",
        p.seed,
        p.nodes,
        if p.joiner { " + joiner a0" } else { "" },
        if p.strict { "strict" } else { "split" },
        p.failure_timeout_ms
    );
    for (_, f) in faults
        .iter()
        .filter(|(_, f)| f.starts_with("not converged"))
    {
        let _ = writeln!(s, "{f}");
    }
    for viol in violations.iter().take(3) {
        let _ = writeln!(s, "VIOLATION: {}", viol.what);
        let involved: Vec<&Call> = calls
            .iter()
            .filter(|c| viol.calls.contains(&c.id))
            .collect();
        if involved.is_empty() {
            continue;
        }
        let from = involved.iter().map(|c| c.start_us).min().unwrap_or(0);
        let to = involved.iter().map(|c| c.end_us).max().unwrap_or(0);
        let mut lines: Vec<(u64, String)> = Vec::new();
        for c in calls {
            let same_key = viol.key.as_ref().is_some_and(|k| {
                c.writes(k).is_some()
                    || c.op == Op::Incr(k.clone())
                    || c.op == Op::GetStrong(k.clone())
            });
            let shown = viol.calls.contains(&c.id)
                || (same_key
                    && c.ok()
                    && c.is_write()
                    && c.end_us >= from
                    && c.start_us <= to
                    && viol.key.is_some());
            if shown {
                let mark = if viol.calls.contains(&c.id) { ">" } else { " " };
                lines.push((c.start_us, format!("  {mark} {c}")));
            }
        }
        for f in faults {
            if f.0 + 3_000_000 >= from && f.0 <= to {
                lines.push((f.0, format!("  ! {:>9.3} ms {}", f.0 as f64 / 1000.0, f.1)));
            }
        }
        lines.sort_by_key(|(t, _)| *t);
        const MAX: usize = 60;
        if lines.len() > MAX {
            // Keep the involved calls and faults, thin out the rest.
            let keep: Vec<(u64, String)> = lines
                .iter()
                .filter(|(_, l)| l.starts_with("  >") || l.starts_with("  !"))
                .cloned()
                .collect();
            let _ = writeln!(
                s,
                "  ({} other writes of the key in between left out)",
                lines.len() - keep.len()
            );
            lines = keep;
        }
        for (_, l) in lines {
            let _ = writeln!(s, "{l}");
        }
    }
    if violations.len() > 3 {
        let _ = writeln!(s, "... and {} more violations", violations.len() - 3);
    }
    s
}
