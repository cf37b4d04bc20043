//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use std::time::Duration;

use lbmkv::{Config, Node};

/// A multi-thread runtime for one test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("test runtime")
}

/// A test configuration: loopback, fixed cookie, fast failure detection.
pub fn config(name: &str) -> Config {
    Config {
        name: Some(name.to_string()),
        listen: "127.0.0.1:0".into(),
        cookie: Some(b"test-cookie".to_vec()),
        heartbeat_interval: Duration::from_millis(50),
        failure_timeout: Duration::from_millis(600),
        request_timeout: Duration::from_secs(5),
        anti_entropy_interval: Duration::from_millis(300),
        ..Config::default()
    }
}

/// Starts a node with [`config`].
pub async fn start(name: &str) -> Node {
    Node::start(config(name)).await.expect("node start")
}

/// Starts `n` nodes named `n1..` and connects them into one cluster.
pub async fn cluster(n: usize) -> Vec<Node> {
    let mut nodes = Vec::new();
    for i in 0..n {
        let node = start(&format!("n{}", i + 1)).await;
        if let Some(first) = nodes.first() {
            let first: &Node = first;
            node.connect(first.address()).await.expect("connect");
        }
        nodes.push(node);
    }
    wait_until(Duration::from_secs(10), || {
        nodes.iter().all(|n| n.members().len() == nodes.len())
    })
    .await;
    nodes
}

/// Polls `cond` every 10 ms until it holds, panicking after `limit`.
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
