//! Random-input tests of the wire, on stable Rust: frame decoding, the
//! handshake, every message type from an authenticated peer (the merge
//! protocol's included), and frames whose tag fails. Nothing may panic, no
//! single allocation may exceed a bound tied to the frame limit, and no
//! malformed, out-of-protocol or unauthenticated message may touch a table.
//!
//! Each test runs for `LBMKV_FUZZ_SECONDS` (default 2) seconds of wall time;
//! `make fuzz SECONDS=N` sets it. `LBMKV_FUZZ_SEED` fixes the generator
//! (otherwise it is drawn and printed, so a failure can be replayed).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::raw_peer::{self, read_msg, send, send_msg, Sealer, Transcript};
use lbmkv::net::{BoxStream, MemNet, Net};
use lbmkv::vclock::{ActorId, Dot, VClock};
use lbmkv::wire::{
    decode, encode_frame, Entries, Message, PackedEntries, PeerInfo, TableInfo, WireEntry, WriteOp,
    WriteOutcome, WriteRefusal, MAGIC, PROTOCOL_VERSION,
};
use lbmkv::{Config, ErrorKind, Node};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tokio::io::AsyncReadExt;

// ---------------------------------------------------------------------------
// The largest single allocation, per thread, while tracking is on.

struct Tracking;

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = TRACK.try_with(|t| {
        if t.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Runs `f` and returns its result with the largest single allocation it made
/// on this thread.
fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|l| l.set(0));
    TRACK.with(|t| t.set(true));
    let r = f();
    TRACK.with(|t| t.set(false));
    (r, LARGEST.with(|l| l.get()))
}

/// Panics anywhere in the process (a panicking node task does not fail the test by itself).
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

