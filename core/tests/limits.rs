//! Size limits and flow control: the largest legal write replicates, writes
//! that together outgrow a frame still replicate, writes that never could are
//! refused up front, and a long local read does not stall the node.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{config, runtime, wait_until};
use lbmkv::{Config, ErrorKind, Event, Events, Node};

/// These tests move tens of MiB or keep cores busy scanning, within failure
/// timeouts: one at a time, so that they do not starve each other on a
/// 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every `node_down` an event stream has reported so far.
fn downs(events: &mut Events) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(ev) = events.try_next() {
        if let Event::NodeDown { node, reason } = ev {
            out.push(format!("{node}: {reason}"));
        }
    }
    out
}

/// Two nodes on loopback with `cfg`, connected; their event streams.
async fn pair(cfg: impl Fn(&str) -> Config) -> (Node, Node, Events, Events) {
    let (a, ea) = Node::start_subscribed(cfg("n1")).await.expect("start n1");
    let (b, eb) = Node::start_subscribed(cfg("n2")).await.expect("start n2");
    b.connect(a.address()).await.expect("connect");
    wait_until(Duration::from_secs(10), || {
        a.members().unwrap().len() == 2 && b.members().unwrap().len() == 2
    })
    .await;
    (a, b, ea, eb)
}

/// Small limits, so that a few writes outgrow a frame: 4 MiB frames, 512 KiB values.
fn small_frames(name: &str) -> Config {
    Config {
        max_key_size: 1024,
        max_value_size: 512 * 1024,
        max_frame_size: 4 * 1024 * 1024,
        ..config(name)
    }
}

#[test]
fn limits_whose_largest_entry_does_not_fit_a_frame_are_refused_at_start() {
    let _serial = serial();
    runtime().block_on(async {
        let cfg = Config {
            max_value_size: 64 * 1024 * 1024,
            max_frame_size: 64 * 1024 * 1024,
            ..config("n1")
        };
        let Err(err) = Node::start(cfg).await else {
            panic!("a node started with a value limit as large as a frame");
        };
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.message().contains("max_frame_size"), "{err}");
        let d = Config::default();
        assert!(
            d.max_key_size + d.max_value_size + lbmkv::ENTRY_OVERHEAD + lbmkv::FRAME_ENVELOPE
                <= d.max_frame_size,
            "the defaults fit"
        );
    });
}

#[test]
fn a_value_of_the_largest_size_replicates_from_either_node_without_node_down() {
    let _serial = serial();
    runtime().block_on(async {
        // Default failure detection: replicas acknowledge a batch within the
        // failure timeout, and a debug build needs a while for 62 MiB.
        let (a, b, mut ea, mut eb) = pair(|n| Config {
            heartbeat_interval: Duration::from_millis(250),
            failure_timeout: Duration::from_secs(2),
            ..config(n)
        })
        .await;
        let max = a.config().max_value_size;
        let ta = a.create_table("big").await.unwrap();
        let tb = b.create_table("big").await.unwrap();
        let value = vec![7u8; max];
        ta.put(b"from-a", &value)
            .await
            .expect("largest put from n1");
        if let Err(e) = tb.put(b"from-b", &value).await {
            panic!(
                "largest put from n2: {e}; n1 saw {:?}, n2 saw {:?}",
                downs(&mut ea),
                downs(&mut eb)
            );
        }
        for t in [&ta, &tb] {
            for k in [&b"from-a"[..], b"from-b"] {
                let got = t.with_value(k, |v| v.map(<[u8]>::len)).unwrap();
                assert_eq!(got, Some(max), "each node holds both values at once");
            }
        }
        let too_big = vec![7u8; max + 1];
        let err = tb.put(b"over", &too_big).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        // Anti-entropy rounds and a failure timeout.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(downs(&mut ea), Vec::<String>::new(), "n1 saw no node_down");
        assert_eq!(downs(&mut eb), Vec::<String>::new(), "n2 saw no node_down");
        a.close().await.unwrap();
        b.close().await.unwrap();
    });
}

