'use strict'
// Mutual TLS: two nodes with certificates written by `lbmkv certs` at test
// time replicate a put; a missing file is named in the error.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { execFileSync } = require('node:child_process')

const { start, waitFor } = require('./helpers')

const repo = path.join(__dirname, '..', '..', '..')
const bin =
  process.env.LBMKV_BIN || path.join(process.env.CARGO_TARGET_DIR || path.join(repo, 'target'), 'debug', 'lbmkv')

/** A directory of certificates for `names`, removed when the test ends. */
function certs(t, names) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lbmkv-node-tls-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  execFileSync(bin, ['certs', '--out', dir, '--names', names.join(',')], { stdio: 'pipe', timeout: 60000 })
  return dir
}

function tls(dir, name) {
  return { cert: path.join(dir, `${name}.pem`), key: path.join(dir, `${name}.key`), ca: path.join(dir, 'ca.pem') }
}

test('two TLS nodes replicate a put', async (t) => {
  const dir = certs(t, ['node-tls-a', 'node-tls-b'])
  const a = await start(t, 'node-tls-a', { tls: tls(dir, 'node-tls-a') })
  const b = await start(t, 'node-tls-b', { seeds: [a.address], minMembers: 2, tls: tls(dir, 'node-tls-b') })
  await waitFor('a sees b', () => a.members().length === 2)
  const tb = await b.createTable('tls')
  await tb.put('k', 'over tls')
  const ta = await a.createTable('tls')
  assert.deepStrictEqual(ta.get('k'), Buffer.from('over tls'))
})

test('a missing TLS file is named in the error', async (t) => {
  const dir = certs(t, ['node-tls-c'])
  const opts = { ...tls(dir, 'node-tls-c'), ca: path.join(dir, 'nope.pem') }
  await assert.rejects(start(t, 'node-tls-c', { tls: opts }), (e) => {
    assert.strictEqual(e.code, 'INVALID_ARGUMENT')
    assert.match(e.message, /nope\.pem/)
    return true
  })
})
