'use strict'
// node.metrics() (Prometheus text) and the operational fields of node.info().
const test = require('node:test')
const assert = require('node:assert/strict')

const lbmkv = require('..')
const { start, waitFor } = require('./helpers')

/** The samples of a Prometheus text exposition; fails on a malformed line. */
function parse(text) {
  const samples = new Map()
  for (const line of text.split('\n')) {
    if (line === '') continue
    if (line.startsWith('#')) {
      assert.match(line, /^# (HELP|TYPE) /)
      continue
    }
    const at = line.lastIndexOf(' ')
    const value = Number(line.slice(at + 1))
    assert.ok(!Number.isNaN(value), line)
    samples.set(line.slice(0, at), value)
  }
  return samples
}

test('metrics count writes, strong reads, members and tables', async (t) => {
  const a = await start(t, 'ma')
  const b = await start(t, 'mb', { seeds: [a.address], minMembers: 2 })
  const tab = await a.createTable('m')
  await tab.put('k1', 'v')
  await tab.put('k2', 'v')
  await tab.delete('k2')
  assert.strictEqual((await tab.get('k1', { strong: true })).toString(), 'v')
  const text = a.metrics()
  assert.strictEqual(typeof text, 'string')
  const m = parse(text)
  assert.strictEqual(m.get('lbmkv_members'), 2)
  assert.strictEqual(m.get('lbmkv_writes_total'), 3)
  assert.strictEqual(m.get('lbmkv_write_duration_seconds_count'), 3)
  assert.strictEqual(m.get('lbmkv_write_duration_seconds_bucket{le="+Inf"}'), 3)
  assert.strictEqual(m.get('lbmkv_strong_reads_total'), 1)
  assert.strictEqual(m.get('lbmkv_table_entries{table="m"}'), 1)
  assert.strictEqual(m.get('lbmkv_table_tombstones{table="m"}'), 1)
  const seq = a.info().sequencer
  assert.ok(seq)
  assert.strictEqual(m.get(`lbmkv_table_sequencer{table="m",sequencer="${seq}"}`), 1)
  await waitFor('the replica on b', () => parse(b.metrics()).get('lbmkv_table_entries{table="m"}') === 1)
})

test('info has the version, uptime, peers and each table\'s sequencer', async (t) => {
  const a = await start(t, 'ia')
  const b = await start(t, 'ib', { seeds: [a.address], minMembers: 2 })
  await a.createTable('t')
  const info = a.info()
  assert.strictEqual(info.version, lbmkv.version())
  assert.strictEqual(typeof info.uptimeMs, 'number')
  assert.deepStrictEqual(
    info.peers.map((p) => [p.name, p.address]),
    [['ib', b.address]]
  )
  assert.strictEqual(typeof info.peers[0].connectedMs, 'number')
  assert.ok(info.sequencer)
  assert.strictEqual(info.tables[0].sequencer, info.sequencer)
  assert.strictEqual(typeof info.sendQueueBytes, 'number')
})

test('metrics of a closed node throw with code CLOSED', async (t) => {
  const n = await start(t, 'mc')
  await n.close()
  assert.throws(() => n.metrics(), { code: 'CLOSED' })
})
