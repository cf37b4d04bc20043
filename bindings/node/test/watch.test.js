'use strict'
// Watches (change feeds) and expiring keys on two nodes: the scenario of the C
// and Python tests (write, replicated, delete, expiry, merge after a split, lag,
// close) and ttls that expire everywhere unless refreshed.
const test = require('node:test')
const assert = require('node:assert/strict')
const { EventEmitter } = require('node:events')

const { Watch } = require('..')
const { start, waitFor, throwsWith, rejectsWith } = require('./helpers')

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

/** Two connected nodes whose table `name` follows one sequencer; its name. */
async function pair(t, prefix, name) {
  const a = await start(t, `${prefix}-1`)
  const b = await start(t, `${prefix}-2`, { seeds: [a.address] })
  await waitFor('a two-node view', () => a.members().length === 2 && b.members().length === 2)
  const ta = await a.createTable(name)
  const tb = await b.createTable(name)
  const seqOf = (n) => n.info().tables.find((x) => x.name === name)?.sequencer ?? null
  await waitFor('one sequencer', () => seqOf(a) !== null && seqOf(a) === seqOf(b))
  return { a, b, ta, tb, seq: seqOf(a) }
}

/** Takes items of `w` until a change of `key` with `cause` (10 s at most). */
async function seen(w, key, cause) {
  const deadline = Date.now() + 10000
  while (Date.now() < deadline) {
    const item = await w.next(200)
    if (item && item.type === 'change' && item.key.toString() === key && item.cause === cause) return item
  }
  throw new Error(`no change of ${key} with the cause ${cause}`)
}

test('a watch on two nodes: writes, deletes, expiry, merge, lag and close', async (t) => {
  const { a, b, ta, tb, seq } = await pair(t, 'w', 'w')
  const wa = ta.watch()
  const wb = tb.watch('k')
  assert.ok(wa instanceof Watch && wa instanceof EventEmitter)
  assert.strictEqual(await wb.next(10), null)

  await tb.put('k1', 'v1')
  await tb.put('other', 'x')
  await ta.delete('k1')
  for (const [w, node] of [[wa, a], [wb, b]]) {
    const c = await w.next(5000)
    assert.strictEqual(c.type, 'change')
    assert.ok(Buffer.isBuffer(c.key) && c.key.toString() === 'k1')
    assert.strictEqual(c.value.toString(), 'v1')
    assert.strictEqual(c.prev, null)
    assert.strictEqual(c.table, 'w')
    assert.strictEqual(c.node, seq)
    assert.strictEqual(c.cause, node.name === seq ? 'write' : 'replicated')
  }
  assert.strictEqual((await wa.next(5000)).key.toString(), 'other')
  const gone = await wb.next(5000) // "other" is not under b's prefix
  assert.strictEqual(gone.key.toString(), 'k1')
  assert.strictEqual(gone.value, null)
  assert.strictEqual(gone.prev.toString(), 'v1')

  // An expiring key: its ttl, then its delete on both nodes, cause expiry.
  await tb.put('k-exp', 'soon', { ttl: 300 })
  const left = ta.ttl('k-exp')
  assert.ok(left > 0 && left <= 300, `ttl ${left}`)
  assert.strictEqual(ta.ttl('absent'), null)
  assert.strictEqual(ta.ttl('other'), null)
  for (const w of [wa, wb]) {
    const c = await seen(w, 'k-exp', 'expiry')
    assert.strictEqual(c.value, null)
    assert.strictEqual(c.prev.toString(), 'soon')
  }
  assert.ok(!ta.has('k-exp') && !tb.has('k-exp'))

  // A split: a write on a's side reaches b by the merge of the heal.
  await a.disconnect(b.name)
  await b.disconnect(a.name)
  await waitFor('the split', () => a.members().length === 1 && b.members().length === 1)
  await ta.put('k-split', 'a')
  await a.connect(b.address).catch(() => {})
  await b.connect(a.address)
  await waitFor('the healed view', () => a.members().length === 2 && b.members().length === 2)
  assert.strictEqual((await seen(wb, 'k-split', 'merge')).value.toString(), 'a')

  // A slow consumer with a buffer of 2 learns how many changes it missed.
  const slow = ta.watch('s', { buffer: 2 })
  for (let i = 0; i < 5; i++) await ta.put(`s${i}`, 'v')
  const items = []
  for (let item; (item = await slow.next(500)) !== null; ) items.push(item)
  assert.deepStrictEqual(items.map((i) => i.type), ['change', 'change', 'lagged'])
  assert.strictEqual(items[2].count, 3)
  let ended = false
  slow.on('end', () => { ended = true })
  slow.close()
  assert.strictEqual(await slow.next(1000), undefined)
  assert.ok(ended)
  for await (const item of slow) assert.fail(`a closed watch yields ${item.type}`)

  // Closing the node ends its watches after what they buffered.
  const drained = (async () => {
    let n = 0
    for await (const _ of wa) n++
    return n
  })()
  await a.close()
  assert.ok((await drained) > 0)
  assert.strictEqual(await wa.next(10), undefined)
  wb.close()
})

