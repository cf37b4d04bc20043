'use strict'
// Iteration, encoding, TypeError/RangeError, AbortSignal, waitForMembers and
// the ES module entry.
const { test } = require('node:test')
const assert = require('node:assert')
const { spawnSync } = require('node:child_process')
const path = require('node:path')
const lbmkv = require('..')
const { Node, Table } = lbmkv
const { start, options, strPairs } = require('./helpers')

test('a table is iterable like a Map, sync and async, over a sorted snapshot', async (t) => {
  const node = await start(t, 'iter')
  const tab = await node.createTable('t')
  await tab.putMany([['b', '2'], ['a', '1'], ['c', '3']])
  assert.deepStrictEqual(strPairs([...tab]), [['a', '1'], ['b', '2'], ['c', '3']])
  const seen = []
  for await (const [k, v] of tab) seen.push([k.toString(), v.toString()])
  assert.deepStrictEqual(seen, [['a', '1'], ['b', '2'], ['c', '3']])
  const keys = tab.keys()
  assert.strictEqual(typeof keys.next, 'function')
  assert.deepStrictEqual([...keys].map(String), ['a', 'b', 'c'])
  assert.deepStrictEqual([...tab.values()].map(String), ['1', '2', '3'])
  assert.deepStrictEqual(strPairs([...tab.entries()]), [['a', '1'], ['b', '2'], ['c', '3']])
  // A snapshot: writes during the loop do not change it.
  const it = tab.entries()
  await tab.put('d', '4')
  assert.strictEqual([...it].length, 3)
  assert.deepStrictEqual(new Map(tab.entries({ encoding: 'utf8' })), new Map([['a', '1'], ['b', '2'], ['c', '3'], ['d', '4']]))
})

test("encoding: 'utf8' gives strings from every call, Buffers stay the default", async (t) => {
  const node = await start(t, 'enc')
  const tab = await node.createTable('t')
  const utf8 = { encoding: 'utf8' }
  assert.strictEqual(await tab.put('k', 'é1', utf8), null)
  assert.strictEqual(await tab.put('k', 'é2', utf8), 'é1')
  assert.ok(Buffer.isBuffer(tab.get('k')))
  assert.strictEqual(tab.get('k', utf8), 'é2')
  assert.strictEqual(tab.get('absent', utf8), null)
  assert.strictEqual(await tab.get('k', { strong: true, encoding: 'utf8' }), 'é2')
  assert.ok(Buffer.isBuffer(await tab.get('k', { strong: true })))
  assert.deepStrictEqual(await tab.putMany({ a: '1', k: 'x' }, utf8), [['k', 'é2']])
  assert.deepStrictEqual(tab.match('[ak]', '*', utf8), [['a', '1'], ['k', 'x']])
  const seen = []
  const [o, n] = await tab.update('a', (k, v) => {
    seen.push([typeof k, typeof v])
    return v + '!'
  }, utf8)
  assert.deepStrictEqual([o, n, seen[0]], ['1', '1!', ['string', 'string']])
  const [olds, news] = await tab.updateAll((k, v) => (k === 'k' ? v + '?' : v), utf8)
  assert.deepStrictEqual([olds, news], [[['k', 'x']], [['k', 'x?']]])
  assert.deepStrictEqual([...tab.keys(utf8)], ['a', 'k'])
  assert.deepStrictEqual([...tab.values(utf8)], ['1!', 'x?'])
  assert.strictEqual(await tab.delete('k', utf8), 'x?')
  assert.deepStrictEqual(await tab.deleteMany(['a'], utf8), [['a', '1!']])
  assert.strictEqual(tab.get('a', { encoding: 'buffer' }), null)
  assert.throws(() => tab.get('a', { encoding: 'latin9' }), (e) => e instanceof TypeError && e.code === 'INVALID_ARGUMENT')
  await assert.rejects(tab.put('a', 'b', { encoding: 5 }), (e) => e instanceof TypeError && e.code === 'INVALID_ARGUMENT')
})

test('wrong argument types throw TypeError and wrong ranges RangeError, with a code', async (t) => {
  const node = await start(t, 'types')
  const tab = await node.createTable('t')
  const isType = (e) => e instanceof TypeError && e.code === 'INVALID_ARGUMENT' && e.message.length > 0
  const isRange = (e) => e instanceof RangeError && e.code === 'INVALID_ARGUMENT'
  // Synchronous calls throw.
  assert.throws(() => tab.get(5), isType)
  assert.throws(() => tab.get('k', 'strong'), isType)
  assert.throws(() => tab.get('k', { strong: 'yes' }), isType)
  assert.throws(() => tab.has({}), isType)
  assert.throws(() => tab.match(5), isType)
  assert.throws(() => tab.setConflictHandler(5), isType)
  assert.throws(() => node.table(5), isType)
  // Promises reject.
  await assert.rejects(tab.put(5, 'v'), isType)
  await assert.rejects(tab.put('k', null), isType)
  await assert.rejects(tab.putMany(5), isType)
  await assert.rejects(tab.putMany([['k']]), isType)
  await assert.rejects(tab.deleteMany('k'), isType)
  await assert.rejects(tab.update('k', 'not a function'), isType)
  await assert.rejects(tab.get(5, { strong: true }), isType)
  await assert.rejects(node.createTable(5), isType)
  await assert.rejects(node.createTable('x', 5), isType)
  await assert.rejects(node.connect(5), isType)
  await assert.rejects(node.waitForMembers('2', 100), isType)
  await assert.rejects(Node.start(5), isType)
  await assert.rejects(Node.start({ ...options('bad'), failureTimeoutMs: 'slow' }), isType)
  await assert.rejects(Node.start({ ...options('bad'), failureTimeoutMs: -1 }), isRange)
  await assert.rejects(Node.start({ ...options('bad'), minMembers: 1.5 }), isRange)
  await assert.rejects(node.waitForMembers(-1, 100), isRange)
  await assert.rejects(node.waitForMembers(2, -5), isRange)
  await assert.rejects(node.waitForMembers(2, NaN), isRange)
  // Value errors that are not about a type or a range stay Errors with their code.
  await assert.rejects(node.createTable(''), (e) => !(e instanceof TypeError) && e.code === 'INVALID_ARGUMENT')
  await assert.rejects(Node.start({ nope: 1 }), (e) => !(e instanceof TypeError) && e.code === 'INVALID_ARGUMENT')
  // A user function's own TypeError comes back as it was thrown.
  const mine = new TypeError('mine')
  await assert.rejects(tab.update('k', () => { throw mine }), (e) => e === mine)
})