#[test]
fn concurrent_writes_that_together_outgrow_a_frame_all_replicate() {
    let _serial = serial();
    runtime().block_on(async {
        let (a, b, mut ea, mut eb) = pair(small_frames).await;
        let ta = a.create_table("t").await.unwrap();
        let tb = b.create_table("t").await.unwrap();
        let mut writers = Vec::new();
        for (side, t) in [("a", &ta), ("b", &tb)] {
            for i in 0..16u8 {
                let t = t.clone();
                writers.push(tokio::spawn(async move {
                    let key = format!("{side}{i}");
                    t.put(key.as_bytes(), &vec![i; 400 * 1024]).await
                }));
            }
        }
        for w in writers {
            w.await.unwrap().expect("every write is acknowledged");
        }
        // Acknowledged means applied by every member: no waiting here.
        for t in [&ta, &tb] {
            assert_eq!(t.len().unwrap(), 32, "{} has every value", t.name());
        }
        assert_eq!(downs(&mut ea), Vec::<String>::new(), "n1 saw no node_down");
        assert_eq!(downs(&mut eb), Vec::<String>::new(), "n2 saw no node_down");
        a.close().await.unwrap();
        b.close().await.unwrap();
    });
}

#[test]
fn a_put_many_that_can_never_fit_a_frame_is_refused_with_invalid_argument() {
    let _serial = serial();
    runtime().block_on(async {
        let (a, b, mut ea, _eb) = pair(small_frames).await;
        let tb = b.create_table("t").await.unwrap();
        let entries: Vec<(Vec<u8>, Vec<u8>)> =
            (0..12u8).map(|i| (vec![i], vec![i; 400 * 1024])).collect();
        let err = tb.put_many(entries).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        let ta = a.create_table("t").await.unwrap();
        assert_eq!(ta.len().unwrap(), 0, "nothing of it was applied");
        let fits: Vec<(Vec<u8>, Vec<u8>)> =
            (0..4u8).map(|i| (vec![i], vec![i; 400 * 1024])).collect();
        tb.put_many(fits)
            .await
            .expect("a put_many within the budget");
        assert_eq!(ta.len().unwrap(), 4);
        assert_eq!(downs(&mut ea), Vec::<String>::new(), "n1 saw no node_down");
        a.close().await.unwrap();
        b.close().await.unwrap();
    });
}

/// Each node on a runtime of its own (2 workers, as on a 2-core machine), so
/// that one node's stalled workers cannot hide behind the other's. Two
/// tables, each scanned without pause from a user thread while the other
/// node writes to both: before, the writes parked both of the scanned node's
/// workers on the tables' locks for a whole scan, and its peer declared it
/// down.
#[test]
fn long_local_scans_do_not_keep_the_node_from_its_heartbeats() {
    let _serial = serial();
    let cfg = |name: &str| Config {
        heartbeat_interval: Duration::from_millis(100),
        failure_timeout: Duration::from_millis(1000),
        ..config(name)
    };
    let (rt1, rt2) = (runtime(), runtime());
    let (a, mut ea) = rt1.block_on(Node::start_subscribed(cfg("n1"))).unwrap();
    let (b, mut eb) = rt2.block_on(Node::start_subscribed(cfg("n2"))).unwrap();
    rt2.block_on(async {
        b.connect(a.address()).await.unwrap();
        wait_until(Duration::from_secs(10), || {
            a.members().unwrap().len() == 2 && b.members().unwrap().len() == 2
        })
        .await;
    });
    let names = ["s1", "s2"];
    let tables: Vec<_> = names
        .iter()
        .map(|n| rt1.block_on(a.create_table(n)).unwrap())
        .collect();
    let remote: Vec<_> = names
        .iter()
        .map(|n| rt2.block_on(b.create_table(n)).unwrap())
        .collect();
    for t in &tables {
        for chunk in 0..5 {
            let batch = (0..20_000)
                .map(|i| (format!("key-{chunk}-{i:06}").into_bytes(), vec![b'v'; 1000]))
                .collect();
            rt1.block_on(t.put_many(batch)).unwrap();
        }
    }
    // A value pattern that makes the glob work through every value.
    let slow = |t: &lbmkv::Table| {
        t.match_entries(b"*", b"*v*v*v*v*v*v*v*v*v*v*v*v*v*v*x*")
            .unwrap()
    };
    let started = Instant::now();
    slow(&tables[0]);
    let one_scan = started.elapsed();
    eprintln!(
        "one scan takes {one_scan:?} (failure timeout {:?})",
        a.config().failure_timeout
    );
    let stop = Arc::new(AtomicBool::new(false));
    let scanners: Vec<_> = tables
        .iter()
        .map(|t| {
            let (t, stop) = (t.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    slow(&t);
                }
            })
        })
        .collect();
    rt2.block_on(async {
        let until = tokio::time::Instant::now() + one_scan * 2;
        let mut i = 0u64;
        while tokio::time::Instant::now() < until {
            for t in &remote {
                let _ = tokio::time::timeout(
                    Duration::from_millis(200),
                    t.put(format!("w{i}").as_bytes(), b"x"),
                )
                .await;
            }
            i += 1;
        }
    });
    stop.store(true, Ordering::Relaxed);
    for s in scanners {
        s.join().unwrap();
    }
    assert_eq!(downs(&mut eb), Vec::<String>::new(), "n2 never lost n1");
    assert_eq!(downs(&mut ea), Vec::<String>::new(), "n1 never lost n2");
    rt1.block_on(a.close()).unwrap();
    rt2.block_on(b.close()).unwrap();
}

