//! The single-node table semantics, ported from lbm_kv's `lbm_kv_tests`.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use common::{runtime, start};
use lbmkv::ErrorKind;
use proptest::prelude::*;

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

#[test]
fn empty_table() {
    runtime().block_on(async {
        let node = start("empty").await;
        let t = node.create_table("t").await.unwrap();
        assert_eq!(t.get(b"k").unwrap(), None);
        assert_eq!(t.len().unwrap(), 0);
        assert!(t.keys().unwrap().is_empty());
        assert_eq!(t.match_entries(b"*", b"*").unwrap(), vec![]);
        assert_eq!(t.delete(b"k").await.unwrap(), None);
        assert_eq!(t.update_all(|_, _| None).await.unwrap(), (vec![], vec![]));
        node.close().await.unwrap();
    });
}

#[test]
fn put_get_delete() {
    runtime().block_on(async {
        let node = start("pgd").await;
        let t = node.create_table("t").await.unwrap();
        assert_eq!(t.put(b"key", b"value").await.unwrap(), None);
        assert_eq!(t.get(b"key").unwrap(), Some(b("value")));
        assert_eq!(t.put(b"key", b"value2").await.unwrap(), Some(b("value")));
        assert_eq!(t.get_strong(b"key").await.unwrap(), Some(b("value2")));
        assert!(t.contains(b"key").unwrap());
        assert_eq!(t.delete(b"key").await.unwrap(), Some(b("value2")));
        assert_eq!(t.get(b"key").unwrap(), None);
        assert!(!t.contains(b"key").unwrap());
        let stats = t.stats().unwrap();
        assert_eq!((stats.entries, stats.tombstones), (0, 1));
        // A put after a delete resurrects the key with a newer clock.
        assert_eq!(t.put(b"key", b"again").await.unwrap(), None);
        assert_eq!(t.get(b"key").unwrap(), Some(b("again")));
    });
}

#[test]
fn multi_put_and_delete() {
    runtime().block_on(async {
        let node = start("multi").await;
        let t = node.create_table("t").await.unwrap();
        let prev = t
            .put_many(vec![(b("a"), b("1")), (b("b"), b("2")), (b("c"), b("3"))])
            .await
            .unwrap();
        assert!(prev.is_empty());
        let prev = t
            .put_many(vec![(b("a"), b("10")), (b("d"), b("4"))])
            .await
            .unwrap();
        assert_eq!(prev, vec![(b("a"), b("1"))]);
        assert_eq!(t.keys().unwrap(), vec![b("a"), b("b"), b("c"), b("d")]);
        let mut deleted = t.delete_many(vec![b("b"), b("c"), b("x")]).await.unwrap();
        deleted.sort();
        assert_eq!(deleted, vec![(b("b"), b("2")), (b("c"), b("3"))]);
        assert_eq!(t.len().unwrap(), 2);
    });
}