fn budget() -> Duration {
    let secs: f64 = std::env::var("LBMKV_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

fn rng_for(test: &str) -> (StdRng, u64) {
    let seed = std::env::var("LBMKV_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| StdRng::from_os_rng().next_u64());
    println!("{test}: LBMKV_FUZZ_SEED={seed}");
    (StdRng::seed_from_u64(seed), seed)
}

// ---------------------------------------------------------------------------
// Random messages of every type.

fn bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let n = rng.random_range(0..=max);
    (0..n).map(|_| rng.random()).collect()
}

fn text(rng: &mut StdRng, max: usize) -> String {
    let n = rng.random_range(0..=max);
    (0..n)
        .map(|_| match rng.random_range(0..10) {
            0 => '\0',
            1 => 'é',
            _ => rng.random_range(b'a'..=b'z') as char,
        })
        .collect()
}

fn actor(rng: &mut StdRng) -> ActorId {
    let names = ["a", "n1", "zz", "x"];
    ActorId::new(
        names[rng.random_range(0..names.len())],
        rng.random_range(0..4),
    )
}

fn clock(rng: &mut StdRng) -> VClock {
    let n = rng.random_range(0..4);
    VClock::from_dots((0..n).map(|_| {
        (
            actor(rng),
            Dot {
                counter: rng.random_range(0..5),
                timestamp_ms: rng.random_range(0..3),
            },
        )
    }))
}

fn entries(rng: &mut StdRng) -> Entries {
    let n = rng.random_range(0..4);
    Entries(
        (0..n)
            .map(|_| WireEntry {
                key: bytes(rng, 3),
                value: rng.random_bool(0.7).then(|| bytes(rng, 5)),
                clock: clock(rng),
                deadline_ms: rng.random_bool(0.3).then(|| rng.random()),
            })
            .collect(),
    )
}

/// Entries in their stored form: mostly well-formed blocks, some naming
/// actors the message does not list, some cut short or followed by garbage.
fn packed_entries(rng: &mut StdRng) -> PackedEntries {
    let actors: Vec<ActorId> = (0..rng.random_range(0..3))
        .map(|i| ActorId::new(&format!("n{i}"), rng.random_range(0..3)))
        .collect();
    let mut blocks = Vec::new();
    for _ in 0..rng.random_range(0..4) {
        let key = bytes(rng, 3);
        let value = rng.random_bool(0.7).then(|| bytes(rng, 5));
        let deadline = rng.random_bool(0.2).then(|| rng.random::<u64>());
        let dots = rng.random_range(0..3u16);
        blocks.extend_from_slice(&(key.len() as u32).to_le_bytes());
        let vlen = value.as_ref().map_or(u32::MAX, |v| v.len() as u32);
        blocks.extend_from_slice(&vlen.to_le_bytes());
        let flag = if deadline.is_some() { 0x8000 } else { 0 };
        blocks.extend_from_slice(&(dots | flag).to_le_bytes());
        if let Some(d) = deadline {
            blocks.extend_from_slice(&d.to_le_bytes());
        }
        for _ in 0..dots {
            let actor = rng.random_range(0..actors.len() as u32 + 1);
            blocks.extend_from_slice(&actor.to_le_bytes());
            blocks.extend_from_slice(&rng.random_range(1..5u64).to_le_bytes());
            blocks.extend_from_slice(&rng.random_range(0..5u64).to_le_bytes());
        }
        blocks.extend_from_slice(&key);
        blocks.extend_from_slice(value.as_deref().unwrap_or_default());
    }
    match rng.random_range(0..6) {
        0 => blocks.truncate(rng.random_range(0..blocks.len() + 1)),
        1 => blocks.extend(bytes(rng, 12)),
        _ => {}
    }
    PackedEntries { actors, blocks }
}

/// An entry count as a merge announces it: mostly small, now and then absurd.
fn entry_count(rng: &mut StdRng) -> u64 {
    if rng.random_bool(0.1) {
        rng.random()
    } else {
        rng.random_range(0..100)
    }
}

fn table_name(rng: &mut StdRng) -> String {
    match rng.random_range(0..4) {
        0 => "t".into(),
        1 => String::new(),
        2 => "x".repeat(300),
        _ => text(rng, 6),
    }
}

fn write_op(rng: &mut StdRng) -> WriteOp {
    let key = |rng: &mut StdRng| bytes(rng, 3);
    match rng.random_range(0..9) {
        0 => WriteOp::Put(
            (0..rng.random_range(0..3))
                .map(|_| (key(rng), bytes(rng, 4)))
                .collect(),
        ),
        1 => WriteOp::Delete((0..rng.random_range(0..3)).map(|_| key(rng)).collect()),
        2 => WriteOp::CompareAndSet {
            key: key(rng),
            expected: rng.random_bool(0.5).then(|| clock(rng)),
            new: rng.random_bool(0.5).then(|| bytes(rng, 4)),
        },
        3 => WriteOp::CompareAndSetTable {
            expected_digest: rng.random(),
            changes: (0..rng.random_range(0..3))
                .map(|_| (key(rng), rng.random_bool(0.5).then(|| bytes(rng, 4))))
                .collect(),
        },
        4 => WriteOp::Read(key(rng)),
        5 => WriteOp::PutExpiring {
            entries: (0..rng.random_range(0..3))
                .map(|_| (key(rng), bytes(rng, 4)))
                .collect(),
            ttl_ms: rng.random(),
        },
        6 => WriteOp::CompareAndSetExpiring {
            key: key(rng),
            expected: rng.random_bool(0.5).then(|| clock(rng)),
            new: rng.random_bool(0.5).then(|| bytes(rng, 4)),
            ttl_ms: rng.random(),
        },
        7 => WriteOp::Expire((0..rng.random_range(0..3)).map(|_| key(rng)).collect()),
        _ => WriteOp::Resolve {
            key: key(rng),
            merged: clock(rng),
            new: rng.random_bool(0.5).then(|| bytes(rng, 4)),
            deadline_ms: rng.random_bool(0.3).then(|| rng.random()),
        },
    }
}

fn session(rng: &mut StdRng) -> u64 {
    if rng.random_bool(0.8) {
        rng.random_range(0..4)
    } else {
        rng.random()
    }
}

/// A random message of any type. `loud` when it is one that may legitimately
/// change the node's tables (a write, a table announcement, the start of a
/// merge or anything that makes the node start one): the others, sent by a
/// peer that sorts after the node and never follows it, are out of protocol
/// or inert, and must leave every table as it was.
fn message(rng: &mut StdRng, node: &ActorId) -> (Message, bool) {
    let small = |rng: &mut StdRng| rng.random_range(0..4u64);
    let m = match rng.random_range(0..28) {
        0 => Message::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            actor: actor(rng),
            listen: text(rng, 8),
            nonce: rng.random(),
        },
        1 => Message::Challenge {
            magic: rng.random(),
            version: rng.random(),
            actor: actor(rng),
            listen: text(rng, 8),
            nonce: rng.random(),
        },
        2 => Message::Proof {
            proof: rng.random(),
        },
        3 => Message::Welcome,
        4 => Message::Heartbeat,
        5 => Message::Leaving,
        6 => Message::Members(
            (0..rng.random_range(0..3))
                .map(|_| PeerInfo {
                    actor: actor(rng),
                    listen: if rng.random_bool(0.5) {
                        format!("127.0.0.{}:7000", rng.random_range(20..30))
                    } else {
                        text(rng, 8)
                    },
                })
                .collect(),
        ),
        7 => Message::Tables(
            (0..rng.random_range(0..3))
                .map(|_| TableInfo {
                    name: table_name(rng),
                    has_handler: rng.random(),
                })
                .collect(),
        ),
        8 => Message::TableChanged(TableInfo {
            name: table_name(rng),
            has_handler: rng.random(),
        }),
        9 => Message::WriteRequest {
            id: small(rng),
            table: table_name(rng),
            op: write_op(rng),
        },
        10 => Message::WriteReply {
            id: small(rng),
            result: match rng.random_range(0..4) {
                0 => Ok(WriteOutcome::Swapped),
                1 => Ok(WriteOutcome::Value(Some(bytes(rng, 3)))),
                2 => Err(WriteRefusal::NotSequencer),
                _ => Err(WriteRefusal::Failed(ErrorKind::Unavailable, text(rng, 5))),
            },
        },
        11 => Message::Apply {
            id: small(rng),
            table: table_name(rng),
            entries: entries(rng),
            causes: (0..rng.random_range(0..3))
                .map(|_| {
                    let cause = if rng.random_bool(0.5) {
                        lbmkv::wire::WriteCause::Resolve
                    } else {
                        lbmkv::wire::WriteCause::Expiry
                    };
                    (rng.random_range(0..5), cause)
                })
                .collect(),
        },
        12 => Message::ApplyAck { id: small(rng) },
        13 => Message::SyncDigest {
            session: session(rng),
            table: table_name(rng),
            bits: rng.random_range(0..40),
            total: rng.random(),
            count: entry_count(rng),
        },
        14 => Message::SyncLeaves {
            session: session(rng),
            bits: rng.random_range(0..40),
            final_bits: rng.random_range(0..40),
            leaves: (0..rng.random_range(0..300))
                .map(|_| rng.random())
                .collect(),
            count: entry_count(rng),
        },
        15 => Message::SyncDescend {
            session: session(rng),
            parent_bits: rng.random_range(0..40),
            bits: rng.random_range(0..40),
            buckets: (0..rng.random_range(0..20)).map(|_| rng.random()).collect(),
        },
        16 => Message::SyncSummary {
            session: session(rng),
            buckets: (0..rng.random_range(0..5)).map(|_| rng.random()).collect(),
            summary: (0..rng.random_range(0..5))
                .map(|_| (rng.random(), rng.random()))
                .collect(),
            entries: packed_entries(rng),
            last: rng.random(),
        },
        17 => Message::SyncWant {
            session: session(rng),
            want: (0..rng.random_range(0..5)).map(|_| rng.random()).collect(),
        },
        18 => Message::SyncEntries {
            session: session(rng),
            entries: packed_entries(rng),
            last: rng.random(),
        },
        19 => Message::SyncDone {
            session: session(rng),
        },
        20 => Message::SyncAllDone { served: small(rng) },
        21 => Message::SyncRequest,
        22 => Message::Status(lbmkv::wire::Status {
            ready: rng.random(),
            follows: match rng.random_range(0..4) {
                0 => None,
                1 => Some(node.clone()),
                _ => Some(actor(rng)),
            },
            applied_from: rng.random_bool(0.5).then(|| actor(rng)),
            echo: small(rng),
            view: (0..rng.random_range(0..3)).map(|_| actor(rng)).collect(),
            stepped_out: rng.random(),
        }),
        23 => Message::Probe { id: small(rng) },
        24 => Message::Rejected,
        25 => Message::Retract {
            table: table_name(rng),
            versions: (0..rng.random_range(0..3))
                .map(|_| lbmkv::wire::Retracted {
                    key: bytes(rng, 3),
                    written: clock(rng),
                    replaced: rng.random_bool(0.7).then(|| lbmkv::wire::Restored {
                        value: rng.random_bool(0.7).then(|| bytes(rng, 5)),
                        clock: clock(rng),
                        deadline_ms: rng.random_bool(0.3).then(|| rng.random()),
                    }),
                })
                .collect(),
        },
        26 => Message::Refused {
            reason: text(rng, 8),
        },
        _ => Message::ApplyRefused { id: small(rng) },
    };
    let loud = match &m {
        Message::Tables(_)
        | Message::TableChanged(_)
        | Message::WriteRequest { .. }
        | Message::SyncDigest { .. }
        | Message::SyncRequest => true,
        Message::Status(st) => st.follows.as_ref() == Some(node),
        _ => false,
    };
    (m, loud)
}

/// Damages an encoded message: flips bits, cuts, splices in huge varints or
/// random bytes.
fn mutate(rng: &mut StdRng, body: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..4) {
        match rng.random_range(0..5) {
            0 if !body.is_empty() => {
                let i = rng.random_range(0..body.len());
                body[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !body.is_empty() => {
                let at = rng.random_range(0..body.len());
                body.truncate(at);
            }
            2 => {
                let at = rng.random_range(0..=body.len());
                let huge: &[u8] = match rng.random_range(0..3) {
                    0 => &[0xff, 0xff, 0xff, 0xff, 0x0f],
                    1 => &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                    _ => &[0x80, 0x80, 0x80, 0x80],
                };
                body.splice(at..at, huge.iter().copied());
            }
            3 => {
                let at = rng.random_range(0..=body.len());
                let extra = bytes(rng, 8);
                body.splice(at..at, extra);
            }
            _ => {
                if let Some(b) = body.first_mut() {
                    *b = rng.random();
                }
            }
        }
    }
}

/// Largest single allocation any decode may make: postcard and serde cap what
/// they reserve ahead of the data at 1 MiB, and beyond that allocations grow
/// with what the input really holds.
fn decode_allowance(len: usize) -> usize {
    (1 << 20) + 64 * len
}

#[test]
fn frame_decoding_survives_random_and_damaged_input() {
    let (mut rng, seed) = rng_for("decode");
    let until = Instant::now() + budget();
    let me = ActorId::new("n1", 1);
    let (mut inputs, mut decoded, mut worst) = (0u64, 0u64, 0usize);
    while Instant::now() < until {
        for _ in 0..256 {
            let body = match rng.random_range(0..3) {
                0 => bytes(&mut rng, 64),
                1 => {
                    let (m, _) = message(&mut rng, &me);
                    let frame = encode_frame(&m).unwrap();
                    // Whole messages of every type round-trip.
                    assert_eq!(decode(&frame[4..]).unwrap(), m, "seed {seed}");
                    let mut body = frame[4..].to_vec();
                    mutate(&mut rng, &mut body);
                    body
                }
                _ => {
                    // A plausible variant tag, then anything.
                    let mut body = vec![rng.random_range(0..30u8)];
                    body.extend(bytes(&mut rng, 32));
                    body
                }
            };
            let (result, largest) = largest_allocation(|| decode(&body));
            inputs += 1;
            worst = worst.max(largest);
            match result {
                Ok(_) => decoded += 1,
                Err(e) => assert_eq!(e.kind(), ErrorKind::Protocol, "seed {seed}"),
            }
            assert!(
                largest <= decode_allowance(body.len()),
                "decoding {} bytes allocated {largest} bytes at once (seed {seed}): {body:02x?}",
                body.len()
            );
        }
    }
    println!(
        "decode: {inputs} inputs, {decoded} decoded to a message, largest allocation {worst} bytes"
    );
}

// ---------------------------------------------------------------------------
// A node on the in-memory network, and raw connections to it.

const COOKIE: &[u8] = b"fuzz-cookie";
const NODE_ADDR: &str = "127.0.0.1:7000";
/// The smallest frame limit small key and value limits allow (the frame must
/// hold the largest entry plus `lbmkv::FRAME_ENVELOPE`).
const FRAME_LIMIT: usize = 2 << 20;

fn node_config() -> Config {
    Config {
        name: Some("n1".into()),
        listen: NODE_ADDR.into(),
        cookie: Some(COOKIE.to_vec()),
        heartbeat_interval: Duration::from_millis(50),
        failure_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(1000),
        // No merge rounds the node would start by itself.
        anti_entropy_interval: Duration::from_secs(3600),
        max_key_size: 1024,
        max_value_size: 64 * 1024,
        max_frame_size: FRAME_LIMIT,
        rng_seed: Some(7),
        ..Config::default()
    }
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

/// The node's tables and the digest of each: what no malformed or
/// out-of-protocol message may change.
fn tables_of(node: &Node) -> Vec<(String, String)> {
    node.info()
        .unwrap()
        .tables
        .into_iter()
        .map(|t| (t.name, t.digest))
        .collect()
}

async fn dial(net: &MemNet, from: u8) -> BoxStream {
    let addr: SocketAddr = NODE_ADDR.parse().unwrap();
    net.connect(Some(IpAddr::from([127, 0, 0, from])), addr)
        .await
        .expect("connect")
}

/// Whether the node closed the connection: it reads the end of the stream
/// (skipping whatever the node still sends) within `wait`.
async fn closed_by_node(stream: &mut BoxStream, wait: Duration) -> bool {
    let drain = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(wait, drain).await.is_ok()
}

/// Connects as `me` and completes the handshake; the key of the frames it
/// sends, and the transcript.
async fn authenticated(
    net: &MemNet,
    me: &ActorId,
    rng: &mut StdRng,
) -> Option<(BoxStream, Sealer, Transcript)> {
    let mut s = dial(net, 9).await;
    let t = raw_peer::handshake(&mut s, COOKIE, me, "127.0.0.9:7000", rng.random()).await?;
    Some((s, t.initiator_frames(COOKIE), t))
}

/// Starts the node with a table `t` of a few entries.
async fn target(net: &MemNet) -> (Node, lbmkv::Table) {
    let node = Node::start_with_net(node_config(), Arc::new(net.clone()))
        .await
        .unwrap();
    let t = node.create_table("t").await.unwrap();
    for i in 0..20u8 {
        t.put(&[i], &[i; 8]).await.unwrap();
    }
    (node, t)
}

/// The node still works: alone again, it takes a write and a strong read.
async fn still_serves(node: &Node, t: &lbmkv::Table, seed: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while node.members().unwrap_or_default() != vec!["n1".to_string()] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fuzzing peer never left the view (seed {seed})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.put(b"alive", b"yes")
        .await
        .expect("a write after fuzzing");
    assert_eq!(t.get_strong(b"alive").await.unwrap(), Some(b"yes".to_vec()));
    t.delete(b"alive").await.unwrap();
}

#[test]
fn handshake_survives_random_and_hostile_input() {
    count_panics();
    let (mut rng, seed) = rng_for("handshake");
    let until = Instant::now() + budget();
    paused_runtime().block_on(async {
        let net = MemNet::new();
        let (node, t) = target(&net).await;
        let before = tables_of(&node);
        let mut inputs = 0u64;
        let (_, largest) = largest_allocation(|| ());
        let mut worst = largest;
        while Instant::now() < until {
            let mut s = dial(&net, 9).await;
            let me = actor(&mut rng);
            let hello = |rng: &mut StdRng| Message::Hello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                actor: me.clone(),
                listen: "127.0.0.9:7000".into(),
                nonce: rng.random(),
            };
            TRACK.with(|t| t.set(true));
            LARGEST.with(|l| l.set(0));
            match rng.random_range(0..7) {
                0 => {
                    send(&mut s, &bytes(&mut rng, 64)).await;
                }
                1 => {
                    // A length far beyond the pre-authentication bound.
                    let len: u32 = rng.random_range(4097..u32::MAX);
                    send(&mut s, &len.to_be_bytes()).await;
                    send(&mut s, &bytes(&mut rng, 32)).await;
                }
                2 => {
                    let mut body = encode_frame(&hello(&mut rng)).unwrap()[4..].to_vec();
                    mutate(&mut rng, &mut body);
                    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
                    frame.extend(body);
                    send(&mut s, &frame).await;
                }
                3 => {
                    let m = Message::Hello {
                        magic: if rng.random() { MAGIC } else { rng.random() },
                        version: if rng.random() {
                            PROTOCOL_VERSION
                        } else {
                            rng.random()
                        },
                        actor: ActorId::new(&text(&mut rng, 6), rng.random()),
                        listen: text(&mut rng, 20),
                        nonce: rng.random(),
                    };
                    send_msg(&mut s, &m).await;
                    if let Some(Message::Challenge { .. }) =
                        read_msg(&mut s, Duration::from_millis(500)).await
                    {
                        send_msg(
                            &mut s,
                            &Message::Proof {
                                proof: rng.random(),
                            },
                        )
                        .await;
                    }
                }
                4 => {
                    // Any message but Hello first.
                    let (m, _) = message(&mut rng, node.actor());
                    send_msg(&mut s, &m).await;
                }
                5 => {
                    // A Hello, then anything but the right proof.
                    send_msg(&mut s, &hello(&mut rng)).await;
                    let _ = read_msg(&mut s, Duration::from_millis(500)).await;
                    let (m, _) = message(&mut rng, node.actor());
                    send_msg(&mut s, &m).await;
                }
                _ => {
                    // A Hello, then a proof for another handshake: other
                    // nonces, another identity or address, or another cookie.
                    let nonce = rng.random();
                    send_msg(&mut s, &raw_peer::hello(&me, "127.0.0.9:7000", nonce)).await;
                    if let Some(Message::Challenge {
                        actor,
                        listen,
                        nonce: theirs,
                        ..
                    }) = read_msg(&mut s, Duration::from_millis(500)).await
                    {
                        let mut t = Transcript {
                            initiator: me.clone(),
                            initiator_listen: "127.0.0.9:7000".into(),
                            initiator_nonce: nonce,
                            acceptor: actor,
                            acceptor_listen: listen,
                            acceptor_nonce: theirs,
                        };
                        let mut cookie = COOKIE.to_vec();
                        match rng.random_range(0..5) {
                            0 => t.initiator_nonce = rng.random(),
                            1 => t.acceptor_nonce = rng.random(),
                            2 => t.initiator.incarnation ^= 1,
                            3 => t.acceptor_listen.push('0'),
                            _ => cookie.push(b'!'),
                        }
                        let proof = t.initiator_proof(&cookie);
                        send_msg(&mut s, &Message::Proof { proof }).await;
                        assert_eq!(
                            read_msg(&mut s, Duration::from_millis(500)).await,
                            Some(Message::Rejected),
                            "a wrong proof is answered with Rejected, never a proof (seed {seed})"
                        );
                    }
                }
            }
            assert!(
                closed_by_node(&mut s, Duration::from_secs(3)).await,
                "the node kept a connection that failed the handshake open (seed {seed})"
            );
            TRACK.with(|t| t.set(false));
            worst = worst.max(LARGEST.with(|l| l.get()));
            inputs += 1;
            assert_eq!(
                node.members().unwrap(),
                vec!["n1".to_string()],
                "seed {seed}"
            );
            assert_eq!(tables_of(&node), before, "a table changed (seed {seed})");
        }
        still_serves(&node, &t, seed).await;
        assert_eq!(
            PANICS.load(Ordering::SeqCst),
            0,
            "a task panicked (seed {seed})"
        );
        assert!(
            worst <= 4 * (256 << 10),
            "a handshake allocated {worst} bytes at once (seed {seed})"
        );
        println!("handshake: {inputs} connections, largest allocation {worst} bytes");
    });
}

#[test]
fn messages_from_an_authenticated_peer_never_crash_the_node_or_touch_tables_out_of_protocol() {
    count_panics();
    let (mut rng, seed) = rng_for("peer");
    let until = Instant::now() + budget();
    paused_runtime().block_on(async {
        let net = MemNet::new();
        let (node, t) = target(&net).await;
        let me_actor = node.actor().clone();
        let (mut sessions, mut sent, mut malformed, mut quiet) = (0u64, 0u64, 0u64, 0u64);
        let mut worst = 0usize;
        while Instant::now() < until {
            // "zz" sorts after "n1": the node leads every merge with it, and
            // is its sequencer.
            let me = ActorId::new("zz", rng.random());
            let before = tables_of(&node);
            let Some((mut s, mut key, _)) = authenticated(&net, &me, &mut rng).await else {
                panic!("a correct handshake failed (seed {seed})");
            };
            sessions += 1;
            let mut loud = false;
            TRACK.with(|t| t.set(true));
            LARGEST.with(|l| l.set(0));
            for _ in 0..rng.random_range(1..12) {
                let frame = match rng.random_range(0..10) {
                    0 => {
                        // Damaged: whatever it decodes to (if anything) may be loud.
                        let (m, _) = message(&mut rng, &me_actor);
                        let mut body = encode_frame(&m).unwrap()[4..].to_vec();
                        mutate(&mut rng, &mut body);
                        loud |= decode(&body).is_ok();
                        malformed += 1;
                        // With a good tag: the damage reaches the decoder.
                        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
                        frame.extend(body);
                        key.seal(&frame)
                    }
                    1 => {
                        // Beyond the frame limit.
                        malformed += 1;
                        let len = rng.random_range(FRAME_LIMIT as u32 + 1..u32::MAX);
                        len.to_be_bytes().to_vec()
                    }
                    _ => {
                        let (m, l) = message(&mut rng, &me_actor);
                        loud |= l;
                        key.seal_msg(&m)
                    }
                };
                sent += 1;
                if !send(&mut s, &frame).await {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..3))).await;
            }
            // Let the node act on everything, then leave.
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(s);
            tokio::time::sleep(Duration::from_millis(10)).await;
            TRACK.with(|t| t.set(false));
            worst = worst.max(LARGEST.with(|l| l.get()));
            if !loud {
                quiet += 1;
                assert_eq!(
                    tables_of(&node),
                    before,
                    "out-of-protocol or malformed messages changed a table (seed {seed})"
                );
            }
            assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a task panicked (seed {seed})");
        }
        still_serves(&node, &t, seed).await;
        assert!(
            worst <= 4 * (256 << 10),
            "the node allocated {worst} bytes at once with a frame limit of {FRAME_LIMIT} (seed {seed})"
        );
        println!(
            "peer: {sessions} authenticated sessions, {sent} frames ({malformed} malformed), {quiet} sessions checked to leave tables untouched, largest allocation {worst} bytes"
        );
    });
}

