'use strict'
// Promises settle on the thread that made them: in worker threads, and when a
// worker ends with operations still in flight.
const test = require('node:test')
const assert = require('node:assert/strict')
const { Worker } = require('node:worker_threads')
const path = require('node:path')

const lbmkv = require('..')
const { options } = require('./helpers')

const WORKER = `
const { parentPort, workerData } = require('node:worker_threads')
const { Node } = require(workerData.lbmkv)
;(async () => {
  const node = await Node.start(workerData.options)
  const t = await node.createTable('w')
  const puts = []
  for (let i = 0; i < 200; i++) puts.push(t.put('k' + i, 'v' + i))
  const previous = await Promise.all(puts)
  const strong = await t.get('k199', { strong: true })
  parentPort.postMessage({ settled: previous.length, strong: strong.toString() })
  if (workerData.leave) {
    // Ends the worker with writes still in flight: their promises die with it.
    for (let i = 0; i < 50; i++) t.put('late' + i, 'x')
    process.exit(0)
  }
  await node.close()
})()
`

function runWorker (name, leave) {
  return new Promise((resolve, reject) => {
    const w = new Worker(WORKER, {
      eval: true,
      workerData: { lbmkv: path.join(__dirname, '..'), options: options(name), leave }
    })
    let got = null
    w.on('message', (m) => { got = m })
    w.on('error', reject)
    w.on('exit', (code) => resolve({ code, got }))
  })
}

test('operations in worker threads settle there, also next to the main thread', async () => {
  const main = await lbmkv.Node.start(options('main-thread'))
  try {
    const t = await main.createTable('m')
    const [a, b, mine] = await Promise.all([
      runWorker('worker-a', false),
      runWorker('worker-b', false),
      Promise.all(Array.from({ length: 100 }, (_, i) => t.put('k' + i, 'v')))
    ])
    for (const r of [a, b]) {
      assert.strictEqual(r.code, 0)
      assert.deepStrictEqual(r.got, { settled: 200, strong: 'v199' })
    }
    assert.strictEqual(mine.length, 100)
  } finally {
    await main.close()
  }
})

test('a worker that exits with writes in flight leaves the main thread working', async () => {
  const r = await runWorker('worker-leaving', true)
  assert.strictEqual(r.code, 0)
  assert.deepStrictEqual(r.got, { settled: 200, strong: 'v199' })
  // The runtime finishes the abandoned writes; nothing reaches the gone
  // worker, and this thread's promises still settle.
  const main = await lbmkv.Node.start(options('after-worker'))
  try {
    const t = await main.createTable('m')
    assert.strictEqual(await t.put('k', 'v'), null)
  } finally {
    await main.close()
  }
})
