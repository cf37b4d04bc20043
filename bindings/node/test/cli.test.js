'use strict'
// A cluster of this process and an `lbmkv node` process (the command-line
// node of crate lbmkv-cli): the same wire, driven from both sides.
//
// The binary is $LBMKV_BIN, else target/debug/lbmkv of the repository
// (`cargo build -p lbmkv-cli`; `make test-node` builds it).
const test = require('node:test')
const assert = require('node:assert/strict')
const { spawn } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')
const readline = require('node:readline')

const { COOKIE, start, waitFor, strPairs } = require('./helpers')

const repo = path.resolve(__dirname, '..', '..', '..')
const BIN =
  process.env.LBMKV_BIN || path.join(process.env.CARGO_TARGET_DIR || path.join(repo, 'target'), 'debug', 'lbmkv')

/** An `lbmkv node` process driven line by line. */
class CliNode {
  constructor(t, args) {
    assert.ok(fs.existsSync(BIN), `the lbmkv command is missing at ${BIN}: cargo build -p lbmkv-cli`)
    this.proc = spawn(BIN, ['node', ...args], { stdio: ['pipe', 'pipe', 'inherit'] })
    t.after(() => {
      if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGKILL')
    })
    this.lines = []
    this.waiters = []
    this.events = []
    readline.createInterface({ input: this.proc.stdout }).on('line', (line) => {
      if (line.startsWith('EVENT ')) this.events.push(JSON.parse(line.slice(6)))
      else if (this.waiters.length) this.waiters.shift()(line)
      else this.lines.push(line)
    })
  }

  /** The next reply line (bounded wait). */
  line(ms = 10000) {
    if (this.lines.length) return Promise.resolve(this.lines.shift())
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no reply from lbmkv node')), ms)
      this.waiters.push((l) => {
        clearTimeout(timer)
        resolve(l)
      })
    })
  }

  /** Sends one command and returns its one-line reply. */
  async cmd(command) {
    this.proc.stdin.write(`${command}\n`)
    const r = await this.line()
    if (process.env.DEBUG_CLI) console.log('CMD', command, '->', r)
    return r
  }

  /** Sends a command whose reply is lines up to `END`. */
  async list(command) {
    this.proc.stdin.write(`${command}\n`)
    const out = []
    for (let l = await this.line(); l !== 'END'; l = await this.line()) {
      if (process.env.DEBUG_CLI) console.log('LIST', command, '->', l)
      out.push(l)
    }
    return out
  }
}

test('a Node.js node and an lbmkv node process form one cluster', async (t) => {
  const a = await start(t, 'a')
  const downs = []
  a.on('nodedown', (name) => downs.push(name))
  const cli = new CliNode(t, [
    '--name', 'cli', '--cookie', COOKIE, '--seed', a.address, '--events',
    '--failure-timeout-ms', '600', '--heartbeat-ms', '50', '--request-timeout-ms', '3000',
  ])
  const ready = await cli.line()
  const m = /^READY cli (\S+)$/.exec(ready)
  assert.ok(m, `first line: ${ready}`)
  const cliAddress = m[1]
  await waitFor('the two-node view', () => a.members().length === 2)
  assert.deepStrictEqual(a.members(), ['a', 'cli'])
  await waitFor('the view of the shell', async () => (await cli.list('members')).length === 2)
  assert.deepStrictEqual(await cli.list('members'), ['ITEM a', 'ITEM cli'])

  // Replication both ways.
  const calls = []
  const tab = await a.createTable('t', {
    onConflict: (key, local, remote) => {
      calls.push(key.toString())
      return `${local}|${remote}`
    },
  })
  assert.strictEqual(await cli.cmd('create t'), 'OK')
  await tab.put('from-js', 'hello from node.js')
  assert.strictEqual(await cli.cmd('get t from-js'), 'VALUE hello from node.js')
  assert.strictEqual(await cli.cmd('put t from-cli hello from the shell'), 'OK')
  assert.strictEqual(tab.get('from-cli').toString(), 'hello from the shell')
  assert.deepStrictEqual(await cli.list('match t from-*'), [
    'ENTRY from-cli hello from the shell',
    'ENTRY from-js hello from node.js',
  ])

  // One counter, incremented from both sides, loses nothing.
  const js = Array.from({ length: 10 }, () => tab.update('n', (k, v) => String(Number(v ?? 0) + 1)))
  const shell = []
  for (let i = 0; i < 10; i++) shell.push(await cli.cmd('incr t n'))
  await Promise.all(js)
  assert.ok(shell.every((l) => /^VALUE \d+$/.test(l)))
  assert.strictEqual(tab.get('n').toString(), '20')
  assert.strictEqual(await cli.cmd('sget t n'), 'VALUE 20')

  // A netsplit: both sides write the same key; the JS handler decides.
  await a.disconnect('cli')
  assert.strictEqual(await cli.cmd('disconnect a'), 'OK')
  await waitFor('the split', () => a.members().length === 1)
  await tab.put('k', 'js-side')
  assert.strictEqual(await cli.cmd('put t k shell-side'), 'OK')
  assert.strictEqual(await cli.cmd('put t only-shell x'), 'OK')
  // Heal: the first connect is refused by the side that still bans.
  assert.match(await cli.cmd(`connect ${a.address}`), /^ERR /)
  await a.connect(cliAddress)
  await waitFor('the heal', () => a.members().length === 2)
  await waitFor('the merge', () => tab.get('k')?.toString() === 'js-side|shell-side' && tab.get('only-shell') !== null)
  await waitFor('the merge on the shell side', async () => (await cli.cmd('get t k')) === 'VALUE js-side|shell-side')
  assert.deepStrictEqual(calls, ['k'])
  const shellView = (await cli.list('match t *')).map((l) => l.split(' ').slice(1))
  assert.deepStrictEqual(
    shellView.map(([k]) => k),
    strPairs(tab.match()).map(([k]) => k)
  )
  assert.ok(cli.events.some((e) => e.type === 'merged' && e.table === 't'))

  // Leaving: the Node.js side sees nodedown at once.
  cli.proc.stdin.write('quit\n')
  const code = await new Promise((resolve) => cli.proc.on('exit', resolve))
  assert.strictEqual(code, 0)
  await waitFor('nodedown', () => downs.includes('cli'), 400)
  assert.deepStrictEqual(a.members(), ['a'])
})
