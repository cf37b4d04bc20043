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
const { Node, Table, Watch, getInto, tableHandle, version, setLogger } = native

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

// --- Errors: TypeError and RangeError for wrong argument types and ranges ---

// The addon marks such errors with these codes; they become TypeError and
// RangeError objects whose `code` is INVALID_ARGUMENT, as the other argument
// errors of lbmkv.
const NATIVE_CLASSES = { ERR_INVALID_ARG_TYPE: TypeError, ERR_OUT_OF_RANGE: RangeError }

function fixError(e) {
  const Class = e !== null && typeof e === 'object' ? NATIVE_CLASSES[e.code] : undefined
  if (Class === undefined || e instanceof Class) return e
  const err = new Class(e.message)
  err.code = 'INVALID_ARGUMENT'
  return err
}

function invalidArgument(Class, message) {
  const err = new Class(message)
  err.code = 'INVALID_ARGUMENT'
  return err
}

function describe(v) {
  if (v === null) return 'null'
  if (Array.isArray(v)) return 'an array'
  return typeof v === 'object' ? 'an object' : `${typeof v} ${String(v)}`
}

// --- Per-call options: { encoding, signal } ---

const utf8 = (b) => (b === null || b === undefined ? null : b.toString('utf8'))

// The decoder of `options.encoding`: null for Buffers ('buffer', the default),
// a function for 'utf8'.
function decoderOf(options) {
  if (options === undefined || options === null) return null
  if (typeof options !== 'object') {
    throw invalidArgument(TypeError, `options must be an object, got ${describe(options)}`)
  }
  const encoding = options.encoding
  if (encoding === undefined || encoding === null || encoding === 'buffer') return null
  if (encoding === 'utf8' || encoding === 'utf-8') return utf8
  throw invalidArgument(TypeError, `options.encoding must be 'utf8' or 'buffer', got ${describe(encoding)}`)
}

function signalOf(options) {
  const signal = options === undefined || options === null ? undefined : options.signal
  if (signal === undefined || signal === null) return null
  if (typeof signal !== 'object' || typeof signal.aborted !== 'boolean' ||
      typeof signal.addEventListener !== 'function') {
    throw invalidArgument(TypeError, `options.signal must be an AbortSignal, got ${describe(signal)}`)
  }
  return signal
}

function abortError(signal) {
  const err = new Error('The operation was aborted', { cause: signal.reason })
  err.name = 'AbortError'
  err.code = 'ABORT_ERR'
  return err
}

// Runs `start()` (a Promise) unless `signal` is aborted already, and rejects
// with an AbortError as soon as it aborts. The operation itself goes on: a
// write handed to the engine is applied or refused on the cluster all the same.
function abortable(signal, start, onAbandoned) {
  if (signal === null) return start()
  if (signal.aborted) return Promise.reject(abortError(signal))
  const work = start()
  return new Promise((resolve, reject) => {
    let abandoned = false
    const onAbort = () => {
      abandoned = true
      reject(abortError(signal))
    }
    signal.addEventListener('abort', onAbort, { once: true })
    work.then(
      (v) => {
        signal.removeEventListener('abort', onAbort)
        if (abandoned && onAbandoned) onAbandoned(v)
        resolve(v)
      },
      (e) => {
        signal.removeEventListener('abort', onAbort)
        reject(e)
      }
    )
  })
}

// A method that returns a Promise: argument errors reject (never throw) and
// native argument errors get their JavaScript class.
function promising(fn) {
  return function (...args) {
    let p
    try {
      p = fn.apply(this, args)
    } catch (e) {
      return Promise.reject(fixError(e))
    }
    return p.then(undefined, (e) => {
      throw fixError(e)
    })
  }
}

// A synchronous method whose native argument errors get their JavaScript class.
function synchronous(fn) {
  return function (...args) {
    try {
      return fn.apply(this, args)
    } catch (e) {
      throw fixError(e)
    }
  }
}

function define(target, methods) {
  for (const name of Reflect.ownKeys(methods)) {
    Object.defineProperty(target, name, { value: methods[name], writable: true, configurable: true })
  }
}

// `options.ttl`: milliseconds a written value lives (undefined: no expiry).
function ttlOf(options) {
  const ttl = options === undefined || options === null ? undefined : options.ttl
  if (ttl === undefined || ttl === null) return undefined
  if (typeof ttl !== 'number') {
    throw invalidArgument(TypeError, `options.ttl must be a number of milliseconds, got ${describe(ttl)}`)
  }
  if (!Number.isFinite(ttl) || ttl < 1) {
    throw invalidArgument(RangeError, `options.ttl must be a finite number of milliseconds, at least 1, got ${ttl}`)
  }
  return ttl
}

