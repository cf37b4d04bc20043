'use strict'
// Shared by the tests: nodes on loopback with fast failure detection.
const net = require('node:net')
const { Node } = require('..')

const COOKIE = 'lbmkv-node-tests'

/** Options of a test node: loopback, fixed cookie, failures seen within 600 ms. */
function options(name, extra = {}) {
  return {
    name,
    listen: '127.0.0.1:0',
    cookie: COOKIE,
    heartbeatIntervalMs: 50,
    failureTimeoutMs: 600,
    requestTimeoutMs: 3000,
    antiEntropyIntervalMs: 300,
    ...extra,
  }
}

/** Starts a node and registers its close with the test context `t`. */
async function start(t, name, extra) {
  const node = await Node.start(options(name, extra))
  t.after(() => node.close())
  return node
}

/** Polls `cond` every 10 ms until it holds; fails after `ms`. */
async function waitFor(what, cond, ms = 10000) {
  const deadline = Date.now() + ms
  for (;;) {
    if (await cond()) return
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

/** Asserts that a call throws, or a Promise rejects, with an error of `code`. */
async function rejectsWith(assert, fn, code, message) {
  let err
  try {
    await fn()
  } catch (e) {
    err = e
  }
  assert.ok(err instanceof Error, `expected an Error with code ${code}, got ${err}`)
  assert.strictEqual(err.code, code, `code of: ${err && err.message}`)
  if (message) assert.match(err.message, message)
  return err
}

/** Asserts that a synchronous call throws an error of `code`. */
function throwsWith(assert, fn, code, message) {
  assert.throws(fn, (e) => {
    assert.ok(e instanceof Error)
    assert.strictEqual(e.code, code, `code of: ${e.message}`)
    if (message) assert.match(e.message, message)
    return true
  })
}

/** A loopback TCP port that was free a moment ago. */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

const b = (s) => Buffer.from(s)
/** `[key, value]` Buffer pairs as strings, for comparisons. */
const strPairs = (pairs) => pairs.map(([k, v]) => [k.toString(), v.toString()])

module.exports = { COOKIE, options, start, waitFor, rejectsWith, throwsWith, freePort, b, strPairs }
