'use strict'
// Every operation of a single node and its tables.
const test = require('node:test')
const assert = require('node:assert/strict')
const { EventEmitter } = require('node:events')

const lbmkv = require('..')
const { Node, Table } = lbmkv
const { start, b, strPairs } = require('./helpers')

test('require and import give the same classes', async () => {
  const esm = await import('lbmkv')
  assert.strictEqual(esm.Node, Node)
  assert.strictEqual(esm.Table, Table)
  assert.strictEqual(esm.default, lbmkv)
  assert.match(lbmkv.version(), /^\d+\.\d+\.\d+/)
})

test('a node has a name, an address and itself as its only member', async (t) => {
  const node = await start(t, 'solo')
  assert.ok(node instanceof Node)
  assert.ok(node instanceof EventEmitter)
  assert.strictEqual(node.name, 'solo')
  assert.match(node.address, /^127\.0\.0\.1:\d+$/)
  assert.deepStrictEqual(node.members(), ['solo'])
  assert.deepStrictEqual(node.tables(), [])
})

test('put returns the previous value and get reads it locally', async (t) => {
  const node = await start(t, 'n')
  const users = await node.createTable('users')
  assert.ok(users instanceof Table)
  assert.strictEqual(users.name, 'users')
  assert.strictEqual(await users.put('alice', 'admin'), null)
  const prev = await users.put(b('alice'), new Uint8Array([117, 115, 101, 114]))
  assert.ok(Buffer.isBuffer(prev))
  assert.strictEqual(prev.toString(), 'admin')
  const v = users.get('alice')
  assert.ok(Buffer.isBuffer(v))
  assert.strictEqual(v.toString(), 'user')
  assert.strictEqual(users.get(b('alice')).toString(), 'user')
  assert.strictEqual(users.get(new Uint8Array(b('alice'))).toString(), 'user')
  assert.strictEqual(users.get('bob'), null)
  assert.strictEqual(users.size, 1)
  assert.strictEqual(users.has('alice'), true)
  assert.strictEqual(users.has('bob'), false)
})

test('values handed out by get stay intact across later reads', async (t) => {
  const node = await start(t, 'n')
  const tab = await node.createTable('t')
  const big = Buffer.alloc(200 * 1024, 'x')
  await tab.putMany([
    ['small', 'abc'],
    ['empty', ''],
    ['big', big],
  ])
  const reads = []
  for (let i = 0; i < 2000; i++) reads.push(tab.get(i % 3 === 0 ? 'small' : i % 3 === 1 ? 'empty' : 'big'))
  reads.forEach((v, i) => {
    if (i % 3 === 0) assert.strictEqual(v.toString(), 'abc')
    else if (i % 3 === 1) assert.strictEqual(v.length, 0)
    else assert.ok(v.equals(big))
  })
  // A key that is a view of the same memory as an earlier value still reads right.
  await tab.put('abc', 'found')
  const view = tab.get('small')
  const next = Buffer.from(view.buffer, view.byteOffset + 8, 3) // where the next value goes
  next.write('abc')
  assert.strictEqual(tab.get(next).toString(), 'found')
  // A value changed after it was read leaves the earlier Buffer as it was.
  const before = tab.get('small')
  await tab.put('small', 'xyz')
  assert.strictEqual(before.toString(), 'abc')
  assert.strictEqual(tab.get('small').toString(), 'xyz')
})

test('strong get returns a Promise of the value at the sequencer', async (t) => {
  const node = await start(t, 'n')
  const tab = await node.createTable('t')
  await tab.put('k', 'v')
  const p = tab.get('k', { strong: true })
  assert.ok(p instanceof Promise)
  assert.strictEqual((await p).toString(), 'v')
  assert.strictEqual(await tab.get('nothing', { strong: true }), null)
  assert.strictEqual(tab.get('k', { strong: false }).toString(), 'v')
})

