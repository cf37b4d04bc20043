'use strict'
// Bad input gives errors with the documented codes; nothing crashes.
const test = require('node:test')
const assert = require('node:assert/strict')

const { Node } = require('..')
const { start, rejectsWith, throwsWith, options, freePort } = require('./helpers')

/** A loopback address where nobody listens any more: dialing it is refused. */
async function closedPort() {
  return `127.0.0.1:${await freePort()}`
}

const notBytes = [undefined, null, 42, true, {}, [1, 2], new Int16Array(2), Symbol('s'), () => 1, 10n]

test('keys and values of the wrong type are INVALID_ARGUMENT', async (t) => {
  const node = await start(t, 'n')
  const tab = await node.createTable('t')
  for (const bad of notBytes) {
    throwsWith(assert, () => tab.get(bad), 'INVALID_ARGUMENT', /key must be a Buffer, Uint8Array or string/)
    throwsWith(assert, () => tab.has(bad), 'INVALID_ARGUMENT')
    await rejectsWith(assert, () => tab.put(bad, 'v'), 'INVALID_ARGUMENT', /key/)
    await rejectsWith(assert, () => tab.put('k', bad), 'INVALID_ARGUMENT', /value/)
    await rejectsWith(assert, () => tab.delete(bad), 'INVALID_ARGUMENT')
    await rejectsWith(assert, () => tab.get(bad, { strong: true }), 'INVALID_ARGUMENT')
    await rejectsWith(assert, () => tab.update(bad, () => 'x'), 'INVALID_ARGUMENT')
  }
  // Async calls reject rather than throw, as async functions do.
  const p = tab.put(42, 'v')
  assert.ok(p instanceof Promise)
  await assert.rejects(p, { code: 'INVALID_ARGUMENT' })
  assert.strictEqual(tab.size, 0)
})

test('bad batches, patterns and options are INVALID_ARGUMENT', async (t) => {
  const node = await start(t, 'n')
  const tab = await node.createTable('t')
  for (const bad of [42, 'str', null, [['k']], [['k', 'v', 'w']], [['k', 1]], [42], Buffer.from('x')]) {
    await rejectsWith(assert, () => tab.putMany(bad), 'INVALID_ARGUMENT')
  }
  await rejectsWith(assert, () => tab.putMany({ k: 7 }), 'INVALID_ARGUMENT', /entries\["k"\]/)
  for (const bad of [42, 'k', [42], null]) {
    await rejectsWith(assert, () => tab.deleteMany(bad), 'INVALID_ARGUMENT')
  }
  throwsWith(assert, () => tab.match(42), 'INVALID_ARGUMENT')
  throwsWith(assert, () => tab.match('*', {}), 'INVALID_ARGUMENT')
  throwsWith(assert, () => tab.match('[unclosed'), 'INVALID_ARGUMENT', /pattern/)
  throwsWith(assert, () => tab.get('k', 'strong'), 'INVALID_ARGUMENT', /options/)
  throwsWith(assert, () => tab.get('k', { strong: 1 }), 'INVALID_ARGUMENT', /strong/)
  throwsWith(assert, () => tab.setConflictHandler(42), 'INVALID_ARGUMENT', /function/)
  await rejectsWith(assert, () => tab.update('k', 'not a function'), 'INVALID_ARGUMENT', /function/)
  await rejectsWith(assert, () => tab.updateAll(null), 'INVALID_ARGUMENT', /function/)
  assert.strictEqual(tab.size, 0)
})

test('an update function returning something that is not bytes is INVALID_ARGUMENT', async (t) => {
  const node = await start(t, 'n')
  const tab = await node.createTable('t')
  await tab.put('k', 'v')
  await rejectsWith(assert, () => tab.update('k', () => 42), 'INVALID_ARGUMENT', /returned value/)
  await rejectsWith(assert, () => tab.update('k', async () => ({})), 'INVALID_ARGUMENT')
  await rejectsWith(assert, () => tab.updateAll(() => [1]), 'INVALID_ARGUMENT')
  assert.strictEqual(tab.get('k').toString(), 'v')
})

