'use strict'
// The engine's logs reach JavaScript through setLogger.
const test = require('node:test')
const assert = require('node:assert/strict')

const { setLogger } = require('..')
const { start, waitFor, throwsWith } = require('./helpers')

test('a peer with a wrong cookie is a warning of the log handler', async (t) => {
  const seen = []
  setLogger('warn', (level, target, message) => seen.push({ level, target, message }))
  t.after(() => setLogger('off', null))
  const good = await start(t, 'logs-good')
  await start(t, 'logs-intruder', { cookie: 'not-the-cookie', seeds: [good.address] })
  await waitFor('the refused peer\'s warning', () =>
    seen.some(
      (r) =>
        r.level === 'warn' &&
        r.target === 'lbmkv::cluster::membership' &&
        r.message.includes('failed authentication (different cookie)')
    )
  )
  assert.ok(
    seen.every((r) => r.level === 'warn' || r.level === 'error'),
    'nothing below the level set'
  )
})

test('setLogger refuses a level it does not know', () => {
  throwsWith(assert, () => setLogger('loud', () => {}), 'INVALID_ARGUMENT')
})
