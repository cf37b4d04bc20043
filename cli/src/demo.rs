//! `lbmkv demo`: the lbm_kv sequencer sample on a 3-node cluster in this
//! process, through a netsplit and its heal, narrated step by step.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lbmkv::{Config, Conflict, Event, Node, Resolution, Table};

const TABLE: &str = "counter";
const KEY: &[u8] = b"sequence";

/// Runs the demo; `Err` says which step went wrong.
pub async fn run() -> Result<(), String> {
    let started = Instant::now();
    say("lbmkv demo: three nodes, one replicated counter, a netsplit and its heal.");
    let nodes = start_cluster().await?;
    step(&format!(
        "1. Started {} on loopback; each node sees {}.",
        names(&nodes),
        views(&nodes)
    ));

    let mut tables = Vec::new();
    for n in &nodes {
        tables.push(
            n.create_table_with(TABLE, Some(keep_max()))
                .await
                .map_err(e)?,
        );
    }
    say(&format!(
        "   Table {TABLE:?} exists on every node, each with a conflict handler that keeps the larger counter."
    ));

    let per_node = 10;
    increment_everywhere(&tables, per_node).await?;
    let expected = 3 * per_node;
    expect_everywhere(&tables, expected, Duration::from_secs(5)).await?;
    step(&format!(
        "2. Sequencer sample: every node incremented the counter {per_node} times at once with an atomic update. \
         The sequencer ({}) ordered all {expected} increments; every node reads {expected}.",
        nodes[0].name()
    ));

    let mut events = nodes[0].subscribe();
    split(&nodes).await?;
    step(&format!(
        "3. Netsplit: {} is cut off from {} and {}. Views now: {}.",
        nodes[2].name(),
        nodes[0].name(),
        nodes[1].name(),
        views(&nodes)
    ));

    let majority_incr = 5;
    let minority_incr = 3;
    for _ in 0..majority_incr {
        increment(&tables[1]).await?;
    }
    for _ in 0..minority_incr {
        increment(&tables[2]).await?;
    }
    let left = read(&tables[0])?;
    let right = read(&tables[2])?;
    step(&format!(
        "4. Both sides stay writable: {} and {} counted on to {left}, {} alone counted on to {right}.",
        nodes[0].name(),
        nodes[1].name(),
        nodes[2].name()
    ));
    if left != expected + majority_incr || right != expected + minority_incr {
        return Err(format!(
            "during the split the sides read {left} and {right}, expected {} and {}",
            expected + majority_incr,
            expected + minority_incr
        ));
    }

    let heal_started = Instant::now();
    heal(&nodes).await?;
    let winner = left.max(right);
    expect_everywhere(&tables, winner, Duration::from_secs(10)).await?;
    let heal_ms = heal_started.elapsed().as_millis();
    let mut merged = Vec::new();
    while let Some(ev) = events.try_next() {
        match ev {
            Event::Merged {
                table,
                peer,
                keys_changed,
                conflicts,
            } if table == TABLE => merged.push(format!(
                "{peer}: {keys_changed} key(s) changed, {conflicts} conflict(s)"
            )),
            Event::Conflict {
                table,
                key,
                resolution,
            } if table == TABLE => {
                merged.push(format!("conflict on {key:?} settled by {resolution:?}"))
            }
            _ => {}
        }
    }
    step(&format!(
        "5. Healed in {heal_ms} ms. Views: {}. The tables were merged key by key with vector clocks;",
        views(&nodes)
    ));
    say(&format!(
        "   the two versions of {:?} were concurrent, so the conflict handler chose max({left}, {right}) = {winner}.",
        String::from_utf8_lossy(KEY)
    ));
    for m in merged {
        say(&format!("   {} saw: {m}", nodes[0].name()));
    }
    // Every node reads the winner as soon as it holds the resolution or a
    // version with that value; the resolution's clock reaches every replica
    // a moment later (a member may apply it after another already reads it).
    let digests = |tables: &[Table]| -> Vec<String> {
        tables
            .iter()
            .map(|t| t.stats().map(|s| s.digest).unwrap_or_default())
            .collect()
    };
    let agreed = wait_for("the replicas to agree", Duration::from_secs(5), || {
        let d = digests(&tables);
        d.iter().all(|x| *x == d[0])
    })
    .await;
    let digests = digests(&tables);
    if agreed.is_err() {
        return Err(format!(
            "replicas differ after the heal: digests {digests:?}"
        ));
    }
    step(&format!(
        "6. All nodes agree: counter = {winner} on {}, table digest {} everywhere.",
        names(&nodes),
        digests[0]
    ));
    for n in &nodes {
        n.close().await.map_err(e)?;
    }
    say(&format!("Done in {} ms.", started.elapsed().as_millis()));
    Ok(())
}

