//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use lbmkv::net::MemNet;
use lbmkv::{Config, Node};

pub mod raw_peer;

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
        nodes
            .iter()
            .all(|n| n.members().unwrap().len() == nodes.len())
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

/// The address of the `n`th node (1-based) of an in-memory cluster.
pub fn ip(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

/// Starts node number `n` (1-based, its address is [`ip`]`(n)`) on `net`, seeded with `seeds`.
pub async fn mem_node(net: &MemNet, n: u8, name: &str, seeds: &[&Node]) -> Node {
    mem_node_with(net, n, config(name), seeds).await
}

/// [`mem_node`] with the configuration `cfg`.
pub async fn mem_node_with(net: &MemNet, n: u8, cfg: Config, seeds: &[&Node]) -> Node {
    let cfg = Config {
        listen: format!("{}:7000", ip(n)),
        seeds: seeds.iter().map(|s| s.address().to_string()).collect(),
        ..cfg
    };
    Node::start_with_net(cfg, Arc::new(net.clone()))
        .await
        .expect("node start")
}

/// Starts one node per name on `net` (at 127.0.0.1, .2, ...), each seeded with
/// the first, and waits until every view is whole.
pub async fn mem_cluster(net: &MemNet, names: &[&str]) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let seeds: Vec<&Node> = nodes.first().into_iter().collect();
        let node = mem_node(net, i as u8 + 1, name, &seeds).await;
        nodes.push(node);
    }
    wait_until(Duration::from_secs(10), || {
        nodes
            .iter()
            .all(|n| n.members().unwrap().len() == names.len())
    })
    .await;
    nodes
}

/// Cuts node `n` (1-based) off from every other of `total` nodes.
pub fn isolate(net: &MemNet, n: u8, total: u8) {
    for other in (1..=total).filter(|&o| o != n) {
        net.cut(ip(n), ip(other));
    }
}

/// Heals every link between the first `total` nodes.
pub fn heal_all(net: &MemNet, total: u8) {
    for a in 1..=total {
        for b in 1..=total {
            net.heal(ip(a), ip(b));
        }
    }
}