const decodeValue = (dec) => (v) => (dec === null ? v : dec(v))
const decodePairs = (dec) => (pairs) => (dec === null ? pairs : pairs.map(([k, v]) => [dec(k), dec(v)]))
// An update function that sees decoded arguments.
const decodedFn = (dec, fn) => (dec === null || typeof fn !== 'function' ? fn : (k, v) => fn(dec(k), dec(v)))

const T = Table.prototype
const nativeTable = {
  get: T.get,
  put: T.put,
  putMany: T.putMany,
  delete: T.delete,
  deleteMany: T.deleteMany,
  match: T.match,
  update: T.update,
  updateAll: T.updateAll,
  has: T.has,
  keys: T._keys,
  setConflictHandler: T.setConflictHandler,
  conflicts: T.conflicts,
}

// Wraps an async table method whose options are its argument `at`.
function tableCall(call, decode, at) {
  return promising(function (...args) {
    const options = args[at]
    const dec = decoderOf(options)
    const signal = signalOf(options)
    const ttl = ttlOf(options)
    const p = abortable(signal, () => call.call(this, dec, ttl, ...args.slice(0, at)))
    return p.then(decode(dec))
  })
}

const strongGet = tableCall(function (dec, _ttl, k) {
  return nativeTable.get.call(this, k, { strong: true })
}, decodeValue, 1)

define(T, {
  get: function get(key, options) {
    if (options === undefined || options === null) {
      try {
        return localGet(this, key)
      } catch (e) {
        throw fixError(e)
      }
    }
    if (typeof options === 'object' && options.strong === true) return strongGet.call(this, key, options)
    try {
      const dec = decoderOf(options)
      const local = options.strong === undefined || options.strong === false
      // A `strong` that is not a boolean: the addon says why.
      const v = local ? localGet(this, key) : nativeTable.get.call(this, key, options)
      return dec === null ? v : dec(v)
    } catch (e) {
      throw fixError(e)
    }
  },
  put: tableCall(function (dec, ttl, k, v) {
    return nativeTable.put.call(this, k, v, ttl)
  }, decodeValue, 2),
  putMany: tableCall(function (dec, ttl, entries) {
    return nativeTable.putMany.call(this, entries, ttl)
  }, decodePairs, 1),
  delete: tableCall(function (dec, _ttl, k) {
    return nativeTable.delete.call(this, k)
  }, decodeValue, 1),
  deleteMany: tableCall(function (dec, _ttl, keys) {
    return nativeTable.deleteMany.call(this, keys)
  }, decodePairs, 1),
  update: tableCall(function (dec, ttl, k, fn) {
    return nativeTable.update.call(this, k, decodedFn(dec, fn), ttl)
  }, (dec) => ([o, n]) => (dec === null ? [o, n] : [dec(o), dec(n)]), 2),
  updateAll: tableCall(function (dec, _ttl, fn) {
    return nativeTable.updateAll.call(this, decodedFn(dec, fn))
  }, (dec) => ([o, n]) => (dec === null ? [o, n] : [decodePairs(dec)(o), decodePairs(dec)(n)]), 1),
  match: synchronous(function match(keyPattern, valuePattern, options) {
    return decodePairs(decoderOf(options))(nativeTable.match.call(this, keyPattern, valuePattern))
  }),
  has: synchronous(nativeTable.has),
  ttl: synchronous(T.ttl),
  watch: synchronous(function watch(prefix, options) {
    if (options !== undefined && options !== null && typeof options !== 'object') {
      throw invalidArgument(TypeError, `options must be an object, got ${describe(options)}`)
    }
    const dec = decoderOf(options)
    const signal = signalOf(options)
    const buffer = options === undefined || options === null ? undefined : options.buffer
    if (buffer !== undefined && buffer !== null &&
        (typeof buffer !== 'number' || !Number.isInteger(buffer) || buffer < 1 || buffer > 2 ** 32 - 1)) {
      throw invalidArgument(RangeError, `options.buffer must be a whole number of changes, at least 1, got ${describe(buffer)}`)
    }
    const w = T._watch.call(this, prefix === undefined || prefix === null ? '' : prefix, buffer ?? 0)
    initWatch(w, dec, signal)
    return w
  }),
  setConflictHandler: synchronous(nativeTable.setConflictHandler),
  conflicts: synchronous(nativeTable.conflicts),
  // Map-like iteration over a snapshot taken when it starts, sorted by key.
  keys: synchronous(function keys(options) {
    const dec = decoderOf(options)
    const ks = nativeTable.keys.call(this)
    return (dec === null ? ks : ks.map(dec)).values()
  }),
  values: synchronous(function values(options) {
    return this.match('*', '*', options).map(([, v]) => v).values()
  }),
  entries: synchronous(function entries(options) {
    return this.match('*', '*', options).values()
  }),
  [Symbol.iterator]: function iterator() {
    return this.entries()
  },
  [Symbol.asyncIterator]: async function* asyncIterator() {
    yield* this.entries()
  },
})

