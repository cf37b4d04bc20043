'use strict'
// Replicated put throughput from Node.js, next to `lbmkv bench`'s Rust rows.
//
// The cluster has the shape of `lbmkv bench`'s "3 nodes" rows: this process's
// node `bench-z` and two `lbmkv node` processes, `bench-a` and `bench-b`, on
// loopback with cookie `lbmkv-bench`; 16-byte keys, 100-byte values, each caller
// writing 1,000 distinct keys round-robin. 1 and 16 callers, each a chain of
// puts that awaits one before the next.
//
// node bench/put.js [--ops N] [--json] [--rust-json FILE] [--lbmkv PATH]
//   --ops N          puts per row (default $LBMKV_BENCH_OPS, else 20000, as lbmkv bench)
//   --json           one line of JSON on stdout
//   --rust-json FILE the output of `lbmkv bench --json`: each row then gives its
//                    ratio to Rust's ops/s with as many callers
//   --lbmkv PATH     the lbmkv command (default $LBMKV_BIN, else target/release/lbmkv)
const { spawn } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')
const { Node } = require('..')

const COOKIE = 'lbmkv-bench'
const VALUE_SIZE = 100
const CALLERS = [1, 16]
const WITHIN = 1.5
// Bounds every wait outside the measured puts (those have lbmkv's request timeout).
const STEP_TIMEOUT_MS = 10_000
const REPO = path.resolve(__dirname, '..', '..', '..')

function parseArgs(argv) {
  const args = {
    ops: Number(process.env.LBMKV_BENCH_OPS || 20_000),
    json: false,
    rustJson: null,
    lbmkv: process.env.LBMKV_BIN || path.join(REPO, 'target', 'release', 'lbmkv'),
  }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`)
      return argv[++i]
    }
    if (a === '--ops') args.ops = Number(next())
    else if (a === '--json') args.json = true
    else if (a === '--rust-json') args.rustJson = next()
    else if (a === '--lbmkv') args.lbmkv = next()
    else throw new Error(`unknown argument ${a}`)
  }
  if (!Number.isInteger(args.ops) || args.ops < 1) throw new Error('--ops needs a whole number of at least 1')
  return args
}

const key = (i) => `key-${String(i).padStart(12, '0')}`

function value(i) {
  const v = Buffer.alloc(VALUE_SIZE, 'v')
  v.write(String(i).padStart(16, '0'))
  return v
}

// The same picks as lbmkv bench, so that the percentiles compare.
function summarize(samplesNs, wallNs) {
  const s = Float64Array.from(samplesNs).sort()
  const pick = (q) => (s.length ? s[Math.min(Math.floor(s.length * q), s.length - 1)] / 1e3 : 0)
  return { p50_us: pick(0.5), p99_us: pick(0.99), ops_per_s: s.length / (wallNs / 1e9) }
}

function withTimeout(promise, what) {
  let timer
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${STEP_TIMEOUT_MS} ms`)), STEP_TIMEOUT_MS)
  })
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer))
}

// `bench-a` and `bench-b` as `lbmkv node` processes. Their stdin stays an open
// pipe: a node ends at the end of its stdin, so they go even when this process
// dies without killing them.
const children = []

function killChildren() {
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL')
    c.stdin.destroy()
  }
}

process.on('exit', killChildren)
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    killChildren()
    process.exit(128 + (sig === 'SIGINT' ? 2 : 15))
  })
}

function startChild(exe, name, seeds) {
  const args = ['node', '--name', name, '--listen', '127.0.0.1:0', '--cookie', COOKIE]
  for (const s of seeds) args.push('--seed', s)
  const child = spawn(exe, args, { stdio: ['pipe', 'pipe', 'ignore'] })
  children.push(child)
  const ready = new Promise((resolve, reject) => {
    let out = ''
    child.on('error', (err) => reject(new Error(`cannot start ${exe}: ${err.message}`)))
    child.on('exit', (code) => reject(new Error(`${name} exited (status ${code}) before READY: ${JSON.stringify(out)}`)))
    child.stdout.on('data', (chunk) => {
      out += chunk
      const nl = out.indexOf('\n')
      if (nl < 0) return
      const parts = out.slice(0, nl).trim().split(' ')
      if (parts.length !== 3 || parts[0] !== 'READY') reject(new Error(`unexpected first line from ${name}: ${JSON.stringify(out.slice(0, nl))}`))
      else resolve(parts[2])
      // Nothing else is read: the node writes nothing more without commands.
      child.stdout.removeAllListeners('data')
      child.stdout.destroy()
    })
  })
  return withTimeout(ready, `READY from ${name}`)
}

