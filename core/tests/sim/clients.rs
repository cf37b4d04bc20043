//! Clients: on every node slot, loops that call `put`, `delete`, `update`
//! (increment a decimal counter), `put_many`, strong reads and local reads,
//! and record every call with its start and end (simulated) time and result.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use lbmkv::Table;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;

use super::mix;
use super::world::{Freezable, Sim, COUNTERS, REGISTERS};

/// What a call asked for. Every written value is unique in the run.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Incr(Vec<u8>),
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    PutMany(Vec<(Vec<u8>, Vec<u8>)>),
    GetStrong(Vec<u8>),
    Get(Vec<u8>),
}

/// What a call returned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Res {
    /// An increment: the old and new counter values.
    Incr(Option<u64>, u64),
    /// A write was acknowledged (previous values are not checked).
    Done,
    /// A read's value.
    Value(Option<Vec<u8>>),
    /// An error, by kind.
    Failed(String),
}

/// One recorded call.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Call {
    pub id: u64,
    pub slot: usize,
    pub node: String,
    pub incarnation: u32,
    pub client: usize,
    pub op: Op,
    pub start_us: u64,
    pub end_us: u64,
    pub res: Res,
}

impl Call {
    pub fn ok(&self) -> bool {
        !matches!(self.res, Res::Failed(_))
    }

    /// Whether the call writes `key`, and the value it writes (`None`: delete).
    pub fn writes(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        match &self.op {
            Op::Put(k, v) if k == key => Some(Some(v)),
            Op::Delete(k) if k == key => Some(None),
            Op::PutMany(kvs) => kvs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| Some(v.as_slice())),
            _ => None,
        }
    }

    pub fn is_write(&self) -> bool {
        matches!(
            self.op,
            Op::Incr(_) | Op::Put(..) | Op::Delete(_) | Op::PutMany(_)
        )
    }
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match &self.op {
            Op::Incr(k) => format!("update({}, +1)", show(k)),
            Op::Put(k, v) => format!("put({}, {})", show(k), show(v)),
            Op::Delete(k) => format!("delete({})", show(k)),
            Op::PutMany(kvs) => format!(
                "put_many({})",
                kvs.iter()
                    .map(|(k, v)| format!("{}={}", show(k), show(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Op::GetStrong(k) => format!("get_strong({})", show(k)),
            Op::Get(k) => format!("get({})", show(k)),
        };
        let res = match &self.res {
            Res::Incr(old, new) => format!("ok {old:?} -> {new}"),
            Res::Done => "ok".to_string(),
            Res::Value(v) => format!("= {:?}", v.as_deref().map(show)),
            Res::Failed(e) => format!("ERR {e}"),
        };
        write!(
            f,
            "#{:<5} {:>9.3}..{:<9.3} ms {}#{} c{} {op} {res}",
            self.id,
            self.start_us as f64 / 1000.0,
            self.end_us as f64 / 1000.0,
            self.node,
            self.incarnation,
            self.client,
        )
    }
}

pub fn parse_counter(v: Option<&[u8]>) -> Option<u64> {
    v.and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
}

/// Starts every client loop; they run until `stop_clients` is set.
pub fn start(sim: &Arc<Sim>) -> Vec<JoinHandle<()>> {
    let slots = sim.params.slot_names().len();
    let mut handles = Vec::new();
    for slot in 0..slots {
        for c in 0..sim.params.clients_per_node {
            let client = slot * sim.params.clients_per_node + c;
            handles.push(tokio::spawn(client_loop(sim.clone(), slot, client)));
        }
    }
    handles
}

fn pick_op(rng: &mut StdRng, client: usize, n: &mut u64) -> Op {
    let counter = || COUNTERS[0].as_bytes().to_vec();
    let reg = |rng: &mut StdRng| format!("r{}", rng.random_range(0..REGISTERS)).into_bytes();
    let mut value = || {
        *n += 1;
        format!("v{client}.{n}").into_bytes()
    };
    let x = rng.random_range(0..100);
    match x {
        0..=29 => Op::Incr(counter()),
        30..=34 => Op::Incr(COUNTERS[1].as_bytes().to_vec()),
        35..=49 => Op::Put(reg(rng), value()),
        50..=57 => Op::Delete(reg(rng)),
        58..=65 => {
            let k = rng.random_range(2..=4);
            let mut keys: Vec<Vec<u8>> = (0..k).map(|_| reg(rng)).collect();
            keys.sort();
            keys.dedup();
            Op::PutMany(keys.into_iter().map(|k| (k, value())).collect())
        }
        66..=77 => {
            if rng.random_bool(0.5) {
                Op::GetStrong(counter())
            } else {
                Op::GetStrong(reg(rng))
            }
        }
        _ => {
            if rng.random_bool(0.5) {
                Op::Get(counter())
            } else {
                Op::Get(reg(rng))
            }
        }
    }
}

async fn run_op(t: &Table, op: &Op) -> Res {
    let failed = |e: lbmkv::Error| Res::Failed(format!("{:?}", e.kind()));
    match op {
        Op::Incr(k) => {
            match t
                .update(k, |_, v| {
                    Some((parse_counter(v).unwrap_or(0) + 1).to_string().into_bytes())
                })
                .await
            {
                Ok((old, Some(new))) => Res::Incr(
                    parse_counter(old.as_deref()),
                    parse_counter(Some(&new)).unwrap_or(u64::MAX),
                ),
                Ok((_, None)) => Res::Failed("increment deleted".into()),
                Err(e) => failed(e),
            }
        }
        Op::Put(k, v) => t.put(k, v).await.map_or_else(failed, |_| Res::Done),
        Op::Delete(k) => t.delete(k).await.map_or_else(failed, |_| Res::Done),
        Op::PutMany(kvs) => t
            .put_many(kvs.clone())
            .await
            .map_or_else(failed, |_| Res::Done),
        Op::GetStrong(k) => t.get_strong(k).await.map_or_else(failed, Res::Value),
        Op::Get(k) => t.get(k).map_or_else(failed, Res::Value),
    }
}

async fn client_loop(sim: Arc<Sim>, slot: usize, client: usize) {
    let mut rng = StdRng::seed_from_u64(mix(sim.params.seed ^ mix(0xc1 + client as u64)));
    let mut written = 0u64;
    loop {
        if sim.stop_clients.load(Ordering::SeqCst) {
            return;
        }
        // The node must be up, hold the table, and not be paused.
        let usable = {
            let rec = sim.rec();
            let s = &rec.slots[slot];
            match (&s.table, s.freeze.is_frozen()) {
                (Some(t), false) => Some((t.clone(), s.incarnation, s.freeze.clone())),
                _ => None,
            }
        };
        let Some((table, incarnation, freeze)) = usable else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let op = pick_op(&mut rng, client, &mut written);
        let start_us = sim.now_us();
        let res = Freezable {
            freeze,
            fut: Box::pin(async { run_op(&table, &op).await }),
        }
        .await;
        let end_us = sim.now_us();
        {
            let mut rec = sim.rec();
            let id = rec.next_call;
            rec.next_call += 1;
            let node = rec.slots[slot].name.clone();
            rec.calls.push(Call {
                id,
                slot,
                node,
                incarnation,
                client,
                op,
                start_us,
                end_us,
                res,
            });
        }
        drop(table);
        let think = rng.random_range(0..40);
        tokio::time::sleep(Duration::from_millis(think)).await;
    }
}