// --- Watch: an async iterable of changes, and an EventEmitter ---

const kDecode = Symbol('lbmkv.decode')
const kEnded = Symbol('lbmkv.ended')
const kPumping = Symbol('lbmkv.pumping')
const W = Watch.prototype
const nativeWatch = { next: W._next, close: W.close }

Object.setPrototypeOf(W, EventEmitter.prototype)

function initWatch(w, dec, signal) {
  EventEmitter.call(w)
  w[kDecode] = dec
  w[kEnded] = false
  w[kPumping] = false
  if (signal !== null) {
    if (signal.aborted) w.close()
    else {
      const onAbort = () => w.close()
      signal.addEventListener('abort', onAbort, { once: true })
      w.once('end', () => signal.removeEventListener('abort', onAbort))
    }
  }
  // The first `change` or `lagged` listener starts delivering items as events.
  w.on('newListener', (event) => {
    if ((event === 'change' || event === 'lagged') && !w[kPumping]) {
      w[kPumping] = true
      process.nextTick(() => pump(w))
    }
  })
}

function decodeItem(dec, item) {
  if (dec === null || item.type !== 'change') return item
  return { ...item, key: dec(item.key), value: dec(item.value), prev: dec(item.prev) }
}

// The next item, `null` when none came within `timeoutMs`, `undefined` once ended.
async function nextItem(w, timeoutMs) {
  if (w[kEnded]) return undefined
  let item
  try {
    item = await nativeWatch.next.call(w, timeoutMs)
  } catch (e) {
    throw fixError(e)
  }
  if (item === false) {
    if (!w[kEnded]) {
      w[kEnded] = true
      w.emit('end')
    }
    return undefined
  }
  return item === null ? null : decodeItem(w[kDecode], item)
}

async function pump(w) {
  for (;;) {
    let item
    try {
      item = await nextItem(w, undefined)
    } catch (e) {
      w.emit('error', e)
      return
    }
    if (item === undefined) return
    if (item === null) continue
    if (item.type === 'lagged') w.emit('lagged', item.count)
    else w.emit('change', item)
  }
}

define(W, {
  next: async function next(timeoutMs) {
    if (timeoutMs !== undefined && timeoutMs !== null &&
        (typeof timeoutMs !== 'number' || !(timeoutMs >= 0))) {
      throw invalidArgument(RangeError, `timeoutMs must be a non-negative number, got ${describe(timeoutMs)}`)
    }
    return nextItem(this, timeoutMs ?? undefined)
  },
  close: function close() {
    nativeWatch.close.call(this)
  },
  [Symbol.asyncIterator]: async function* asyncIterator() {
    try {
      for (;;) {
        const item = await nextItem(this, undefined)
        if (item === undefined) return
        if (item !== null) yield item
      }
    } finally {
      // Leaving the loop (break, return, throw) closes the watch.
      this.close()
    }
  },
  [Symbol.dispose]: function dispose() {
    this.close()
  },
})

// --- Node: argument errors, AbortSignal ---

const N = Node.prototype
const nativeNode = {
  createTable: N.createTable,
  connect: N.connect,
  disconnect: N.disconnect,
  waitForMembers: N.waitForMembers,
  table: N.table,
}

function withoutSignal(options) {
  if (options === undefined || options === null || typeof options !== 'object' || !('signal' in options)) {
    return options
  }
  const { signal: _signal, ...rest } = options
  return rest
}

const startNode = Node.start
define(Node, {
  start: promising(function start(options) {
    const signal = signalOf(options)
    return abortable(signal, () => startNode.call(Node, withoutSignal(options)), (node) => node.close())
  }),
})

define(N, {
  createTable: promising(function createTable(name, options) {
    const signal = signalOf(options)
    return abortable(signal, () => nativeNode.createTable.call(this, name, withoutSignal(options)))
  }),
  connect: promising(function connect(address, options) {
    return abortable(signalOf(options), () => nativeNode.connect.call(this, address))
  }),
  disconnect: promising(nativeNode.disconnect),
  waitForMembers: promising(function waitForMembers(n, timeoutMs, options) {
    return abortable(signalOf(options), () => nativeNode.waitForMembers.call(this, n, timeoutMs))
  }),
  table: synchronous(nativeNode.table),
})

module.exports = { Node, Table, Watch, version, setLogger }
module.exports.default = module.exports
