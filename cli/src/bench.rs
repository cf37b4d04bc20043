//! `lbmkv bench`: the benchmark scenarios of the specification, over real TCP on
//! loopback, with `lbmkv node` child processes for the clusters of 3, 5 and 7
//! nodes and for the nodes that join.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lbmkv::{Config, Node, Table};
use serde_json::{json, Value};

const COOKIE: &str = "lbmkv-bench";
const VALUE_SIZE: usize = 100;

/// Options of `lbmkv bench`: the sizes of one run.
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// Print the results as JSON on stdout (progress still goes to stderr)
    #[arg(long)]
    json: bool,
    /// Also write the JSON document of --json to FILE (created or truncated
    /// before the first scenario); stdout keeps the table unless --json is given
    #[arg(long, value_name = "FILE")]
    json_out: Option<PathBuf>,
    /// Smaller sizes: 100,000 entries, 2,000 writes, 1,000,000 gets, joins of
    /// 10,000 to 1,000,000 entries (under a minute)
    #[arg(long)]
    quick: bool,
    /// Entries of the memory, join and heal scenarios [default: 1000000]; the
    /// scaling joins take a tenth, once and five times as many [default:
    /// 100000, 1000000, 5000000]
    #[arg(long, value_name = "N", value_parser = count)]
    entries: Option<usize>,
    /// Writes per write scenario, also on 5 and 7 nodes [default: 20000]
    #[arg(long, value_name = "N", value_parser = count)]
    ops: Option<usize>,
    /// Local gets [default: 5000000]
    #[arg(long, value_name = "N", value_parser = count)]
    gets: Option<usize>,
    /// Concurrent clients of the concurrent write scenarios (at least 1)
    #[arg(long, value_name = "N", value_parser = count, default_value = "16")]
    clients: usize,
}

/// A count; `_` may group digits (`1_000_000`).
fn count(v: &str) -> Result<usize, String> {
    v.replace('_', "")
        .parse()
        .map_err(|_| format!("needs a number, got {v:?}"))
}

/// The sizes of a run, defaults and `--quick` applied.
#[derive(Clone, Debug)]
struct Sizes {
    json: bool,
    entries: usize,
    /// Entries of the scaling joins, ascending.
    join_sizes: Vec<usize>,
    ops: usize,
    gets: usize,
    clients: usize,
}

impl Options {
    fn sizes(&self) -> Sizes {
        let (entries, ops, gets) = if self.quick {
            (100_000, 2_000, 1_000_000)
        } else {
            (1_000_000, 20_000, 5_000_000)
        };
        let mut join_sizes = match self.entries {
            Some(n) => vec![n / 10, n, n.saturating_mul(5)],
            None if self.quick => vec![10_000, 100_000, 1_000_000],
            None => vec![100_000, 1_000_000, 5_000_000],
        };
        join_sizes.dedup();
        Sizes {
            json: self.json,
            entries: self.entries.unwrap_or(entries),
            join_sizes,
            ops: self.ops.unwrap_or(ops),
            gets: self.gets.unwrap_or(gets),
            clients: self.clients.max(1),
        }
    }
}

/// One line of the result table.
struct Row {
    id: &'static str,
    workload: String,
    result: String,
    target: &'static str,
    reference: &'static str,
    ratio: String,
    data: Value,
}

