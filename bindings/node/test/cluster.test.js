'use strict'
// Clusters of nodes in this process: replication, events, netsplits and merges.
const test = require('node:test')
const assert = require('node:assert/strict')

const { start, waitFor, strPairs, freePort } = require('./helpers')

/** Two connected nodes, `a` and `b`. */
async function pair(t, extraA, extraB) {
  const a = await start(t, 'a', extraA)
  const b = await start(t, 'b', { seeds: [a.address], ...extraB })
  await waitFor('a two-node view', () => a.members().length === 2 && b.members().length === 2)
  return { a, b }
}

/** Cuts `a` and `b` apart: each refuses the other until it connects again. */
async function split(a, b) {
  await a.disconnect(b.name)
  await b.disconnect(a.name)
  await waitFor('the split', () => a.members().length === 1 && b.members().length === 1)
}

/** Heals the split: the first connect is refused by the side that still bans. */
async function heal(a, b) {
  await assert.rejects(a.connect(b.address), (e) => typeof e.code === 'string')
  await b.connect(a.address)
  await waitFor('the healed view', () => a.members().length === 2 && b.members().length === 2)
}

test('advertise is the address a node gives; minMembers waits for the members', async (t) => {
  // The advertised address is the one the node gives, whatever it listens on.
  const elsewhere = await start(t, 'elsewhere', { advertise: '127.0.0.1:1' })
  assert.strictEqual(elsewhere.address, '127.0.0.1:1')
  const addr = `127.0.0.1:${await freePort()}`
  const a = await start(t, 'adv-a', { listen: addr, advertise: addr })
  assert.strictEqual(a.address, addr)
  // A node that needs two members starts once it joined the first.
  const b = await start(t, 'adv-b', { seeds: [addr], minMembers: 2 })
  assert.deepStrictEqual(b.members(), ['adv-a', 'adv-b'])
})

test('a write on one node is readable on the other when it resolves', async (t) => {
  const { a, b } = await pair(t)
  assert.deepStrictEqual(a.members(), ['a', 'b'])
  const ta = await a.createTable('shared')
  const tb = await b.createTable('shared')
  for (let i = 0; i < 20; i++) {
    const [w, r] = i % 2 ? [ta, tb] : [tb, ta]
    await w.put(`k${i}`, `v${i}`)
    assert.strictEqual(r.get(`k${i}`).toString(), `v${i}`)
  }
  await ta.putMany({ x: '1', y: '2' })
  assert.deepStrictEqual(strPairs(tb.match('[xy]')), [
    ['x', '1'],
    ['y', '2'],
  ])
  await tb.deleteMany(['x', 'y'])
  assert.strictEqual(ta.get('x'), null)
  assert.strictEqual((await tb.get('k3', { strong: true })).toString(), 'v3')
  // Updates from both nodes are ordered by the sequencer.
  const incs = []
  for (let i = 0; i < 10; i++) {
    for (const tab of [ta, tb]) incs.push(tab.update('counter', (k, v) => String(Number(v ?? 0) + 1)))
  }
  const news = (await Promise.all(incs)).map(([, n]) => Number(n.toString())).sort((x, y) => x - y)
  assert.deepStrictEqual(
    news,
    Array.from({ length: 20 }, (_, i) => i + 1)
  )
  assert.strictEqual(ta.get('counter').toString(), '20')
  assert.strictEqual(tb.get('counter').toString(), '20')
})

test('a joining node receives every table, and events report members and tables', async (t) => {
  const a = await start(t, 'a')
  const ta = await a.createTable('early')
  await ta.putMany(Object.fromEntries(Array.from({ length: 100 }, (_, i) => [`k${i}`, `v${i}`])))
  const ups = []
  a.on('nodeup', (name) => ups.push(name))
  const downs = []
  a.on('nodedown', (name, reason) => downs.push([name, typeof reason]))
  const b = await start(t, 'b', { seeds: [a.address] })
  const created = []
  b.on('tablecreated', (name) => created.push(name))
  await waitFor('b in a view', () => ups.includes('b'))
  await waitFor('the table on b', () => b.tables().includes('early'))
  const tb = b.table('early')
  await waitFor('the entries on b', () => tb.size === 100)
  assert.strictEqual(tb.get('k42').toString(), 'v42')
  await a.createTable('late')
  await waitFor('tablecreated on b', () => created.includes('late'))
  await b.close()
  await waitFor('nodedown on a', () => downs.length === 1, 2000)
  assert.deepStrictEqual(downs, [['b', 'string']])
  assert.deepStrictEqual(a.members(), ['a'])
})

