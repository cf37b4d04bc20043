//! Clusters of nodes in one process, over real loopback TCP.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::{cluster, config, runtime, start, wait_until};
use lbmkv::{ErrorKind, Event, Node, Resolution};

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// Lifts the mutual `disconnect` of two nodes: the first `connect` is refused
/// by the other side (which still refuses this node), the second goes through,
/// unless the first node's redial got there first (then the second node turns
/// its own dial away, and that redial is the connection both keep).
async fn heal(a: &Node, b: &Node) {
    let _ = a.connect(b.address()).await;
    let _ = b.connect(a.address()).await;
    let (an, bn) = (a.name().to_string(), b.name().to_string());
    wait_until(Duration::from_secs(10), || {
        a.members().unwrap().contains(&bn) && b.members().unwrap().contains(&an)
    })
    .await;
}

async fn digests_equal(nodes: &[Node], table: &str) -> bool {
    let ds: HashSet<String> = nodes
        .iter()
        .map(|n| {
            n.table(table)
                .and_then(|t| t.stats())
                .map(|s| s.digest)
                .unwrap_or_default()
        })
        .collect();
    ds.len() == 1
}

#[test]
fn writes_are_visible_on_every_member_when_put_returns() {
    runtime().block_on(async {
        let nodes = cluster(3).await;
        let t1 = nodes[0].create_table("t").await.unwrap();
        wait_until(Duration::from_secs(5), || {
            nodes.iter().all(|n| n.table("t").is_ok())
        })
        .await;
        for (i, n) in nodes.iter().enumerate() {
            let t = n.table("t").unwrap();
            let key = format!("k{i}");
            t.put(key.as_bytes(), b"v").await.unwrap();
            for m in &nodes {
                assert_eq!(
                    m.table("t").unwrap().get(key.as_bytes()).unwrap(),
                    Some(b("v"))
                );
            }
        }
        assert_eq!(t1.delete(b"k2").await.unwrap(), Some(b("v")));
        for m in &nodes {
            assert_eq!(m.table("t").unwrap().get(b"k2").unwrap(), None);
            assert_eq!(m.members().unwrap(), vec!["n1", "n2", "n3"]);
        }
        assert_eq!(
            nodes[2]
                .table("t")
                .unwrap()
                .get_strong(b"k1")
                .await
                .unwrap(),
            Some(b("v"))
        );
    });
}

