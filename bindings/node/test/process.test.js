'use strict'
// Behaviour seen from outside the process: the event loop stays responsive
// while writes wait on a stalled peer, and the process exits when it should.
const test = require('node:test')
const assert = require('node:assert/strict')
const { spawn } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')
const readline = require('node:readline')

const { start, waitFor } = require('./helpers')

const CHILD = path.join(__dirname, 'fixtures', 'child.js')

/** Whether the process is stopped (state `T` in /proc/PID/stat). */
function stopped(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  return stat.slice(stat.lastIndexOf(')') + 2).startsWith('T')
}

/** Runs the child script; resolves with its exit code, or null when it is still running after `ms`. */
function runChild(t, args, ms) {
  const child = spawn(process.execPath, [CHILD, ...args], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  let out = ''
  child.stdout.on('data', (d) => (out += d))
  const started = Date.now()
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve({ code: null, out, ms: Date.now() - started }), ms)
    child.on('exit', (code) => {
      clearTimeout(timer)
      resolve({ code, out, ms: Date.now() - started })
    })
  })
}

test('the process exits by itself after close', async (t) => {
  const r = await runChild(t, ['close'], 10000)
  assert.strictEqual(r.code, 0, `exit code (output: ${r.out})`)
  assert.match(r.out, /DONE/)
})

test('an unref()ed node lets the process exit', async (t) => {
  const r = await runChild(t, ['unref'], 10000)
  assert.strictEqual(r.code, 0)
  assert.match(r.out, /DONE/)
})

test('an open node keeps the process alive', async (t) => {
  const r = await runChild(t, ['open'], 1500)
  assert.match(r.out, /DONE/)
  assert.strictEqual(r.code, null, 'the process should still run')
})

test('the event loop stays responsive while writes wait on a stopped peer', async (t) => {
  const a = await start(t, 'a', { failureTimeoutMs: 1500 })
  const peer = spawn(process.execPath, [CHILD, 'peer', a.address], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.after(() => {
    peer.kill('SIGCONT')
    peer.kill('SIGKILL')
  })
  const line = await new Promise((resolve, reject) => {
    const rl = readline.createInterface({ input: peer.stdout })
    rl.once('line', resolve)
    peer.once('exit', (code) => reject(new Error(`peer exited with ${code}`)))
  })
  assert.match(line, /^READY /)
  await waitFor('the peer in the view', () => a.members().length === 2)
  const tab = await a.createTable('t')
  await tab.put('warm', 'up') // acknowledged by the live peer

  const downs = []
  a.on('nodedown', (name) => downs.push(name))
  peer.kill('SIGSTOP')
  // The signal takes effect asynchronously: wait until the kernel shows the peer stopped.
  await waitFor('the peer stopped', () => stopped(peer.pid), 2000)
  let ticks = 0
  let last = Date.now()
  let maxGap = 0
  const timer = setInterval(() => {
    const now = Date.now()
    maxGap = Math.max(maxGap, now - last)
    last = now
    ticks++
  }, 10)
  const began = Date.now()
  const outcomes = await Promise.allSettled(Array.from({ length: 20 }, (_, i) => tab.put(`k${i}`, 'v')))
  const waited = Date.now() - began
  clearInterval(timer)

  // The writes waited for the stopped peer to be declared down (the event
  // may reach the loop just after the writes settle)...
  assert.ok(waited >= 1000, `writes waited only ${waited} ms`)
  await waitFor('the nodedown event of the stopped peer', () => downs.length > 0, 2000)
  assert.deepStrictEqual(downs, ['peer'])
  // ...and never blocked the loop meanwhile.
  assert.ok(maxGap < 250, `the event loop stalled for ${maxGap} ms`)
  assert.ok(ticks >= waited / 10 / 3, `only ${ticks} timer ticks in ${waited} ms`)
  for (const o of outcomes) {
    if (o.status === 'rejected') assert.ok(['UNAVAILABLE', 'TIMEOUT'].includes(o.reason.code), o.reason.message)
  }
  // The survivor keeps writing.
  await tab.put('after', 'v')
  assert.strictEqual(tab.get('after').toString(), 'v')
})