test('oversize keys and values are INVALID_ARGUMENT', async (t) => {
  const node = await start(t, 'n', { maxKeySize: 8, maxValueSize: 16 })
  const tab = await node.createTable('t')
  throwsWith(assert, () => tab.get('123456789'), 'INVALID_ARGUMENT', /key of 9 bytes/)
  await rejectsWith(assert, () => tab.put('123456789', 'v'), 'INVALID_ARGUMENT', /key/)
  await rejectsWith(assert, () => tab.put('k', Buffer.alloc(17)), 'INVALID_ARGUMENT', /value of 17 bytes/)
  await rejectsWith(assert, () => tab.putMany({ a: 'ok', b: Buffer.alloc(17) }), 'INVALID_ARGUMENT')
  assert.strictEqual(tab.get('a'), null) // all or nothing
})

test('bad table and node names are INVALID_ARGUMENT, unknown tables NO_SUCH_TABLE', async (t) => {
  const node = await start(t, 'n')
  for (const bad of ['', 'a\0b', 'x'.repeat(256)]) {
    await rejectsWith(assert, () => node.createTable(bad), 'INVALID_ARGUMENT', /table name/)
  }
  for (const bad of [42, null, undefined, Buffer.from('t')]) {
    await rejectsWith(assert, () => node.createTable(bad), 'INVALID_ARGUMENT', /table name must be a string/)
  }
  await rejectsWith(assert, () => node.createTable('t', 42), 'INVALID_ARGUMENT', /options/)
  await rejectsWith(assert, () => node.createTable('t', { onConflict: 'x' }), 'INVALID_ARGUMENT', /onConflict/)
  await rejectsWith(assert, () => node.createTable('t', { onconflict: () => null }), 'INVALID_ARGUMENT', /unknown createTable option/)
  throwsWith(assert, () => node.table('missing'), 'NO_SUCH_TABLE', /missing/)
  throwsWith(assert, () => node.table(7), 'INVALID_ARGUMENT')
  await rejectsWith(assert, () => node.disconnect(''), 'INVALID_ARGUMENT')
  await rejectsWith(assert, () => node.disconnect(7), 'INVALID_ARGUMENT')
  await rejectsWith(assert, () => node.connect('no port'), 'INVALID_ARGUMENT', /host:port/)
  await rejectsWith(assert, () => node.connect(12), 'INVALID_ARGUMENT')
})

test('bad start options are INVALID_ARGUMENT', async () => {
  const cases = [
    [42, /options must be an object/],
    ['name=a', /options must be an object/],
    [{ name: 42 }, /name/],
    [{ name: '' }, /node name/],
    [{ seeds: 'host:1' }, /seeds/],
    [{ seeds: [1] }, /seeds/],
    [{ cookie: 12 }, /cookie/],
    [{ cookie: '' }, /cookie/],
    [{ failureTimeoutMs: 'x' }, /failureTimeoutMs/],
    [{ failureTimeoutMs: -1 }, /failureTimeoutMs/],
    [{ requestTimeoutMs: Infinity }, /requestTimeoutMs/],
    [{ heartbeatIntervalMs: 100, failureTimeoutMs: 50 }, /failure_timeout/],
    [{ maxKeySize: 1.5 }, /maxKeySize/],
    [{ listen: 'nowhere' }, /host:port/],
    [{ advertise: 42 }, /advertise/],
    [{ advertise: 'nowhere' }, /advertised address "nowhere" is not host:port/],
    [{ advertise: ':7000' }, /advertised address/],
    [{ minMembers: '2' }, /minMembers/],
    [{ minMembers: -1 }, /minMembers/],
    [{ minMembers: 1.5 }, /minMembers/],
    [{ failureTimeout: 600 }, /unknown Node.start option "failureTimeout"/],
  ]
  for (const [opts, message] of cases) {
    await rejectsWith(assert, () => Node.start(opts), 'INVALID_ARGUMENT', message)
  }
})

