//! The lbm_kv sequencer sample in Rust: three nodes share a counter table; each
//! hands out numbers with an atomic `update`; a conflict handler keeps the
//! larger counter should a netsplit ever let both sides count on.
//!
//! Run with `cargo run -p lbmkv --example sequencer`.

use std::collections::HashSet;

use lbmkv::{Config, Node, Resolution};

fn counter(v: Option<&[u8]>) -> u64 {
    v.and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

async fn run() -> lbmkv::Result<()> {
    let config = |name: &str, seeds: Vec<String>| Config {
        name: Some(name.into()),
        seeds,
        cookie: Some(b"sequencer-sample".to_vec()),
        ..Config::default()
    };
    let first = Node::start(config("seq-1", vec![])).await?;
    let mut nodes = vec![first.clone()];
    for name in ["seq-2", "seq-3"] {
        nodes.push(Node::start(config(name, vec![first.address().into()])).await?);
    }
    let keep_max = lbmkv::handler_fn(|c| {
        let max = counter(c.local.as_deref()).max(counter(c.remote.as_deref()));
        Ok(Resolution::Value(max.to_string().into_bytes()))
    });
    let mut tasks = Vec::new();
    for node in &nodes {
        let table = node
            .create_table_with("sequence", Some(keep_max.clone()))
            .await?;
        for _ in 0..4 {
            let table = table.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..25 {
                    let (_, new) = table
                        .update(b"next", |_, v| {
                            Some((counter(v) + 1).to_string().into_bytes())
                        })
                        .await?;
                    got.push(counter(new.as_deref()));
                }
                Ok::<_, lbmkv::Error>(got)
            }));
        }
    }
    let mut handed_out = Vec::new();
    for task in tasks {
        let got = task
            .await
            .map_err(|e| lbmkv::Error::new(lbmkv::ErrorKind::Internal, e.to_string()))??;
        handed_out.extend(got);
    }
    let distinct: HashSet<u64> = handed_out.iter().copied().collect();
    let finals: Vec<u64> = nodes
        .iter()
        .map(|n| n.table("sequence").and_then(|t| t.get(b"next")))
        .map(|v| v.map(|v| counter(v.as_deref())))
        .collect::<lbmkv::Result<_>>()?;
    println!(
        "{} numbers handed out by 12 clients on 3 nodes, {} distinct; counter on each node: {:?}",
        handed_out.len(),
        distinct.len(),
        finals
    );
    for n in &nodes {
        n.close().await?;
    }
    if distinct.len() != 300 || finals.iter().any(|&f| f != 300) {
        return Err(lbmkv::Error::new(
            lbmkv::ErrorKind::Internal,
            "the sequence has a gap or a duplicate",
        ));
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sequencer: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