/// Open file descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

#[test]
fn connections_that_never_speak_are_capped_and_a_peer_still_joins() {
    // The cap of inbound connections in their handshake (MAX_PENDING_HANDSHAKES).
    const CAP: usize = 64;
    const SILENT: usize = 300;
    let _serial = serial();
    let warnings: Arc<Mutex<Vec<String>>> = Arc::default();
    let into = warnings.clone();
    let sink: lbmkv::LogSink = Arc::new(move |r: &lbmkv::LogRecord<'_>| {
        if r.message.contains("closed a connection at once") {
            into.lock().unwrap().push(r.message.to_string());
        }
    });
    lbmkv::set_log_sink(lbmkv::LogLevel::Warn, Some(sink)).expect("log sink");
    runtime().block_on(async {
        // A short request timeout: the silent connections' handshakes end soon.
        let a = Node::start(Config {
            request_timeout: Duration::from_secs(1),
            ..config("n1")
        })
        .await
        .expect("start n1");
        let metrics = tokio::runtime::Handle::current().metrics();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (tasks_before, fds_before) = (metrics.num_alive_tasks(), open_fds());

        let mut silent = Vec::new();
        for _ in 0..SILENT {
            silent.push(
                tokio::net::TcpStream::connect(a.address())
                    .await
                    .expect("connect"),
            );
        }
        // Connections beyond the cap are closed at once: reading them ends.
        let mut probes = tokio::task::JoinSet::new();
        for mut s in silent {
            probes.spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 16];
                let read = tokio::time::timeout(Duration::from_millis(400), s.read(&mut buf));
                let closed = matches!(read.await, Ok(Ok(0) | Err(_)));
                (s, closed)
            });
        }
        let mut silent = Vec::new();
        let mut closed = 0;
        while let Some(probe) = probes.join_next().await {
            let (s, c) = probe.expect("probe");
            closed += usize::from(c);
            silent.push(s);
        }
        assert!(
            closed >= SILENT - CAP,
            "only {closed} of {SILENT} silent connections were closed at once"
        );
        let tasks = metrics.num_alive_tasks();
        assert!(
            tasks <= tasks_before + CAP + 4,
            "{tasks} tasks alive with {SILENT} silent connections, {tasks_before} before"
        );
        // This process holds the clients' ends; the node holds at most CAP.
        let fds = open_fds();
        assert!(
            fds <= fds_before + SILENT + CAP + 8,
            "{fds} descriptors open, {fds_before} before {SILENT} silent connections"
        );

        // The silent connections stay open on this side; a peer still joins
        // once their handshakes ran out of time.
        let joined = Instant::now();
        let b = Node::start(Config {
            seeds: vec![a.address().to_string()],
            min_members: 2,
            request_timeout: Duration::from_secs(10),
            ..config("n2")
        })
        .await
        .expect("n2 joins while the silent connections stay open");
        assert!(
            joined.elapsed() < Duration::from_secs(5),
            "{:?}",
            joined.elapsed()
        );
        assert_eq!(a.members().unwrap(), vec!["n1", "n2"]);
        drop(silent);
        b.close().await.unwrap();
        a.close().await.unwrap();
    });
    lbmkv::set_log_sink(lbmkv::LogLevel::Off, None).expect("log sink");
    let warnings = warnings.lock().unwrap();
    assert_eq!(
        warnings.len(),
        1,
        "one warning per 10 s for the connections closed at once: {warnings:?}"
    );
}