test('minMembers with an unreachable seed is UNAVAILABLE, naming the seed', async () => {
  const seed = await closedPort()
  const err = await rejectsWith(
    assert,
    () => Node.start(options('lonely', { seeds: [seed], minMembers: 2, requestTimeoutMs: 1000 })),
    'UNAVAILABLE',
    /1 of 2 members/
  )
  assert.ok(err.message.includes(`${seed}: `), err.message)
})

test('a getter that throws in the options rejects with its own error', async () => {
  const opts = {
    get name() {
      throw new TypeError('from the getter')
    },
  }
  await assert.rejects(Node.start(opts), (e) => e instanceof TypeError && e.message === 'from the getter')
})

test('calls on a closed node are CLOSED', async () => {
  const node = await Node.start(options('closing'))
  const tab = await node.createTable('t')
  await tab.put('k', 'v')
  await node.close()
  throwsWith(assert, () => tab.get('k'), 'CLOSED')
  throwsWith(assert, () => tab.size, 'CLOSED')
  throwsWith(assert, () => tab.match(), 'CLOSED')
  await rejectsWith(assert, () => tab.put('k', 'v'), 'CLOSED')
  await rejectsWith(assert, () => tab.update('k', () => 'x'), 'CLOSED')
  await rejectsWith(assert, () => tab.get('k', { strong: true }), 'CLOSED')
  await rejectsWith(assert, () => node.createTable('u'), 'CLOSED')
  await rejectsWith(assert, () => node.connect('127.0.0.1:1'), 'CLOSED')
})

test('connecting to a port where nobody listens fails, the node keeps working', async (t) => {
  const node = await start(t, 'n', { requestTimeoutMs: 1000 })
  const err = await rejectsWith(assert, () => node.connect('127.0.0.1:1'), 'UNAVAILABLE')
  assert.ok(err.message.length > 0)
  const tab = await node.createTable('t')
  await tab.put('k', 'v')
  assert.strictEqual(tab.get('k').toString(), 'v')
})

test('a wrong cookie is refused', async (t) => {
  const a = await start(t, 'a')
  const b = await start(t, 'b', { cookie: 'another secret' })
  const err = await rejectsWith(assert, () => b.connect(a.address), 'PROTOCOL')
  assert.ok(err.message.length > 0)
  assert.deepStrictEqual(b.members(), ['b'])
})

test('native functions used by the JavaScript layer check their arguments', async (t) => {
  const native = require('../lbmkv.node')
  const node = await start(t, 'n')
  const tab = await node.createTable('t')
  const handle = native.tableHandle(tab)
  const slab = Buffer.alloc(16)
  throwsWith(assert, () => native.getInto({}, 'k', slab, 0), 'INVALID_ARGUMENT', /handle/)
  throwsWith(assert, () => native.getInto(handle, 'k', new Uint16Array(4), 0), 'INVALID_ARGUMENT', /slab/)
  throwsWith(assert, () => native.getInto(handle, 'k'), 'INVALID_ARGUMENT')
  // The addon marks a wrong type; the JavaScript layer makes it a TypeError.
  throwsWith(assert, () => native.getInto(handle, 5, slab, 0), 'ERR_INVALID_ARG_TYPE', /key/)
  assert.throws(() => tab.get(5), (e) => e instanceof TypeError && e.code === 'INVALID_ARGUMENT' && /key/.test(e.message))
  assert.strictEqual(native.getInto(handle, 'k', slab, 0), -1)
  await tab.put('k', 'a value longer than the slab')
  assert.strictEqual(native.getInto(handle, 'k', slab, 0), -2 - 28)
  assert.strictEqual(native.getInto(handle, 'k', slab, 99), -2 - 28)
  assert.throws(() => node._listen(() => {}), { code: 'INVALID_ARGUMENT' })
})