/// Runs the benchmark with command-line `args`; prints the table (or JSON).
pub async fn run(options: Options) -> Result<(), String> {
    let o = options.sizes();
    // Opened first, so that a path that cannot be written fails before the run.
    let json_out = match &options.json_out {
        Some(path) => Some(
            std::fs::File::create(path)
                .map_err(|err| format!("cannot write {}: {err}", path.display()))?,
        ),
        None => None,
    };
    let mut rows = Vec::new();
    progress("local reads");
    rows.extend(local_gets(&o).await?);
    progress("writes on 1 node");
    let single = start_node("bench-solo", vec![]).await?;
    let t = single.create_table("bench").await.map_err(e)?;
    rows.extend(write_scenarios(&o, &t, "1 node").await?.0);
    progress("local puts with watches open");
    rows.push(watch_cost(&o, &t).await?);
    single.close().await.map_err(e)?;

    progress("starting 2 lbmkv node processes");
    let (cluster, client, t) = process_cluster(2).await?;
    progress("writes on 3 nodes");
    let (writes, (one, many)) = write_scenarios(&o, &t, "3 nodes").await?;
    rows.extend(writes);
    let mut scaling = vec![scale_write_row(3, o.clients, &one, &many)];
    progress("hot key on 3 nodes");
    rows.push(hot_key(&o, &t).await?);
    client.close().await.map_err(e)?;
    drop(cluster);

    progress("writes on 3 nodes with TLS");
    rows.extend(tls_writes(&o).await?);

    for children in [4, 6] {
        progress(&format!("writes on {} nodes", children + 1));
        scaling.push(scale_write(&o, children).await?);
    }
    rows.extend(scaling);

    progress(&format!(
        "memory, joins and heal with {} entries",
        o.entries
    ));
    rows.extend(join_heal_memory(o.entries, true).await?);
    if o.entries != LBM_KV_HEAL_KEYS {
        // The lbm_kv reference for heals was measured with 120,000 keys.
        progress("heal with 120000 entries");
        let heal = join_heal_memory(LBM_KV_HEAL_KEYS, false).await?;
        rows.extend(heal.into_iter().filter(|r| r.id == "heal"));
    }
    rows.extend(scale_joins(&o).await?);
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprint!("\r{:60}\r", "");
    }
    report(&o, &rows);
    if let (Some(mut file), Some(path)) = (json_out, &options.json_out) {
        writeln!(file, "{}", json_document(&rows))
            .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
    }
    Ok(())
}

/// Says on stderr which scenario runs (stdout carries only the results).
fn progress(what: &str) {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        eprint!("\r{:60}\rbench: {what}...", "");
    } else {
        eprintln!("bench: {what}...");
    }
}

fn e(err: lbmkv::Error) -> String {
    err.to_string()
}

fn config(name: &str, seeds: Vec<String>) -> Config {
    Config {
        name: Some(name.to_string()),
        seeds,
        cookie: Some(COOKIE.as_bytes().to_vec()),
        ..Config::default()
    }
}

async fn start_node(name: &str, seeds: Vec<String>) -> Result<Node, String> {
    Node::start(config(name, seeds)).await.map_err(e)
}