// The first write may meet a sequencer that is still settling.
async function settle(t) {
  const deadline = Date.now() + STEP_TIMEOUT_MS
  for (;;) {
    try {
      await t.put('warm-up', 'x')
      return
    } catch (err) {
      if (err.code !== 'UNAVAILABLE' || Date.now() > deadline) throw err
      await new Promise((r) => setTimeout(r, 50))
    }
  }
}

// Values differ from one run to the next, as in lbmkv bench, so that no put
// repeats the value already stored.
let run = 0

async function drive(t, callers, ops) {
  const perCaller = Math.max(Math.floor(ops / callers), 1)
  const salt = ++run * 1_000_000_007
  const samples = []
  const caller = async (c) => {
    const keys = []
    for (let i = 0; i < 1000; i++) keys.push(Buffer.from(key(c * 1_000_000 + i)))
    for (let i = 0; i < perCaller; i++) {
      const v = value(salt + i)
      const begun = process.hrtime.bigint()
      await t.put(keys[i % 1000], v)
      samples.push(Number(process.hrtime.bigint() - begun))
    }
  }
  const started = process.hrtime.bigint()
  const chains = []
  for (let c = 0; c < callers; c++) chains.push(caller(c))
  await Promise.all(chains)
  return summarize(samples, Number(process.hrtime.bigint() - started))
}

function rustRates(file) {
  const doc = JSON.parse(fs.readFileSync(file, 'utf8'))
  const rates = new Map()
  for (const row of doc.results || []) {
    const d = row.data || {}
    if (row.id === 'write' && d.nodes === '3 nodes' && d.op === 'put') rates.set(Number(d.clients), Number(d.ops_per_s))
  }
  return rates
}

function si(x) {
  if (x >= 1e6) return `${(x / 1e6).toFixed(1)}M`
  if (x >= 1e3) return `${(x / 1e3).toFixed(1)}k`
  return x.toFixed(0)
}

async function main() {
  const args = parseArgs(process.argv.slice(2))
  const rust = args.rustJson ? rustRates(args.rustJson) : new Map()
  console.error('node put: starting bench-a and bench-b')
  const a = await startChild(args.lbmkv, 'bench-a', [])
  const b = await startChild(args.lbmkv, 'bench-b', [a])
  const node = await withTimeout(Node.start({ name: 'bench-z', seeds: [a, b], cookie: COOKIE }), 'start of bench-z')
  const results = []
  try {
    await node.waitForMembers(3, STEP_TIMEOUT_MS)
    const t = await withTimeout(node.createTable('bench'), 'create table bench')
    await settle(t)
    for (let i = 0; i < 1000; i++) await t.put(key(900_000_000 + (i % 10)), value(i)) // warm up the JIT
    for (const callers of CALLERS) {
      console.error(`node put: ${callers} caller(s)`)
      results.push({ mode: 'promises', callers, ...(await drive(t, callers, args.ops)) })
    }
  } finally {
    await withTimeout(node.close(), 'close of bench-z').catch((err) => console.error(err.message))
    killChildren()
  }
  for (const r of results) {
    const rustOps = rust.get(r.callers)
    r.rust_ops_per_s = rustOps ?? null
    r.ratio = rustOps ? r.ops_per_s / rustOps : null
    r.within_1_5x = r.ratio === null ? null : r.ratio >= 1 / WITHIN
  }
  if (args.json) {
    console.log(JSON.stringify({ bench: 'node put', nodes: '3 nodes', op: 'put', value_bytes: VALUE_SIZE,
      ops: args.ops, rust_json: args.rustJson, results }))
    return
  }
  console.log(`node put, 3 nodes, ${VALUE_SIZE}-byte values, ${args.ops} puts per row`)
  for (const r of results) {
    let line = `  ${r.mode} ${String(r.callers).padStart(2)} caller(s): p50 ${r.p50_us.toFixed(0).padStart(5)} µs, ` +
      `p99 ${r.p99_us.toFixed(0).padStart(6)} µs, ${si(r.ops_per_s).padStart(6)} ops/s`
    if (r.ratio !== null) {
      const verdict = r.within_1_5x ? `within ${WITHIN}x` : `NOT within ${WITHIN}x (${(1 / r.ratio).toFixed(1)}x slower)`
      line += `  ${r.ratio.toFixed(2)}x Rust (${si(r.rust_ops_per_s)} ops/s): ${verdict}`
    } else if (args.rustJson) {
      line += `  (no Rust row with ${r.callers} client(s))`
    }
    console.log(line)
  }
}

main().catch((e) => {
  console.error(e)
  // A node still starting would keep the event loop alive.
  process.exit(1)
})