test('after a netsplit the JS conflict handler decides, once per conflict', async (t) => {
  const calls = { a: [], b: [] }
  const handler = (who) => (key, local, remote) => {
    calls[who].push([key.toString(), local && local.toString(), remote && remote.toString()])
    if (key.toString() === 'gone') return null
    return [local, remote].map(String).sort().join('+')
  }
  const { a, b } = await pair(t)
  const ta = await a.createTable('t', { onConflict: handler('a') })
  const tb = await b.createTable('t', { onConflict: async (...args) => handler('b')(...args) })
  await ta.putMany({ both: '0', gone: '0', left: '0' })
  const events = { a: [], b: [] }
  for (const [name, node] of [
    ['a', a],
    ['b', b],
  ]) {
    node.on('merged', (e) => events[name].push(['merged', e.table, e.peer, e.conflicts]))
    node.on('conflict', (e) => events[name].push(['conflict', e.table, e.key, e.resolution]))
  }

  await split(a, b)
  await ta.put('both', 'from-a')
  await tb.put('both', 'from-b')
  await ta.put('gone', 'kept-a')
  await tb.delete('gone')
  await ta.put('left', 'only-a')
  await heal(a, b)

  await waitFor('the merge', () => tb.get('both')?.toString() === 'from-a+from-b' && ta.get('left')?.toString() === 'only-a' && tb.get('left')?.toString() === 'only-a' && ta.get('both')?.toString() === 'from-a+from-b' && ta.get('gone') === null && tb.get('gone') === null)
  assert.deepStrictEqual(strPairs(ta.match()), strPairs(tb.match()))
  // Exactly one node decided each conflict.
  const decided = [...calls.a, ...calls.b].sort()
  assert.deepStrictEqual(
    decided.map(([k]) => k),
    ['both', 'gone']
  )
  assert.ok(calls.a.length === 0 || calls.b.length === 0, 'one node runs the handler')
  await waitFor('conflict events', () =>
    [...events.a, ...events.b].filter((e) => e[0] === 'conflict').length >= 2
  )
  const conflicts = [...events.a, ...events.b].filter((e) => e[0] === 'conflict')
  assert.ok(conflicts.every(([, table, , resolution]) => table === 't' && resolution === 'handler'))
  assert.ok([...events.a, ...events.b].some(([kind, table]) => kind === 'merged' && table === 't'))
  assert.deepStrictEqual(ta.conflicts(), [])
  assert.deepStrictEqual(tb.conflicts(), [])
})

test('a conflict handler that throws leaves the conflict to the fallback', async (t) => {
  const { a, b } = await pair(t)
  const failing = () => {
    throw new Error('cannot decide')
  }
  const ta = await a.createTable('t', { onConflict: failing })
  const tb = await b.createTable('t', { onConflict: failing })
  const resolutions = []
  for (const node of [a, b]) node.on('conflict', (e) => resolutions.push(e.resolution))
  await split(a, b)
  await ta.put('k', 'from-a')
  await new Promise((r) => setTimeout(r, 5))
  await tb.put('k', 'from-b')
  await heal(a, b)
  // The newest write wins; the loser is kept in the conflict log.
  await waitFor('the fallback', () => ta.get('k')?.toString() === 'from-b' && tb.get('k')?.toString() === 'from-b')
  await waitFor('the conflict log', () => ta.conflicts().length + tb.conflicts().length >= 1)
  const log = [...ta.conflicts(), ...tb.conflicts()]
  const rec = log[0]
  assert.strictEqual(rec.key.toString(), 'k')
  assert.strictEqual(rec.kept.toString(), 'from-b')
  assert.strictEqual(rec.lost.toString(), 'from-a')
  assert.ok(['a', 'b'].includes(rec.peer))
  assert.ok(Math.abs(rec.at - Date.now()) < 60000)
  await waitFor('a conflict event', () => resolutions.length >= 1)
  assert.ok(resolutions.includes('handler_failed'))
})