/// The name of the table a forged frame announces.
fn forged_table(n: u64) -> String {
    format!("forged-{n}")
}

/// A frame that makes the node create a table at once when its tag is good.
fn forged_frame(n: u64) -> Vec<u8> {
    encode_frame(&Message::TableChanged(TableInfo {
        name: forged_table(n),
        has_handler: false,
    }))
    .unwrap()
}

fn has_table(node: &Node, name: &str) -> bool {
    tables_of(node).iter().any(|(t, _)| t == name)
}

#[test]
fn frames_whose_tag_fails_close_the_connection_and_touch_no_table() {
    count_panics();
    let (mut rng, seed) = rng_for("tags");
    let until = Instant::now() + budget();
    paused_runtime().block_on(async {
        let net = MemNet::new();
        let (node, t) = target(&net).await;
        let (mut sessions, mut controls) = (0u64, 0u64);
        while Instant::now() < until || controls == 0 {
            let me = ActorId::new("zz", rng.random());
            let Some((mut s, mut key, transcript)) = authenticated(&net, &me, &mut rng).await
            else {
                panic!("a correct handshake failed (seed {seed})");
            };
            sessions += 1;
            let name = forged_table(sessions);
            // Good frames first, so that frame numbers other than 0 are in play.
            for _ in 0..rng.random_range(0..4) {
                let heartbeat = encode_frame(&Message::Heartbeat).unwrap();
                send(&mut s, &key.seal(&heartbeat)).await;
            }
            let frame = forged_frame(sessions);
            let case = rng.random_range(0..8);
            let bytes = match case {
                0 => {
                    // The control: with its good tag the same frame creates the table.
                    key.seal(&frame)
                }
                1 => {
                    // One bit flipped in the body or the tag.
                    let mut f = key.seal(&frame);
                    let i = rng.random_range(4..f.len());
                    f[i] ^= 1 << rng.random_range(0..8);
                    f
                }
                2 => {
                    let mut f = frame.clone();
                    f.extend_from_slice(&rng.random::<[u8; raw_peer::TAG_LEN]>());
                    f
                }
                3 => {
                    // Tagged as a later frame: one was dropped, or reordered.
                    key.next += rng.random_range(1..3);
                    key.seal(&frame)
                }
                4 => {
                    // Tagged with a number already used: a replay.
                    if key.next == 0 {
                        let heartbeat = encode_frame(&Message::Heartbeat).unwrap();
                        send(&mut s, &key.seal(&heartbeat)).await;
                    }
                    let mut replay = key.clone();
                    replay.next = rng.random_range(0..key.next);
                    replay.seal(&frame)
                }
                5 => {
                    // Tagged with the node's own key: a reflection.
                    let mut theirs = transcript.acceptor_frames(COOKIE);
                    theirs.next = key.next;
                    theirs.seal(&frame)
                }
                6 => {
                    // Tagged with the key of another handshake.
                    let other = Transcript {
                        initiator_nonce: rng.random(),
                        ..transcript.clone()
                    };
                    let mut other = other.initiator_frames(COOKIE);
                    other.next = key.next;
                    other.seal(&frame)
                }
                _ => {
                    // No tag: the next frame's first bytes stand in for it.
                    let mut f = frame.clone();
                    f.extend(key.seal(&encode_frame(&Message::Heartbeat).unwrap()));
                    f
                }
            };
            let before = tables_of(&node);
            send(&mut s, &bytes).await;
            if case == 0 {
                controls += 1;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                while !has_table(&node, &name) {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "the frame with a good tag was not acted on (seed {seed})"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                drop(s);
                still_serves(&node, &t, seed).await;
                continue;
            }
            assert!(
                closed_by_node(&mut s, Duration::from_secs(3)).await,
                "the node kept a connection whose frame failed its tag open (case {case}, seed {seed})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(
                !has_table(&node, &name),
                "a frame that failed its tag was acted on (case {case}, seed {seed})"
            );
            assert_eq!(
                tables_of(&node),
                before,
                "a frame that failed its tag changed a table (case {case}, seed {seed})"
            );
            assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a task panicked (seed {seed})");
        }
        still_serves(&node, &t, seed).await;
        println!("tags: {sessions} sessions, {controls} of them controls with a good tag");
    });
}