async fn wait_members(node: &Node, n: usize) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.members().map_err(e)?.len() < n {
        if Instant::now() > deadline {
            return Err(format!(
                "only {:?} joined within 10 s",
                node.members().map_err(e)?
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:012}").into_bytes()
}

fn value(i: usize) -> Vec<u8> {
    let mut v = format!("{i:016}").into_bytes();
    v.resize(VALUE_SIZE, b'v');
    v
}

/// One `lbmkv node` child process, killed when dropped (also on an error path).
struct NodeProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl NodeProcess {
    /// Starts node `name` seeded with `seeds` (with the certificates of `tls`,
    /// a directory written by `lbmkv certs`, when given) and waits for its
    /// READY line; returns it and the address it listens on.
    fn spawn(
        name: &str,
        seeds: &[String],
        tls: Option<&Path>,
    ) -> Result<(NodeProcess, String), String> {
        let exe = std::env::current_exe().map_err(|err| err.to_string())?;
        let mut cmd = Command::new(&exe);
        cmd.args([
            "node",
            "--name",
            name,
            "--listen",
            "127.0.0.1:0",
            "--cookie",
            COOKIE,
        ]);
        for a in seeds {
            cmd.args(["--seed", a]);
        }
        if let Some(dir) = tls {
            cmd.arg("--tls-cert")
                .arg(dir.join(format!("{name}.pem")))
                .arg("--tls-key")
                .arg(dir.join(format!("{name}.key")))
                .arg("--tls-ca")
                .arg(dir.join("ca.pem"));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| format!("cannot start {}: {err}", exe.display()))?;
        let (stdin, stdout) = match (child.stdin.take(), child.stdout.take()) {
            (Some(stdin), Some(stdout)) => (stdin, stdout),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{name} has no stdin or stdout"));
            }
        };
        let mut node = NodeProcess {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        };
        let mut line = String::new();
        node.stdout
            .read_line(&mut line)
            .map_err(|err| err.to_string())?;
        let addr = line
            .strip_prefix("READY ")
            .and_then(|rest| rest.split_whitespace().nth(1))
            .ok_or_else(|| format!("unexpected first line from {name}: {line:?}"))?
            .to_string();
        Ok((node, addr))
    }

    /// Sends one command line and reads the one-line reply.
    fn ask(&mut self, command: &str) -> Result<String, String> {
        writeln!(self.stdin, "{command}")
            .and_then(|()| self.stdin.flush())
            .map_err(|err| format!("{command}: {err}"))?;
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) => Err(format!("{command}: the node process exited")),
            Ok(_) => Ok(line),
            Err(err) => Err(format!("{command}: {err}")),
        }
    }

    /// Live entries of `table` by the node's `info` (0 before the table exists).
    fn entries(&mut self, table: &str) -> Result<usize, String> {
        let reply = self.ask("info")?;
        let info: Value = serde_json::from_str(&reply)
            .map_err(|err| format!("info: {err} in {:?}", reply.trim_end()))?;
        let tables = info["tables"].as_array().map_or(&[][..], Vec::as_slice);
        Ok(tables
            .iter()
            .find(|t| t["name"] == table)
            .and_then(|t| t["entries"].as_u64())
            .map_or(0, |n| n as usize))
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `lbmkv node` child processes, killed when dropped.
struct ProcessCluster {
    #[allow(dead_code)] // held for their Drop
    nodes: Vec<NodeProcess>,
    addresses: Vec<String>,
}

impl ProcessCluster {
    /// `n` nodes named `bench-a`, `bench-b`, ..., each seeded with the ones
    /// before it, with the certificates of `tls` (a directory written by
    /// `lbmkv certs`) when given. Their names sort before `bench-z`'s, so that
    /// a child sequences.
    fn start(n: usize, tls: Option<&Path>) -> Result<ProcessCluster, String> {
        let mut cluster = ProcessCluster {
            nodes: Vec::new(),
            addresses: Vec::new(),
        };
        for i in 0..n {
            let name = format!("bench-{}", (b'a' + i as u8) as char);
            let (node, addr) = NodeProcess::spawn(&name, &cluster.addresses, tls)?;
            cluster.nodes.push(node);
            cluster.addresses.push(addr);
        }
        Ok(cluster)
    }
}

/// `children` node processes and the bench's own node `bench-z` with the
/// table `bench`, once the view of `bench-z` holds them all.
async fn process_cluster(children: usize) -> Result<(ProcessCluster, Node, Table), String> {
    let cluster = ProcessCluster::start(children, None)?;
    let client = start_node("bench-z", cluster.addresses.clone()).await?;
    wait_members(&client, children + 1).await?;
    let t = client.create_table("bench").await.map_err(e)?;
    Ok((cluster, client, t))
}

/// Time from spawning an `lbmkv node` process seeded with `node` until the
/// process holds all `n` entries of `table`; the process is killed before
/// this returns, and gone from the view of `node`.
async fn join_process(node: &Node, table: &str, n: usize) -> Result<Duration, String> {
    // The name extends the node's, so that it sorts after it: the node keeps
    // sequencing, as a member joining a running cluster finds it.
    let name = format!("{}-joiner-{n}", node.name());
    let seed = vec![node.address().to_string()];
    let table_name = table.to_string();
    let deadline = Duration::from_secs(60) + Duration::from_micros(20 * n as u64);
    let members = node.members().map_err(e)?.len();
    let mut events = node.subscribe();
    // The process's pipes block: this runs off the runtime's workers, which
    // serve the node the process joins.
    let spawned_name = name.clone();
    let (took, joiner) = tokio::task::spawn_blocking(move || {
        let name = spawned_name;
        let started = Instant::now();
        let (mut joiner, _) = NodeProcess::spawn(&name, &seed, None)?;
        loop {
            let have = joiner.entries(&table_name)?;
            if have == n {
                return Ok((started.elapsed(), joiner));
            }
            if started.elapsed() > deadline {
                return Err(format!(
                    "join: {have} of {n} entries arrived in {name} within {deadline:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    })
    .await
    .map_err(|err| err.to_string())??;
    // The node may still be finishing its side of the merge: killing the
    // process before would log that merge as failed. The wait is not timed.
    let merged = async {
        while let Some(event) = events.next().await {
            if let lbmkv::Event::Merged {
                table: t, peer: p, ..
            } = event
            {
                if t == table && p == name {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), merged).await;
    drop(joiner);
    let deadline = Instant::now() + Duration::from_secs(10);
    // The next scenario on `node` would otherwise find a member that is gone.
    while node.members().map_err(e)?.len() > members {
        if Instant::now() > deadline {
            return Err(format!(
                "{} still sees {:?} 10 s after the joined process ended",
                node.name(),
                node.members().map_err(e)?
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(took)
}

async fn local_gets(o: &Sizes) -> Result<Vec<Row>, String> {
    let node = start_node("bench-get", vec![]).await?;
    let t = node.create_table("get").await.map_err(e)?;
    let n = 10_000;
    let batch: Vec<_> = (0..n).map(|i| (key(i), value(i))).collect();
    t.put_many(batch).await.map_err(e)?;
    let gets = o.gets;
    let table = t.clone();
    let elapsed = tokio::task::spawn_blocking(move || {
        let keys: Vec<Vec<u8>> = (0..n).map(key).collect();
        let started = Instant::now();
        let mut found = 0usize;
        for i in 0..gets {
            if let Ok(Some(v)) = table.get(&keys[i % n]) {
                found += v.len();
            }
        }
        std::hint::black_box(found);
        started.elapsed()
    })
    .await
    .map_err(|err| err.to_string())?;
    node.close().await.map_err(e)?;
    let rate = gets as f64 / elapsed.as_secs_f64();
    Ok(vec![Row {
        id: "local_get",
        workload: "local get, 1 client (Rust)".into(),
        result: format!("{} ops/s", si(rate)),
        target: ">= 10M ops/s",
        reference: "671k ops/s",
        ratio: format!("{:.1}x", rate / 671_000.0),
        data: json!({ "ops_per_s": rate }),
    }])
}

#[derive(Clone, Copy)]
struct Latencies {
    p50_us: f64,
    p99_us: f64,
    ops_per_s: f64,
}

fn summarize(mut samples: Vec<Duration>, wall: Duration) -> Latencies {
    samples.sort_unstable();
    let pick = |q: f64| {
        samples
            .get(((samples.len() as f64 * q) as usize).min(samples.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    Latencies {
        p50_us: pick(0.50),
        p99_us: pick(0.99),
        ops_per_s: samples.len() as f64 / wall.as_secs_f64(),
    }
}

#[derive(Clone, Copy)]
enum Op {
    Put,
    Update,
}

/// Makes every run write values that differ from the previous run's, so that no
/// update is a no-op that never reaches the sequencer.
static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

async fn drive(t: &Table, op: Op, clients: usize, ops: usize) -> Result<Latencies, String> {
    let per_client = (ops / clients).max(1);
    let salt = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) * 1_000_000_007;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let k = key(c * 1_000_000 + i % 1000);
                let v = value(salt + i);
                let begun = Instant::now();
                match op {
                    Op::Put => {
                        t.put(&k, &v).await?;
                    }
                    Op::Update => {
                        t.update(&k, |_, _| Some(v.clone())).await?;
                    }
                }
                samples.push(begun.elapsed());
            }
            Ok::<_, lbmkv::Error>(samples)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.map_err(|err| err.to_string())?.map_err(e)?);
    }
    Ok(summarize(all, started.elapsed()))
}

/// Replicated puts on 3 nodes with mutual TLS, as the rows of
/// `write_scenarios` without it (ids `write_tls`).
async fn tls_writes(o: &Sizes) -> Result<Vec<Row>, String> {
    let dir = std::env::temp_dir().join(format!("lbmkv-bench-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    crate::certs::write_quiet(&dir, &["bench-a", "bench-b", "bench-z"])?;
    let result = async {
        let cluster = ProcessCluster::start(2, Some(&dir))?;
        let client = Node::start(Config {
            tls: Some(lbmkv::TlsConfig {
                cert: dir.join("bench-z.pem"),
                key: dir.join("bench-z.key"),
                ca: dir.join("ca.pem"),
            }),
            ..config("bench-z", cluster.addresses.clone())
        })
        .await
        .map_err(e)?;
        wait_members(&client, 3).await?;
        let t = client.create_table("bench").await.map_err(e)?;
        let mut rows = Vec::new();
        for clients in [1, o.clients] {
            let l = drive(&t, Op::Put, clients, o.ops).await?;
            rows.push(Row {
                id: "write_tls",
                workload: format!("3 nodes, TLS: put, {clients} client(s)"),
                result: format!(
                    "p50 {:.0} µs, p99 {:.0} µs, {} ops/s",
                    l.p50_us,
                    l.p99_us,
                    si(l.ops_per_s)
                ),
                target: "",
                reference: "",
                ratio: String::new(),
                data: json!({ "nodes": "3 nodes", "op": "put", "clients": clients, "tls": true,
                    "p50_us": l.p50_us, "p99_us": l.p99_us, "ops_per_s": l.ops_per_s }),
            });
        }
        client.close().await.map_err(e)?;
        drop(cluster);
        Ok(rows)
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Puts and updates with 1 and with `--clients` clients; also returns the put
/// latencies, which the scaling row of the same cluster shows.
async fn write_scenarios(
    o: &Sizes,
    t: &Table,
    nodes: &'static str,
) -> Result<(Vec<Row>, (Latencies, Latencies)), String> {
    let puts = (
        drive(t, Op::Put, 1, o.ops).await?,
        drive(t, Op::Put, o.clients, o.ops).await?,
    );
    let updates = (
        drive(t, Op::Update, 1, o.ops).await?,
        drive(t, Op::Update, o.clients, o.ops).await?,
    );
    let mut rows = Vec::new();
    for (op_name, (one, many)) in [("put", puts), ("update", updates)] {
        for (clients, l) in [(1, one), (o.clients, many)] {
            let (target, reference, ratio) = match (nodes, op_name, clients) {
                ("3 nodes", "put", 1) => (
                    "p50 <= 40 µs, p99 <= 100 µs",
                    "p50 283 µs, 3.1k ops/s",
                    format!("{:.1}x faster p50", 283.0 / l.p50_us),
                ),
                ("3 nodes", "put", c) if c > 1 => (
                    ">= 100k ops/s",
                    "7.1k ops/s with 8",
                    format!("{:.1}x", l.ops_per_s / 7_100.0),
                ),
                _ => ("", "", String::new()),
            };
            rows.push(Row {
                id: "write",
                workload: format!("{nodes}: {op_name}, {clients} client(s)"),
                result: format!(
                    "p50 {:.0} µs, p99 {:.0} µs, {} ops/s",
                    l.p50_us,
                    l.p99_us,
                    si(l.ops_per_s)
                ),
                target,
                reference,
                ratio,
                data: json!({ "nodes": nodes, "op": op_name, "clients": clients,
                    "p50_us": l.p50_us, "p99_us": l.p99_us, "ops_per_s": l.ops_per_s }),
            });
        }
    }
    Ok((rows, puts))
}

/// Puts on the bench's node and `children` node processes (id `scale_write`).
async fn scale_write(o: &Sizes, children: usize) -> Result<Row, String> {
    let (cluster, client, t) = process_cluster(children).await?;
    let one = drive(&t, Op::Put, 1, o.ops).await?;
    let many = drive(&t, Op::Put, o.clients, o.ops).await?;
    client.close().await.map_err(e)?;
    drop(cluster);
    Ok(scale_write_row(children + 1, o.clients, &one, &many))
}

/// A `scale_write` row: latencies of one client (`one`), throughput of
/// `clients` (`many`).
fn scale_write_row(nodes: usize, clients: usize, one: &Latencies, many: &Latencies) -> Row {
    Row {
        id: "scale_write",
        workload: format!("scaling, {nodes} nodes: put, 1 / {clients} clients"),
        result: format!(
            "p50 {:.0} µs, p99 {:.0} µs; {} ops/s with {clients}",
            one.p50_us,
            one.p99_us,
            si(many.ops_per_s)
        ),
        target: "",
        reference: "",
        ratio: String::new(),
        data: json!({ "nodes": nodes, "op": "put", "clients": clients,
            "p50_us": one.p50_us, "p99_us": one.p99_us, "latency_clients": 1,
            "ops_per_s": many.ops_per_s }),
    }
}

/// Joins of a node process into a node holding each of the scaling sizes
/// (id `scale_join`); the node's table grows from one size to the next.
async fn scale_joins(o: &Sizes) -> Result<Vec<Row>, String> {
    let node = start_node("bench-grow", vec![]).await?;
    let t = node.create_table("grow").await.map_err(e)?;
    let mut rows = Vec::new();
    let mut filled = 0;
    for &n in &o.join_sizes {
        progress(&format!("join of a node process, {n} entries"));
        fill(&t, filled..n).await?;
        filled = n;
        let took = join_process(&node, "grow", n).await?;
        rows.push(Row {
            id: "scale_join",
            workload: format!("scaling, join of a node process, {n} entries"),
            result: format!("{:.3} s", took.as_secs_f64()),
            target: "",
            reference: "",
            ratio: String::new(),
            data: json!({ "entries": n, "seconds": took.as_secs_f64() }),
        });
    }
    node.close().await.map_err(e)?;
    Ok(rows)
}

/// Writes the bench's entries `range` into `t`, 10,000 a batch.
async fn fill(t: &Table, range: std::ops::Range<usize>) -> Result<(), String> {
    let mut next = range.start;
    while next < range.end {
        let end = (next + 10_000).min(range.end);
        let batch: Vec<_> = (next..end).map(|i| (key(i), value(i))).collect();
        t.put_many(batch).await.map_err(e)?;
        next = end;
    }
    Ok(())
}

async fn hot_key(o: &Sizes, t: &Table) -> Result<Row, String> {
    let clients = 8;
    let per_client = (o.ops / 4 / clients).max(10);
    t.delete(b"hot").await.map_err(e)?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let begun = Instant::now();
                t.update(b"hot", |_, v| {
                    let n: u64 = v
                        .and_then(|b| std::str::from_utf8(b).ok())
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    Some((n + 1).to_string().into_bytes())
                })
                .await?;
                samples.push(begun.elapsed());
            }
            Ok::<_, lbmkv::Error>(samples)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.map_err(|err| err.to_string())?.map_err(e)?);
    }
    let l = summarize(all, started.elapsed());
    let expected = (clients * per_client) as u64;
    let got: u64 = t
        .get(b"hot")
        .map_err(e)?
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if got != expected {
        return Err(format!(
            "hot key: {got} increments counted, {expected} made"
        ));
    }
    Ok(Row {
        id: "hot_key",
        workload: format!("3 nodes: update of one hot key, {clients} clients"),
        result: format!(
            "p50 {:.0} µs, p99 {:.2} ms, {expected}/{expected} increments",
            l.p50_us,
            l.p99_us / 1000.0
        ),
        target: "p99 <= 2 ms, none lost",
        reference: "p99 35 ms",
        ratio: format!("{:.1}x faster p99", 35_000.0 / l.p99_us),
        data: json!({ "p50_us": l.p50_us, "p99_us": l.p99_us, "increments": expected, "lost": 0 }),
    })
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

/// Single-node `put` throughput with 0, 1 and 10 watches open (each
/// consumed by a task of its own).
async fn watch_cost(o: &Sizes, t: &lbmkv::Table) -> Result<Row, String> {
    let ops = (o.ops * 5).max(10_000);
    // On a runtime worker, as the clients of the write scenarios run (the
    // thread that blocks on the bench wakes up slower); the keys exist before
    // the first pass, so that every pass replaces as many entries.
    let puts = |t: lbmkv::Table| async move {
        let started = Instant::now();
        for i in 0..ops {
            t.put(&key(i), &value(i)).await?;
        }
        Ok::<_, lbmkv::Error>(started.elapsed())
    };
    let on_worker = |t: &lbmkv::Table| tokio::spawn(puts(t.clone()));
    on_worker(t)
        .await
        .map_err(|err| err.to_string())?
        .map_err(e)?;
    let mut rates = Vec::new();
    for watchers in [0usize, 1, 10] {
        let mut tasks = Vec::new();
        for _ in 0..watchers {
            let mut w = t.watch(b"").map_err(e)?;
            tasks.push(tokio::spawn(
                async move { while w.next().await.is_some() {} },
            ));
        }
        let took = on_worker(t)
            .await
            .map_err(|err| err.to_string())?
            .map_err(e)?;
        rates.push(ops as f64 / took.as_secs_f64());
        for task in tasks {
            task.abort();
        }
    }
    let k = |r: f64| format!("{:.0}k", r / 1000.0);
    Ok(Row {
        id: "watch_cost",
        workload: "single node put with 0 / 1 / 10 watches open".into(),
        result: format!("{} / {} / {} ops/s", k(rates[0]), k(rates[1]), k(rates[2])),
        target: "",
        reference: "",
        ratio: format!("{:.2}x with 10", rates[2] / rates[0]),
        data: json!({ "ops": ops, "watchers_0": rates[0], "watchers_1": rates[1], "watchers_10": rates[2] }),
    })
}

/// A join row: `n` entries in `took`, against lbm_kv's join of 1M entries
/// (`reference`, `lbm_kv_s` seconds; scaled to `n`).
fn join_row(
    (id, workload): (&'static str, String),
    n: usize,
    took: Duration,
    (reference, lbm_kv_s): (&'static str, f64),
) -> Row {
    Row {
        id,
        workload,
        result: format!("{:.3} s", took.as_secs_f64()),
        target: "<= 0.5 s (1M)",
        reference,
        ratio: format!("{:.1}x", lbm_kv_s * (n as f64 / 1e6) / took.as_secs_f64()),
        data: json!({ "entries": n, "seconds": took.as_secs_f64() }),
    }
}

/// Keys of lbm_kv's heal measurement.
const LBM_KV_HEAL_KEYS: usize = 120_000;

/// Memory per entry, the joins of a node process (when `process_join`) and of
/// an in-process node, and the heal after a split, all on one table of `n`
/// entries.
async fn join_heal_memory(n: usize, process_join: bool) -> Result<Vec<Row>, String> {
    let a = start_node("bench-join-a", vec![]).await?;
    let ta = a.create_table("big").await.map_err(e)?;
    let before = rss_bytes();
    fill(&ta, 0..n).await?;
    let per_entry = rss_bytes().saturating_sub(before) as f64 / n as f64;
    let mut rows = vec![Row {
        id: "memory",
        workload: format!("memory per entry, {n} entries"),
        result: format!("{per_entry:.0} B"),
        target: "<= 160 B (1M)",
        reference: "376 B",
        ratio: format!("{:.1}x smaller", 376.0 / per_entry),
        data: json!({ "entries": n, "bytes_per_entry": per_entry }),
    }];

    if process_join {
        // Before the in-process join, so that the process joins a node alone,
        // and gone before the split, which it would otherwise bridge.
        let took = join_process(&a, "big", n).await?;
        let workload = format!("join of a node process, {n} entries");
        rows.push(join_row(
            ("join_process", workload),
            n,
            took,
            ("2.2 s (1M)", 2.2),
        ));
    }

    let join_started = Instant::now();
    let b = start_node("bench-join-b", vec![a.address().to_string()]).await?;
    let tb = b.create_table("big").await.map_err(e)?;
    let join = join_started.elapsed();
    let have = tb.len().map_err(e)?;
    if have != n {
        return Err(format!("join: {have} of {n} entries arrived"));
    }
    let workload = format!("join, {n} entries");
    rows.push(join_row(("join", workload), n, join, ("2.1 s (1M)", 2.1)));

    a.disconnect(b.name()).await.map_err(e)?;
    b.disconnect(a.name()).await.map_err(e)?;
    while a.members().map_err(e)?.len() > 1 || b.members().map_err(e)?.len() > 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let differing = n / 100;
    let step = 100;
    for chunk in (0..differing).collect::<Vec<_>>().chunks(10_000) {
        let batch: Vec<_> = chunk
            .iter()
            .map(|&i| (key(i * step), value(i + 7)))
            .collect();
        tb.put_many(batch).await.map_err(e)?;
    }
    let bytes_before =
        a.info().map_err(e)?.merge_bytes_sent + b.info().map_err(e)?.merge_bytes_sent;
    // A writer keeps writing during the heal, to see how long writes wait.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (ta, stop) = (ta.clone(), stop.clone());
        tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let begun = Instant::now();
                let _ = ta.put(format!("during-heal-{i}").as_bytes(), b"x").await;
                worst = worst.max(begun.elapsed());
                i += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            worst
        })
    };
    let heal_started = Instant::now();
    let _ = a.connect(b.address()).await;
    b.connect(a.address()).await.map_err(e)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let da = ta.stats().map_err(e)?.digest;
        let db = tb.stats().map_err(e)?.digest;
        if da == db && a.members().map_err(e)?.len() == 2 {
            break;
        }
        if Instant::now() > deadline {
            return Err("heal: replicas did not converge within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let heal = heal_started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let worst = writer.await.map_err(|err| err.to_string())?;
    let bytes = a.info().map_err(e)?.merge_bytes_sent + b.info().map_err(e)?.merge_bytes_sent
        - bytes_before;
    let table_bytes = (n * (16 + VALUE_SIZE)) as u64;
    rows.push(Row {
        id: "heal",
        workload: format!("heal after a split, {n} keys, 1% differing"),
        result: format!(
            "{:.3} s, {} sent ({:.1}% of the table), writes waited at most {:.0} ms",
            heal.as_secs_f64(),
            bytes_si(bytes),
            bytes as f64 * 100.0 / table_bytes as f64,
            worst.as_secs_f64() * 1000.0
        ),
        target: if n == LBM_KV_HEAL_KEYS {
            "<= 0.2 s (120k keys)"
        } else {
            "<= 0.3 s (1M), writes wait <= 20 ms"
        },
        reference: if n == LBM_KV_HEAL_KEYS {
            "7.6-10.6 s (120k keys)"
        } else {
            ""
        },
        ratio: if n == LBM_KV_HEAL_KEYS {
            format!("{:.0}x faster", 7.6 / heal.as_secs_f64())
        } else {
            String::new()
        },
        data: json!({ "entries": n, "differing": differing, "seconds": heal.as_secs_f64(),
            "bytes": bytes, "table_bytes": table_bytes, "max_write_wait_ms": worst.as_secs_f64() * 1000.0 }),
    });
    a.close().await.map_err(e)?;
    b.close().await.map_err(e)?;
    Ok(rows)
}

fn si(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn bytes_si(b: u64) -> String {
    let b = b as f64;
    if b >= 1048576.0 {
        format!("{:.1} MiB", b / 1048576.0)
    } else {
        format!("{:.1} KiB", b / 1024.0)
    }
}

/// The document of `--json` and `--json-out`.
fn json_document(rows: &[Row]) -> Value {
    let results: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({ "id": r.id, "workload": r.workload, "result": r.result,
            "target": r.target, "lbm_kv": r.reference, "ratio": r.ratio, "data": r.data })
        })
        .collect();
    json!({ "lbmkv": lbmkv::VERSION, "value_bytes": VALUE_SIZE, "results": results })
}

fn report(o: &Sizes, rows: &[Row]) {
    if o.json {
        println!("{}", json_document(rows));
        return;
    }
    let w0 = rows
        .iter()
        .map(|r| r.workload.chars().count())
        .max()
        .unwrap_or(8)
        .max(8);
    let w1 = rows
        .iter()
        .map(|r| r.result.chars().count())
        .max()
        .unwrap_or(6)
        .max(6);
    let w2 = rows
        .iter()
        .map(|r| r.target.chars().count())
        .max()
        .unwrap_or(6)
        .max(6);
    let w3 = rows
        .iter()
        .map(|r| r.reference.chars().count())
        .max()
        .unwrap_or(6)
        .max(6);
    let line = |a: &str, b: &str, c: &str, d: &str, f: &str| {
        println!("{a:<w0$}  {b:<w1$}  {c:<w2$}  {d:<w3$}  {f}");
    };
    line("workload", "lbmkv", "target", "lbm_kv", "lbmkv vs lbm_kv");
    for r in rows {
        line(&r.workload, &r.result, r.target, r.reference, &r.ratio);
    }
    println!();
    println!(
        "Loopback TCP, {VALUE_SIZE}-byte values, 16-byte keys. lbm_kv figures: the Erlang library measured on this machine kind on the same workloads."
    );
}
