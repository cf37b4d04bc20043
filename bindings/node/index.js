'use strict'
// lbmkv for Node.js: the native addon (lbmkv.node, built from src/) plus this
// thin layer, which makes `Node` an EventEmitter that keeps the process alive
// while open, and gives `Table#get` a fast path for local reads.

const { EventEmitter } = require('node:events')
const path = require('node:path')

function load() {
  const file = path.join(__dirname, 'lbmkv.node')
  try {
    return require(file)
  } catch (e) {
    const err = new Error(
      `lbmkv: cannot load the native addon ${file} (${e.message}); ` +
        'build it with `npm run build` in the lbmkv package (needs Rust and cargo)'
    )
    err.code = 'INTERNAL'
    err.cause = e
    throw err
  }
}

const native = load()
const { Node, Table, getInto, tableHandle, version, setLogger } = native

// --- Node: an EventEmitter that keeps the event loop alive until close() ---

const kKeepAlive = Symbol('lbmkv.keepAlive')
const kRefed = Symbol('lbmkv.refed')

Object.setPrototypeOf(Node.prototype, EventEmitter.prototype)

const nativeStart = Node.start
const nativeClose = Node.prototype.close
// Longest delay a timer takes; the timer only holds the loop open.
const KEEPALIVE_MS = 2 ** 31 - 1

function emitFrom(node) {
  return (type, a, b) => {
    if (b === undefined) node.emit(type, a)
    else node.emit(type, a, b)
  }
}

Object.defineProperties(Node, {
  start: {
    value: async function start(options) {
      const node = await nativeStart.call(Node, options)
      EventEmitter.call(node)
      node[kRefed] = true
      // Like a listening net.Server, an open node keeps the process running.
      node[kKeepAlive] = setInterval(() => {}, KEEPALIVE_MS)
      node._listen(emitFrom(node))
      return node
    },
    writable: true,
    configurable: true,
  },
})

Object.defineProperties(Node.prototype, {
  close: {
    value: async function close() {
      try {
        await nativeClose.call(this)
      } finally {
        clearInterval(this[kKeepAlive])
      }
    },
    writable: true,
    configurable: true,
  },
  [Symbol.asyncDispose]: {
    value: function asyncDispose() {
      return this.close()
    },
    writable: true,
    configurable: true,
  },
  unref: {
    value: function unref() {
      this[kKeepAlive]?.unref()
      this[kRefed] = false
      return this
    },
    writable: true,
    configurable: true,
  },
  ref: {
    value: function ref() {
      this[kKeepAlive]?.ref()
      this[kRefed] = true
      return this
    },
    writable: true,
    configurable: true,
  },
})

// --- Table#get: local reads through a slab, as Buffer.allocUnsafe pools ---

// Values are copied into `slab` at `offset` and handed out as views of it;
// a slab is never written twice at the same place, so views stay valid.
const SLAB_SIZE = 64 * 1024
let slab = Buffer.allocUnsafeSlow(SLAB_SIZE)
let offset = 0

const kHandle = Symbol('lbmkv.handle')
const nativeGet = Table.prototype.get

function localGet(table, key) {
  const handle = table[kHandle] ?? (table[kHandle] = tableHandle(table))
  for (;;) {
    const n = getInto(handle, key, slab, offset)
    if (n >= 0) {
      const value = slab.subarray(offset, offset + n)
      // Keep views 8-byte aligned, as Buffer's own pool does.
      offset = (offset + n + 7) & ~7
      return value
    }
    if (n === -1) return null
    // The value does not fit in what is left: start a new slab and retry.
    slab = Buffer.allocUnsafeSlow(Math.max(SLAB_SIZE, -2 - n))
    offset = 0
  }
}

Object.defineProperty(Table.prototype, 'get', {
  value: function get(key, options) {
    if (options === undefined || options === null) return localGet(this, key)
    return nativeGet.call(this, key, options)
  },
  writable: true,
  configurable: true,
})

module.exports = { Node, Table, version, setLogger }
module.exports.default = module.exports