test('change events, utf8, AbortSignal, leaving a loop closes, bad arguments', async (t) => {
  const n = await start(t, 'events')
  const table = await n.createTable('t')
  const w = table.watch('', { encoding: 'utf8' })
  const got = []
  const ended = new Promise((resolve) => w.on('end', resolve))
  w.on('change', (c) => got.push(c))
  await table.put('a', '1')
  await table.delete('a')
  await waitFor('two change events', () => got.length === 2)
  assert.deepStrictEqual(got[0], { type: 'change', table: 't', key: 'a', value: '1', prev: null, cause: 'write', node: 'events' })
  assert.deepStrictEqual(got[1], { type: 'change', table: 't', key: 'a', value: null, prev: '1', cause: 'write', node: 'events' })
  w.close()
  await ended

  // An AbortSignal closes the watch; a break closes it too.
  const ac = new AbortController()
  const ws = table.watch('x', { signal: ac.signal })
  const loop = (async () => {
    const seenKeys = []
    for await (const c of ws) seenKeys.push(c.key.toString())
    return seenKeys
  })()
  await table.put('x1', 'v')
  await sleep(50)
  ac.abort()
  assert.deepStrictEqual(await loop, ['x1'])
  const wbreak = table.watch()
  await table.put('y', 'v')
  for await (const c of wbreak) {
    assert.strictEqual(c.key.toString(), 'y')
    break
  }
  assert.strictEqual(await wbreak.next(10), undefined)

  throwsWith(assert, () => table.watch('', { buffer: 0 }), 'INVALID_ARGUMENT')
  throwsWith(assert, () => table.watch(42), 'INVALID_ARGUMENT')
  await rejectsWith(assert, () => table.put('k', 'v', { ttl: 0 }), 'INVALID_ARGUMENT')
  await rejectsWith(assert, () => table.put('k', 'v', { ttl: -5 }), 'INVALID_ARGUMENT')
  await rejectsWith(assert, () => table.put('k', 'v', { ttl: '1' }), 'INVALID_ARGUMENT')
  assert.ok(!table.has('k'))
})

test('ttl keys expire on both nodes unless refreshed', async (t) => {
  const { ta, tb } = await pair(t, 'ttl', 'ttl')
  await ta.put('plain', 'p')
  await ta.put('gone', 'g', { ttl: 400 })
  assert.deepStrictEqual(await ta.putMany({ m1: '1', m2: '2' }, { ttl: 400 }), [])
  assert.deepStrictEqual(await ta.update('u', () => '1', { ttl: 400, encoding: 'utf8' }), [null, '1'])
  await ta.put('kept', 'k', { ttl: 600 })
  await ta.put('perm', 'x', { ttl: 400 })
  await ta.put('perm', 'x') // a write without a ttl makes it permanent
  assert.strictEqual(ta.ttl('perm'), null)
  const left = tb.ttl('kept')
  assert.ok(left > 300 && left <= 600, `ttl ${left}`)
  // Refresh "kept" past the others' deadlines.
  const until = Date.now() + 1500
  while (Date.now() < until) {
    await tb.update('kept', (k, v) => v, { ttl: 600 })
    await sleep(100)
  }
  const entries = (tbl) => tbl.match('*', '*', { encoding: 'utf8' })
  for (const tbl of [ta, tb]) {
    await waitFor('the expiries', () => !['gone', 'm1', 'm2', 'u'].some((k) => tbl.has(k)), 5000)
    assert.deepStrictEqual(entries(tbl), [['kept', 'k'], ['perm', 'x'], ['plain', 'p']])
  }
  await waitFor('the expiry of kept', () => !ta.has('kept') && !tb.has('kept'), 5000)
  assert.deepStrictEqual(entries(ta), [['perm', 'x'], ['plain', 'p']])
  await waitFor("b's entries", () => JSON.stringify(entries(tb)) === '[["perm","x"],["plain","p"]]', 5000)
})