test('putMany takes pairs or an object and returns previous pairs sorted by key', async (t) => {
  const node = await start(t, 'n')
  const tab = await node.createTable('t')
  assert.deepStrictEqual(await tab.putMany({ b: '1', a: '2' }), [])
  const prev = await tab.putMany([
    ['c', '3'],
    ['b', 'x'],
    [b('a'), b('y')],
  ])
  assert.deepStrictEqual(strPairs(prev), [
    ['a', '2'],
    ['b', '1'],
  ])
  assert.ok(prev.every(([k, v]) => Buffer.isBuffer(k) && Buffer.isBuffer(v)))
  assert.deepStrictEqual(await tab.putMany([]), [])
  assert.strictEqual(tab.size, 3)
})

test('delete and deleteMany return what was there', async (t) => {
  const node = await start(t, 'n')
  const tab = await node.createTable('t')
  await tab.putMany({ a: '1', b: '2', c: '3', d: '4' })
  assert.strictEqual((await tab.delete('a')).toString(), '1')
  assert.strictEqual(await tab.delete('a'), null)
  assert.strictEqual(tab.get('a'), null)
  const prev = await tab.deleteMany(['d', 'zz', b('b')])
  assert.deepStrictEqual(strPairs(prev), [
    ['b', '2'],
    ['d', '4'],
  ])
  assert.deepStrictEqual(await tab.deleteMany([]), [])
  assert.deepStrictEqual(
    [...tab.keys()].map((k) => k.toString()),
    ['c']
  )
})

test('match filters keys and values with glob patterns, sorted by key', async (t) => {
  const node = await start(t, 'n')
  const tab = await node.createTable('t')
  await tab.putMany({ 'user:2': 'bob', 'user:1': 'alice', 'group:1': 'admins', 'user:10': 'carol' })
  assert.deepStrictEqual(strPairs(tab.match()), [
    ['group:1', 'admins'],
    ['user:1', 'alice'],
    ['user:10', 'carol'],
    ['user:2', 'bob'],
  ])
  assert.deepStrictEqual(strPairs(tab.match('user:?')), [
    ['user:1', 'alice'],
    ['user:2', 'bob'],
  ])
  assert.deepStrictEqual(strPairs(tab.match('*', '[ab]*')), [
    ['group:1', 'admins'],
    ['user:1', 'alice'],
    ['user:2', 'bob'],
  ])
  assert.deepStrictEqual(strPairs(tab.match(null, 'c*')), [['user:10', 'carol']])
  assert.deepStrictEqual(tab.match('nothing*'), [])
})

test('update is a read-modify-write returning [old, new]', async (t) => {
  const node = await start(t, 'n')
  const tab = await node.createTable('t')
  const inc = (key, v) => String(Number(v ?? 0) + 1)
  const [old1, new1] = await tab.update('n', inc)
  assert.strictEqual(old1, null)
  assert.strictEqual(new1.toString(), '1')
  const [old2, new2] = await tab.update(b('n'), async (key, v) => {
    assert.ok(Buffer.isBuffer(key))
    assert.strictEqual(key.toString(), 'n')
    await new Promise((r) => setTimeout(r, 5))
    return inc(key, v)
  })
  assert.strictEqual(old2.toString(), '1')
  assert.strictEqual(new2.toString(), '2')
  // Returning the old value writes nothing.
  const same = await tab.update('n', (key, v) => v)
  assert.deepStrictEqual(same.map(String), ['2', '2'])
  // Returning null or undefined deletes.
  const [old3, new3] = await tab.update('n', () => undefined)
  assert.strictEqual(old3.toString(), '2')
  assert.strictEqual(new3, null)
  assert.strictEqual(tab.get('n'), null)
})

test('concurrent updates of one key lose no increment', async (t) => {
  const node = await start(t, 'n')
  const tab = await node.createTable('t')
  const results = await Promise.all(
    Array.from({ length: 50 }, () => tab.update('c', (k, v) => String(Number(v ?? 0) + 1)))
  )
  const news = results.map(([, n]) => Number(n.toString())).sort((x, y) => x - y)
  assert.deepStrictEqual(
    news,
    Array.from({ length: 50 }, (_, i) => i + 1)
  )
  assert.strictEqual(tab.get('c').toString(), '50')
})