fn say(line: &str) {
    println!("{line}");
}

fn step(line: &str) {
    println!();
    println!("{line}");
}

fn e(err: lbmkv::Error) -> String {
    err.to_string()
}

fn names(nodes: &[Node]) -> String {
    let n: Vec<&str> = nodes.iter().map(|n| n.name()).collect();
    n.join(", ")
}

/// The names in `node`'s view (none once it is closed).
fn view(node: &Node) -> Vec<String> {
    node.members().unwrap_or_default()
}

fn views(nodes: &[Node]) -> String {
    let v: Vec<String> = nodes
        .iter()
        .map(|n| format!("{} [{}]", n.name(), view(n).join(" ")))
        .collect();
    v.join("; ")
}

fn config(name: &str) -> Config {
    Config {
        name: Some(name.to_string()),
        listen: "127.0.0.1:0".into(),
        cookie: Some(b"lbmkv-demo".to_vec()),
        heartbeat_interval: Duration::from_millis(100),
        failure_timeout: Duration::from_millis(1000),
        anti_entropy_interval: Duration::from_millis(500),
        ..Config::default()
    }
}

async fn start_cluster() -> Result<Vec<Node>, String> {
    let first = Node::start(config("demo-1")).await.map_err(e)?;
    let mut nodes = vec![first.clone()];
    for i in 2..=3 {
        let cfg = Config {
            seeds: vec![first.address().to_string()],
            ..config(&format!("demo-{i}"))
        };
        nodes.push(Node::start(cfg).await.map_err(e)?);
    }
    wait_for(
        "all three nodes to see each other",
        Duration::from_secs(10),
        || nodes.iter().all(|n| view(n).len() == 3),
    )
    .await?;
    Ok(nodes)
}

fn keep_max() -> Arc<dyn lbmkv::ConflictHandler> {
    lbmkv::handler_fn(|c: &Conflict| {
        let parse = |v: &Option<Vec<u8>>| -> u64 {
            v.as_deref()
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0)
        };
        let max = parse(&c.local).max(parse(&c.remote));
        Ok(Resolution::Value(max.to_string().into_bytes()))
    })
}

async fn increment(table: &Table) -> Result<u64, String> {
    let (_, new) = table
        .update(KEY, |_, old| {
            let n: u64 = old
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            Some((n + 1).to_string().into_bytes())
        })
        .await
        .map_err(e)?;
    new.and_then(|v| String::from_utf8(v).ok())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "the counter is not a number".to_string())
}

async fn increment_everywhere(tables: &[Table], per_node: u64) -> Result<(), String> {
    let mut tasks = Vec::new();
    for t in tables {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_node {
                increment(&t).await?;
            }
            Ok::<_, String>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|err| err.to_string())??;
    }
    Ok(())
}

fn read(table: &Table) -> Result<u64, String> {
    let v = table.get(KEY).map_err(e)?.unwrap_or_default();
    Ok(String::from_utf8_lossy(&v).parse().unwrap_or(0))
}

async fn expect_everywhere(tables: &[Table], value: u64, limit: Duration) -> Result<(), String> {
    wait_for(&format!("every node to read {value}"), limit, || {
        tables.iter().all(|t| read(t).ok() == Some(value))
    })
    .await
}

async fn split(nodes: &[Node]) -> Result<(), String> {
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    c.disconnect(a.name()).await.map_err(e)?;
    c.disconnect(b.name()).await.map_err(e)?;
    a.disconnect(c.name()).await.map_err(e)?;
    b.disconnect(c.name()).await.map_err(e)?;
    wait_for(
        "the split to show in the views",
        Duration::from_secs(5),
        || view(c).len() == 1 && view(a).len() == 2 && view(b).len() == 2,
    )
    .await
}

async fn heal(nodes: &[Node]) -> Result<(), String> {
    let c = &nodes[2];
    for other in &nodes[..2] {
        // The first connect lifts this side's refusal; the other side still
        // refuses until its own connect, which then goes through.
        let _ = c.connect(other.address()).await;
        other.connect(c.address()).await.map_err(e)?;
    }
    wait_for(
        "the views to include every node again",
        Duration::from_secs(10),
        || nodes.iter().all(|n| view(n).len() == 3),
    )
    .await
}

async fn wait_for(
    what: &str,
    limit: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("timed out after {limit:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