#[test]
fn update_sets_deletes_and_keeps() {
    runtime().block_on(async {
        let node = start("upd").await;
        let t = node.create_table("t").await.unwrap();
        // Absent key, function returns a value: set.
        let r = t
            .update(b"k", |_, v| {
                assert!(v.is_none());
                Some(b("1"))
            })
            .await
            .unwrap();
        assert_eq!(r, (None, Some(b("1"))));
        // Returning the old value writes nothing.
        let before = t.stats().unwrap().digest;
        let r = t.update(b"k", |_, v| v.map(<[u8]>::to_vec)).await.unwrap();
        assert_eq!(r, (Some(b("1")), Some(b("1"))));
        assert_eq!(t.stats().unwrap().digest, before);
        // Returning nothing deletes.
        let r = t.update(b"k", |_, _| None).await.unwrap();
        assert_eq!(r, (Some(b("1")), None));
        assert_eq!(t.get(b"k").unwrap(), None);
        // An error from the function aborts and is returned as is.
        let err = t
            .update_with(b"k", |_, _| async {
                Err(lbmkv::Error::new(ErrorKind::Aborted, "no"))
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Aborted);
        assert_eq!(t.get(b"k").unwrap(), None);
    });
}

#[test]
fn update_all_is_applied_to_the_whole_table() {
    runtime().block_on(async {
        let node = start("updall").await;
        let t = node.create_table("t").await.unwrap();
        t.put_many(
            (0..10)
                .map(|i| (b(&format!("k{i}")), b(&i.to_string())))
                .collect(),
        )
        .await
        .unwrap();
        // Even values are doubled, 3 is deleted, others are kept.
        let (old, new) = t
            .update_all(|_, v| {
                let n: u32 = std::str::from_utf8(v).unwrap().parse().unwrap();
                match n {
                    3 => None,
                    n if n % 2 == 0 => Some(b(&(n * 2).to_string())),
                    _ => Some(v.to_vec()),
                }
            })
            .await
            .unwrap();
        assert_eq!(old.len(), 5 + 1 - 1); // 0,2,4,6,8 changed; 0*2 == 0 unchanged; 3 deleted
        assert!(old.contains(&(b("k3"), b("3"))));
        assert!(!new.iter().any(|(k, _)| k == b"k3"));
        assert!(new.contains(&(b("k4"), b("8"))));
        assert_eq!(t.get(b"k3").unwrap(), None);
        assert_eq!(t.get(b"k8").unwrap(), Some(b("16")));
        assert_eq!(t.get(b"k1").unwrap(), Some(b("1")));
        assert_eq!(t.len().unwrap(), 9);
    });
}

#[test]
fn integration_sequence() {
    runtime().block_on(async {
        let node = start("seq").await;
        let t = node.create_table("users").await.unwrap();
        let again = node.create_table("users").await.unwrap();
        t.put(b"user:1", b"alice").await.unwrap();
        t.put(b"user:2", b"bob").await.unwrap();
        t.put(b"group:1", b"admins").await.unwrap();
        assert_eq!(again.get(b"user:2").unwrap(), Some(b("bob")));
        assert_eq!(
            t.match_entries(b"user:*", b"*").unwrap(),
            vec![(b("user:1"), b("alice")), (b("user:2"), b("bob"))]
        );
        assert_eq!(
            t.match_entries(b"*", b"b?b").unwrap(),
            vec![(b("user:2"), b("bob"))]
        );
        assert_eq!(
            t.match_entries(b"user:[!1]", b"*").unwrap(),
            vec![(b("user:2"), b("bob"))]
        );
        assert_eq!(node.tables().unwrap(), vec!["users".to_string()]);
        assert_eq!(node.members().unwrap(), vec!["seq".to_string()]);
        let info = node.info().unwrap();
        assert_eq!(info.tables[0].entries, 3);
        node.close().await.unwrap();
        assert_eq!(t.get(b"user:1").unwrap_err().kind(), ErrorKind::Closed);
        assert_eq!(
            t.put(b"x", b"y").await.unwrap_err().kind(),
            ErrorKind::Closed
        );
        assert_eq!(
            node.create_table("x").await.unwrap_err().kind(),
            ErrorKind::Closed
        );
    });
}

#[test]
fn bad_input_gives_typed_errors() {
    runtime().block_on(async {
        let node = start("bad").await;
        for name in ["", "a\0b", &"x".repeat(256)] {
            let e = node.create_table(name).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{name:?}");
        }
        assert_eq!(
            node.table("nope").unwrap_err().kind(),
            ErrorKind::NoSuchTable
        );
        let t = node.create_table("t").await.unwrap();
        let big_key = vec![0u8; 64 * 1024 + 1];
        assert_eq!(
            t.put(&big_key, b"v").await.unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            t.get(&big_key).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            t.match_entries(b"[abc", b"*").unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            lbmkv::name_from_bytes("table name", &[0xff, 0xfe])
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidArgument
        );
        let bad = lbmkv::Config {
            listen: "not an address".into(),
            ..common::config("x")
        };
        assert_eq!(
            lbmkv::Node::start(bad).await.err().unwrap().kind(),
            ErrorKind::InvalidArgument
        );
        // Nothing was lost by the refused calls.
        assert_eq!(t.len().unwrap(), 0);
    });
}

#[test]
fn concurrent_updates_hand_out_every_value_once() {
    runtime().block_on(async {
        let node = start("counter").await;
        let t = node.create_table("c").await.unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let t = t.clone();
            let seen = seen.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..1000 {
                    let (_, new) = t
                        .update(b"n", |_, v| {
                            let n: u64 =
                                v.map_or(0, |v| std::str::from_utf8(v).unwrap().parse().unwrap());
                            Some((n + 1).to_string().into_bytes())
                        })
                        .await
                        .unwrap();
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8(new.unwrap()).unwrap());
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(t.get(b"n").unwrap(), Some(b("8000")));
        let seen = seen.lock().unwrap();
        let distinct: HashSet<&String> = seen.iter().collect();
        assert_eq!(seen.len(), 8000);
        assert_eq!(distinct.len(), 8000, "a counter value was handed out twice");
    });
}

#[test]
fn events_report_table_creation() {
    runtime().block_on(async {
        let node = start("events").await;
        let mut events = node.subscribe();
        node.create_table("t").await.unwrap();
        let ev = events.next().await.unwrap();
        assert_eq!(ev, lbmkv::Event::TableCreated { table: "t".into() });
        assert_eq!(ev.to_json(), r#"{"type":"table_created","table":"t"}"#);
        let _table_keeps_the_node_state_alive = node.table("t").unwrap();
        node.close().await.unwrap();
        assert_eq!(
            events.next().await,
            None,
            "the subscription ends when the node closes"
        );
        assert_eq!(node.subscribe().next().await, None);
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// The table behaves like a map under any sequence of puts and deletes.
    #[test]
    fn table_matches_a_model(ops in proptest::collection::vec(
        (proptest::collection::vec(any::<u8>(), 0..8), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16))),
        1..40,
    )) {
        runtime().block_on(async {
            let node = start("model").await;
            let t = node.create_table("m").await.unwrap();
            let mut model = BTreeMap::new();
            for (k, v) in ops {
                match v {
                    Some(v) => {
                        let prev = t.put(&k, &v).await.unwrap();
                        assert_eq!(prev, model.insert(k.clone(), v));
                    }
                    None => {
                        let prev = t.delete(&k).await.unwrap();
                        assert_eq!(prev, model.remove(&k));
                    }
                }
            }
            let all = t.match_entries(b"*", b"*").unwrap();
            assert_eq!(all, model.into_iter().collect::<Vec<_>>());
            node.close().await.unwrap();
        });
    }
}