test('waitForMembers resolves when a peer joins, rejects with UNAVAILABLE in time and CLOSED on close', async (t) => {
  const a = await start(t, 'wa')
  await a.waitForMembers(1, 10)
  const t0 = Date.now()
  await assert.rejects(a.waitForMembers(2, 300), (e) => e.code === 'UNAVAILABLE' && /1 of 2 members/.test(e.message))
  assert.ok(Date.now() - t0 >= 290)
  const waiting = a.waitForMembers(2, 20000)
  const b = await start(t, 'wb', { seeds: [a.address] })
  await waiting
  assert.deepStrictEqual(a.members(), ['wa', 'wb'])
  await b.waitForMembers(2, 5000)
  const c = await Node.start(options('wc'))
  const pending = assert.rejects(c.waitForMembers(3, 30000), (e) => e.code === 'CLOSED')
  await new Promise((r) => setTimeout(r, 50))
  const t1 = Date.now()
  await c.close()
  await pending
  assert.ok(Date.now() - t1 < 5000)
})

test('AbortSignal stops the calls that wait', async (t) => {
  const node = await start(t, 'abort')
  const tab = await node.createTable('t')
  const isAbort = (reason) => (e) => e.name === 'AbortError' && e.code === 'ABORT_ERR' && e.cause === reason
  // Aborted before the call: nothing starts.
  const gone = AbortSignal.abort('early')
  await assert.rejects(tab.put('never', 'v', { signal: gone }), isAbort('early'))
  assert.strictEqual(tab.get('never'), null)
  await assert.rejects(tab.get('k', { strong: true, signal: gone }), isAbort('early'))
  await assert.rejects(tab.update('k', (k, v) => 'x', { signal: gone }), isAbort('early'))
  await assert.rejects(node.createTable('t2', { signal: gone }), isAbort('early'))
  await assert.rejects(Node.start({ ...options('never'), signal: gone }), isAbort('early'))
  // A signal that does not abort changes nothing.
  const live = new AbortController()
  assert.strictEqual(await tab.put('k', 'v', { signal: live.signal }), null)
  assert.strictEqual((await tab.get('k', { strong: true, signal: live.signal })).toString(), 'v')
  // Aborted while waiting: rejects at once.
  const ctl = new AbortController()
  const waiting = node.waitForMembers(2, 30000, { signal: ctl.signal })
  const t0 = Date.now()
  setTimeout(() => ctl.abort('enough'), 50)
  await assert.rejects(waiting, isAbort('enough'))
  assert.ok(Date.now() - t0 < 2000)
  await assert.rejects(node.waitForMembers(2, 30000, { signal: AbortSignal.timeout(50) }), (e) => e.name === 'AbortError')
  // Not an AbortSignal: a TypeError.
  await assert.rejects(tab.put('k', 'v', { signal: 'stop' }), (e) => e instanceof TypeError && e.code === 'INVALID_ARGUMENT')
  // A start aborted while it waits for members closes the node it started.
  const startCtl = new AbortController()
  const starting = Node.start({ ...options('lonely'), minMembers: 2, requestTimeoutMs: 1500, signal: startCtl.signal })
  setTimeout(() => startCtl.abort('no'), 50)
  await assert.rejects(starting, isAbort('no'))
})

test('the ES module entry gives the same objects as require', () => {
  const url = require('node:url').pathToFileURL(path.join(__dirname, '..', 'index.mjs')).href
  const r = spawnSync(process.execPath, ['--input-type=module', '-e',
    `import lbmkv, { Node, Table, version, setLogger } from ${JSON.stringify(url)};
     import { createRequire } from 'node:module';
     const cjs = createRequire(import.meta.url)(${JSON.stringify(path.join(__dirname, '..'))});
     if (cjs.Node !== Node || cjs.Table !== Table || lbmkv.Node !== Node || cjs.setLogger !== setLogger) process.exit(3);
     const n = await Node.start({ cookie: 'esm' }); const t = await n.createTable('t'); await t.put('k', 'v');
     if (t.get('k', { encoding: 'utf8' }) !== 'v') process.exit(4);
     await n.close(); console.log(version())`], { encoding: 'utf8', timeout: 30000 })
  assert.strictEqual(r.status, 0, r.stderr)
  assert.strictEqual(r.stdout.trim(), lbmkv.version())
  assert.strictEqual(typeof Table.prototype[Symbol.asyncIterator], 'function')
})