test('an update function that throws applies nothing and rejects with its error', async (t) => {
  const node = await start(t, 'n')
  const tab = await node.createTable('t')
  await tab.put('k', 'v')
  class Mine extends Error {}
  await assert.rejects(
    tab.update('k', () => {
      throw new Mine('no')
    }),
    (e) => e instanceof Mine && e.message === 'no'
  )
  await assert.rejects(
    tab.update('k', async () => {
      throw new Mine('async no')
    }),
    (e) => e instanceof Mine && e.message === 'async no'
  )
  assert.strictEqual(tab.get('k').toString(), 'v')
})

test('updateAll applies a function to every entry atomically', async (t) => {
  const node = await start(t, 'n')
  const tab = await node.createTable('t')
  await tab.putMany({ a: '1', b: '2', c: '3' })
  const [oldPairs, newPairs] = await tab.updateAll((key, v) => {
    if (key.toString() === 'a') return null // delete
    if (key.toString() === 'b') return v // unchanged
    return String(Number(v) * 10)
  })
  assert.deepStrictEqual(strPairs(oldPairs), [
    ['a', '1'],
    ['c', '3'],
  ])
  assert.deepStrictEqual(strPairs(newPairs), [['c', '30']])
  assert.deepStrictEqual(strPairs(tab.match()), [
    ['b', '2'],
    ['c', '30'],
  ])
  // A throw aborts the whole update.
  await assert.rejects(
    tab.updateAll((key) => {
      if (key.toString() === 'c') throw new RangeError('stop')
      return 'changed'
    }),
    RangeError
  )
  assert.deepStrictEqual(strPairs(tab.match()), [
    ['b', '2'],
    ['c', '30'],
  ])
  // Async functions work too.
  const [, changed] = await tab.updateAll(async (key, v) => Buffer.concat([v, b('!')]))
  assert.deepStrictEqual(strPairs(changed), [
    ['b', '2!'],
    ['c', '30!'],
  ])
})

test('tables, table(name), info and conflicts describe the node', async (t) => {
  const node = await start(t, 'n')
  const t1 = await node.createTable('one')
  await node.createTable('two')
  const again = await node.createTable('one')
  await t1.put('k', 'v')
  assert.strictEqual(again.get('k').toString(), 'v')
  assert.deepStrictEqual(node.tables(), ['one', 'two'])
  assert.strictEqual(node.table('one').get('k').toString(), 'v')
  const info = node.info()
  assert.strictEqual(info.name, 'n')
  assert.strictEqual(info.address, node.address)
  assert.deepStrictEqual(info.members, ['n'])
  assert.deepStrictEqual(
    info.tables.map((x) => [x.name, x.entries]),
    [
      ['one', 1],
      ['two', 0],
    ]
  )
  assert.strictEqual(typeof info.tables[0].digest, 'string')
  assert.deepStrictEqual(t1.conflicts(), [])
  t1.setConflictHandler((k, local) => local)
  t1.setConflictHandler(null)
})

test('tablecreated is emitted for a new table', async (t) => {
  const node = await start(t, 'n')
  const seen = []
  node.on('tablecreated', (name) => seen.push(name))
  await node.createTable('fresh')
  await new Promise((r) => setTimeout(r, 50))
  assert.deepStrictEqual(seen, ['fresh'])
})

test('Symbol.asyncDispose closes the node', async () => {
  const node = await Node.start({ cookie: 'x' })
  const tab = await node.createTable('t')
  await node[Symbol.asyncDispose]()
  assert.throws(() => tab.get('k'), { code: 'CLOSED' })
  assert.throws(() => node.table('t'), { code: 'CLOSED' })
  await node.close() // a second close is harmless
})
