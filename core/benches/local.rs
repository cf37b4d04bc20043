//! Local read and single-node write costs.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let config = lbmkv::Config {
        name: Some("bench".into()),
        cookie: Some(b"bench".to_vec()),
        ..lbmkv::Config::default()
    };
    let node = rt.block_on(lbmkv::Node::start(config)).expect("node");
    let table = rt.block_on(node.create_table("bench")).expect("table");
    let value = vec![7u8; 100];
    let keys: Vec<Vec<u8>> = (0..10_000u32)
        .map(|i| format!("key-{i:012}").into_bytes())
        .collect();
    rt.block_on(async {
        for k in &keys {
            table.put(k, &value).await.expect("put");
        }
    });
    let mut i = 0usize;
    c.bench_function("local get (16-byte key, 100-byte value)", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(table.get(black_box(&keys[i])).expect("get"))
        })
    });
    let mut j = 0usize;
    c.bench_function("single-node put (100-byte value)", |b| {
        b.to_async(&rt).iter(|| {
            j = (j + 1) % keys.len();
            let (t, k, v) = (&table, &keys[j], &value);
            async move { black_box(t.put(k, v).await.expect("put")) }
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
