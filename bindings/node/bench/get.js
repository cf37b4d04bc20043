'use strict'
// Local get throughput from Node.js: 1,000,000 gets of a 16-byte key with a
// 100-byte value (SPEC section 6). Prints one line of JSON.
const { Node } = require('..')

async function main() {
  const n = Number(process.env.LBMKV_BENCH_GETS || 1_000_000)
  const node = await Node.start({ name: 'bench', cookie: 'bench' })
  try {
    const t = await node.createTable('bench')
    const keys = []
    for (let i = 0; i < 1000; i++) keys.push(`key-${String(i).padStart(12, '0')}`) // 16 bytes
    const value = Buffer.alloc(100, 'v')
    await t.putMany(keys.map((k) => [k, value]))
    const bufKeys = keys.map((k) => Buffer.from(k))
    const results = {}
    for (const [label, ks] of [['string key', keys], ['Buffer key', bufKeys]]) {
      let bytes = 0
      for (let i = 0; i < 100_000; i++) bytes += t.get(ks[i % 1000]).length // warm up
      const start = process.hrtime.bigint()
      for (let i = 0; i < n; i++) bytes += t.get(ks[i % 1000]).length
      const ns = Number(process.hrtime.bigint() - start)
      if (bytes === 0) throw new Error('no value read')
      results[label] = { calls: n, seconds: ns / 1e9, callsPerSecond: Math.round(n / (ns / 1e9)), nsPerCall: ns / n }
    }
    console.log(JSON.stringify({ bench: 'node local get', keyBytes: 16, valueBytes: 100, results }))
  } finally {
    await node.close()
  }
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