#[test]
fn a_joining_node_receives_every_table_and_entry() {
    runtime().block_on(async {
        let nodes = cluster(2).await;
        let t = nodes[0].create_table("big").await.unwrap();
        let entries: Vec<_> = (0..5000)
            .map(|i| (b(&format!("k{i}")), vec![1u8; 100]))
            .collect();
        t.put_many(entries).await.unwrap();
        let late = Node::start(lbmkv::Config {
            seeds: vec![nodes[1].address().to_string()],
            ..config("late")
        })
        .await
        .unwrap();
        let lt = late.create_table("big").await.unwrap();
        assert_eq!(lt.len().unwrap(), 5000);
        let mut all = nodes.clone();
        all.push(late);
        assert!(digests_equal(&all, "big").await);

        // A joiner whose name sorts first leads its merges: the others send
        // it their tables whole, tombstones and deadlines included.
        // "late" sorts before "n1" and took the ordering over: a write right
        // after may fail with Unavailable while it hands over (documented).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let written = async {
                t.delete(b"k7").await?;
                t.put_expiring(b"k8", b"soon", Duration::from_secs(600))
                    .await
            };
            match written.await {
                Ok(_) => break,
                Err(e) if e.kind() == ErrorKind::Unavailable => {
                    assert!(tokio::time::Instant::now() < deadline, "{e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
        let early = Node::start(lbmkv::Config {
            seeds: vec![nodes[0].address().to_string()],
            ..config("a-early")
        })
        .await
        .unwrap();
        let et = early.create_table("big").await.unwrap();
        assert_eq!(et.len().unwrap(), 4999);
        assert_eq!(et.get(b"k7").unwrap(), None);
        assert!(et.ttl(b"k8").unwrap().is_some());
        all.push(early);
        assert!(digests_equal(&all, "big").await);
    });
}

#[test]
fn sequencer_counter_across_nodes_loses_no_increment() {
    runtime().block_on(async {
        let nodes = cluster(3).await;
        nodes[0].create_table("seq").await.unwrap();
        wait_until(Duration::from_secs(5), || {
            nodes.iter().all(|n| n.table("seq").is_ok())
        })
        .await;
        let mut tasks = Vec::new();
        for n in &nodes {
            for _ in 0..4 {
                let t = n.table("seq").unwrap();
                tasks.push(tokio::spawn(async move {
                    let mut got = Vec::new();
                    for _ in 0..50 {
                        let (_, new) = t
                            .update(b"ctr", |_, v| {
                                let n: u64 =
                                    v.map_or(0, |v| String::from_utf8_lossy(v).parse().unwrap());
                                Some((n + 1).to_string().into_bytes())
                            })
                            .await
                            .unwrap();
                        got.push(new.unwrap());
                    }
                    got
                }));
            }
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let distinct: HashSet<_> = all.iter().collect();
        assert_eq!(all.len(), 600);
        assert_eq!(distinct.len(), 600);
        for n in &nodes {
            assert_eq!(n.table("seq").unwrap().get(b"ctr").unwrap(), Some(b("600")));
        }
    });
}

#[test]
fn a_closed_node_is_seen_down_at_once_and_the_rest_keep_writing() {
    runtime().block_on(async {
        let nodes = cluster(3).await;
        let t = nodes[1].create_table("t").await.unwrap();
        let mut events = nodes[1].subscribe();
        let started = tokio::time::Instant::now();
        nodes[0].close().await.unwrap();
        loop {
            match events.next().await.unwrap() {
                Event::NodeDown { node, .. } if node == "n1" => break,
                _ => {}
            }
        }
        assert!(started.elapsed() < Duration::from_millis(500));
        t.put(b"after", b"close").await.unwrap();
        assert_eq!(
            nodes[2].table("t").unwrap().get(b"after").unwrap(),
            Some(b("close"))
        );
        wait_until(Duration::from_secs(1), || {
            nodes[2].members().unwrap() == vec!["n2", "n3"]
        })
        .await;
    });
}

#[test]
fn wrong_cookie_is_refused_and_sees_no_table() {
    runtime().block_on(async {
        let good = start("good").await;
        good.create_table("secret")
            .await
            .unwrap()
            .put(b"k", b"v")
            .await
            .unwrap();
        let bad = Node::start(lbmkv::Config {
            cookie: Some(b"wrong".to_vec()),
            ..config("bad")
        })
        .await
        .unwrap();
        let err = bad.connect(good.address()).await.unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::Protocol | ErrorKind::Unavailable),
            "{err}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(bad.tables().unwrap().is_empty());
        assert_eq!(good.members().unwrap(), vec!["good"]);
    });
}

#[test]
fn netsplit_without_handler_falls_back_and_logs_the_loser() {
    runtime().block_on(async {
        let nodes = cluster(3).await;
        let t = nodes[0].create_table("t").await.unwrap();
        wait_until(Duration::from_secs(5), || {
            nodes.iter().all(|n| n.table("t").is_ok())
        })
        .await;
        t.put(b"shared", b"before").await.unwrap();
        t.put(b"doomed", b"x").await.unwrap();
        // Cut n3 off from n1 and n2.
        nodes[2].disconnect("n1").await.unwrap();
        nodes[2].disconnect("n2").await.unwrap();
        nodes[0].disconnect("n3").await.unwrap();
        nodes[1].disconnect("n3").await.unwrap();
        wait_until(Duration::from_secs(5), || {
            nodes[2].members().unwrap() == vec!["n3"]
        })
        .await;
        let t3 = nodes[2].table("t").unwrap();
        t.put(b"left", b"1").await.unwrap();
        t3.put(b"right", b"2").await.unwrap();
        t.put(b"shared", b"from-left").await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        t3.put(b"shared", b"from-right").await.unwrap();
        t3.delete(b"doomed").await.unwrap();
        // Heal.
        heal(&nodes[2], &nodes[0]).await;
        heal(&nodes[2], &nodes[1]).await;
        wait_until(Duration::from_secs(10), || {
            nodes.iter().all(|n| n.members().unwrap().len() == 3)
        })
        .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !digests_equal(&nodes, "t").await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "replicas did not converge"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for n in &nodes {
            let t = n.table("t").unwrap();
            assert_eq!(t.get(b"left").unwrap(), Some(b("1")));
            assert_eq!(t.get(b"right").unwrap(), Some(b("2")));
            assert_eq!(
                t.get(b"shared").unwrap(),
                Some(b("from-right")),
                "newest write wins"
            );
            assert_eq!(
                t.get(b"doomed").unwrap(),
                None,
                "a delete during the split stays"
            );
        }
        let logged: Vec<_> = nodes
            .iter()
            .flat_map(|n| n.table("t").unwrap().conflicts().unwrap())
            .collect();
        assert!(logged
            .iter()
            .any(|c| c.key == b"shared" && c.lost == Some(b("from-left"))));
    });
}

#[test]
fn netsplit_with_handler_writes_the_handlers_value_everywhere() {
    runtime().block_on(async {
        let nodes = cluster(2).await;
        let handler = lbmkv::handler_fn(|c| {
            let l = c.local.clone().unwrap_or_default();
            let r = c.remote.clone().unwrap_or_default();
            Ok(Resolution::Value([l, r].concat()))
        });
        let t1 = nodes[0]
            .create_table_with("t", Some(handler))
            .await
            .unwrap();
        wait_until(Duration::from_secs(5), || nodes[1].table("t").is_ok()).await;
        let t2 = nodes[1].table("t").unwrap();
        nodes[0].disconnect("n2").await.unwrap();
        nodes[1].disconnect("n1").await.unwrap();
        wait_until(Duration::from_secs(5), || {
            nodes[0].members().unwrap().len() == 1 && nodes[1].members().unwrap().len() == 1
        })
        .await;
        t1.put(b"k", b"A").await.unwrap();
        t2.put(b"k", b"B").await.unwrap();
        heal(&nodes[0], &nodes[1]).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let v1 = t1.get(b"k").unwrap();
            let v2 = t2.get(b"k").unwrap();
            if v1 == v2 && (v1 == Some(b("AB")) || v1 == Some(b("BA"))) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "handler value not everywhere: {v1:?} {v2:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

#[test]
fn same_table_created_apart_ends_with_the_union() {
    runtime().block_on(async {
        let a = start("a").await;
        let b_node = start("b").await;
        let ta = a.create_table("t").await.unwrap();
        let tb = b_node.create_table("t").await.unwrap();
        ta.put(b"from-a", b"1").await.unwrap();
        tb.put(b"from-b", b"2").await.unwrap();
        a.connect(b_node.address()).await.unwrap();
        let nodes = [a.clone(), b_node.clone()];
        wait_until(Duration::from_secs(10), || {
            ta.len().unwrap() == 2 && tb.len().unwrap() == 2
        })
        .await;
        assert!(digests_equal(&nodes, "t").await);
    });
}

#[test]
fn heal_sends_bytes_in_proportion_to_the_differences() {
    runtime().block_on(async {
        let nodes = cluster(2).await;
        let t1 = nodes[0].create_table("t").await.unwrap();
        let entries: Vec<_> = (0..10_000)
            .map(|i| (b(&format!("key-{i:08}")), vec![b'v'; 100]))
            .collect();
        t1.put_many(entries).await.unwrap();
        let t2 = nodes[1].table("t").unwrap();
        assert_eq!(t2.len().unwrap(), 10_000);
        nodes[0].disconnect("n2").await.unwrap();
        nodes[1].disconnect("n1").await.unwrap();
        wait_until(Duration::from_secs(5), || {
            nodes[1].members().unwrap().len() == 1
        })
        .await;
        let changed: Vec<_> = (0..100)
            .map(|i| (b(&format!("key-{:08}", i * 97)), vec![b'w'; 100]))
            .collect();
        t2.put_many(changed).await.unwrap();
        let before: u64 = nodes
            .iter()
            .map(|n| n.info().unwrap().merge_bytes_sent)
            .sum();
        heal(&nodes[0], &nodes[1]).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !digests_equal(&nodes, "t").await {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let sent: u64 = nodes
            .iter()
            .map(|n| n.info().unwrap().merge_bytes_sent)
            .sum::<u64>()
            - before;
        let table_bytes = 10_000 * (12 + 100);
        assert!(
            sent < table_bytes / 10,
            "merge sent {sent} bytes for a table of {table_bytes}"
        );
        assert_eq!(t1.get(b"key-00000097").unwrap(), Some(vec![b'w'; 100]));
    });
}

#[test]
fn handler_registered_only_on_one_node_runs_once_per_conflict() {
    runtime().block_on(async {
        let nodes = cluster(2).await;
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c2 = calls.clone();
        let t1 = nodes[0].create_table("t").await.unwrap();
        wait_until(Duration::from_secs(5), || nodes[1].table("t").is_ok()).await;
        let t2 = nodes[1].table("t").unwrap();
        t2.set_conflict_handler(Some(lbmkv::handler_fn(move |_| {
            c2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Resolution::Delete)
        })))
        .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        nodes[0].disconnect("n2").await.unwrap();
        nodes[1].disconnect("n1").await.unwrap();
        wait_until(Duration::from_secs(5), || {
            nodes[1].members().unwrap().len() == 1
        })
        .await;
        t1.put(b"k", b"A").await.unwrap();
        t2.put(b"k", b"B").await.unwrap();
        heal(&nodes[0], &nodes[1]).await;
        wait_until(Duration::from_secs(10), || {
            t1.get(b"k").unwrap().is_none() && t2.get(b"k").unwrap().is_none()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    });
}

#[test]
fn a_wrong_magic_version_or_first_message_closes_the_connection_and_nothing_else() {
    use lbmkv::vclock::ActorId;
    use lbmkv::wire::{encode_frame, Message, MAGIC, PROTOCOL_VERSION};
    use std::io::{Read, Write};

    runtime().block_on(async {
        let node = start("guarded").await;
        let t = node.create_table("t").await.unwrap();
        t.put(b"k", b"v").await.unwrap();
        let hello = |magic, version| Message::Hello {
            magic,
            version,
            actor: ActorId::new("intruder", 1),
            listen: "127.0.0.1:1".into(),
            nonce: [7; 32],
        };
        let attempts = [
            ("wrong protocol version", hello(MAGIC, PROTOCOL_VERSION + 1)),
            ("wrong magic", hello(MAGIC ^ 1, PROTOCOL_VERSION)),
            ("a first message that is not Hello", Message::Heartbeat),
        ];
        let addr = node.address().to_string();
        for (what, msg) in attempts {
            let frame = encode_frame(&msg).unwrap();
            let addr = addr.clone();
            let closed = tokio::task::spawn_blocking(move || {
                let mut s = std::net::TcpStream::connect(&addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(&frame).unwrap();
                let mut buf = [0u8; 64];
                // The node answers nothing and closes: end of stream or a reset,
                // long before the read timeout.
                match s.read(&mut buf) {
                    Ok(0) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
                    Ok(_) => false,
                }
            })
            .await
            .unwrap();
            assert!(closed, "{what}: the connection stays open or got an answer");
        }
        assert_eq!(node.members().unwrap(), vec!["guarded"]);
        assert_eq!(t.get(b"k").unwrap(), Some(b("v")));
        // The node still serves: a real peer joins and reads the table.
        let peer = Node::start(lbmkv::Config {
            seeds: vec![addr.clone()],
            ..config("friend")
        })
        .await
        .unwrap();
        let pt = peer.create_table("t").await.unwrap();
        assert_eq!(pt.get(b"k").unwrap(), Some(b("v")));
    });
}

#[test]
fn min_members_fails_at_start_naming_each_seed_and_why() {
    runtime().block_on(async {
        // A port nobody listens on: refused.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let refused = closed.local_addr().unwrap().to_string();
        drop(closed);
        // A node with another cookie: refused by authentication.
        let stranger = Node::start(lbmkv::Config {
            cookie: Some(b"another".to_vec()),
            ..config("stranger")
        })
        .await
        .unwrap();
        let err = Node::start(lbmkv::Config {
            seeds: vec![refused.clone(), stranger.address().to_string()],
            min_members: 2,
            request_timeout: Duration::from_millis(1500),
            ..config("lonely")
        })
        .await
        .err()
        .expect("start fails without its members");
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        let msg = err.message();
        assert!(msg.contains("1 of 2 members"), "{msg}");
        assert!(msg.contains(&format!("{refused}: ")), "{msg}");
        assert!(msg.to_lowercase().contains("refused"), "{msg}");
        assert!(
            msg.contains(&format!("{}: ", stranger.address())) && msg.contains("different cookie"),
            "{msg}"
        );
        // With its members there, the same start succeeds.
        let friend = start("friend").await;
        let node = Node::start(lbmkv::Config {
            seeds: vec![friend.address().to_string()],
            min_members: 2,
            ..config("joined")
        })
        .await
        .unwrap();
        assert_eq!(node.members().unwrap(), vec!["friend", "joined"]);
    });
}

#[test]
fn wait_for_members_returns_once_they_join_and_fails_in_time_or_on_close() {
    runtime().block_on(async {
        let a = start("wa").await;
        // One member (itself) is there at once.
        a.wait_for_members(1, Duration::from_millis(10))
            .await
            .unwrap();
        // Too few: Unavailable after the timeout, saying how many there are.
        let t0 = std::time::Instant::now();
        let err = a
            .wait_for_members(2, Duration::from_millis(300))
            .await
            .expect_err("no second member");
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(
            err.message().contains("1 of 2 members"),
            "{}",
            err.message()
        );
        assert!(t0.elapsed() >= Duration::from_millis(300));
        // A peer that joins while the wait runs ends it.
        let addr = a.address().to_string();
        let waiting = {
            let a = a.clone();
            tokio::spawn(async move { a.wait_for_members(2, Duration::from_secs(10)).await })
        };
        let b = Node::start(lbmkv::Config {
            seeds: vec![addr],
            ..config("wb2")
        })
        .await
        .unwrap();
        waiting.await.unwrap().unwrap();
        assert_eq!(a.members().unwrap().len(), 2);
        // A close during the wait ends it at once with Closed.
        let waiting = {
            let a = a.clone();
            tokio::spawn(async move { a.wait_for_members(3, Duration::from_secs(30)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t0 = std::time::Instant::now();
        a.close().await.unwrap();
        let err = waiting.await.unwrap().expect_err("closed");
        assert_eq!(err.kind(), ErrorKind::Closed);
        assert!(t0.elapsed() < Duration::from_secs(5));
        b.close().await.unwrap();
    });
}

#[test]
fn a_node_listening_on_a_wildcard_address_is_reached_at_the_address_seen() {
    runtime().block_on(async {
        let wild = Node::start(lbmkv::Config {
            listen: "0.0.0.0:0".into(),
            ..config("wild")
        })
        .await
        .unwrap();
        let port = wild.address().rsplit_once(':').unwrap().1.to_string();
        // Reached through another loopback address than the one it shows.
        let b = Node::start(lbmkv::Config {
            seeds: vec![format!("127.0.0.5:{port}")],
            ..config("wb")
        })
        .await
        .unwrap();
        // A third node learns of "wild" from "wb" only, at the address "wb" saw.
        let c = Node::start(lbmkv::Config {
            seeds: vec![b.address().to_string()],
            ..config("wc")
        })
        .await
        .unwrap();
        wait_until(Duration::from_secs(10), || {
            [&wild, &b, &c]
                .iter()
                .all(|n| n.members().unwrap().len() == 3)
        })
        .await;
    });
}
