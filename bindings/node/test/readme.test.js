'use strict'
// The README's JavaScript snippets run as written, in a scratch project that
// installs this package the way the README says (`npm install <path>` of this
// directory). A snippet with an `import` runs as an ES module, any other as
// CommonJS; each must exit 0 on its own within the time limit.
const { test, before, after } = require('node:test')
const assert = require('node:assert')
const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const pkg = path.resolve(__dirname, '..')
let app

/** The ```js blocks of a Markdown file. */
function snippets(file) {
  const text = fs.readFileSync(file, 'utf8')
  return [...text.matchAll(/^```js\n([\s\S]*?)^```$/gm)].map((m) => m[1])
}

before(() => {
  app = fs.mkdtempSync(path.join(os.tmpdir(), 'lbmkv-readme-'))
  fs.writeFileSync(path.join(app, 'package.json'), '{"name": "app", "private": true}\n')
  const r = spawnSync('npm', ['install', '--no-audit', '--no-fund', '--silent', pkg], {
    cwd: app,
    encoding: 'utf8',
    timeout: 240000,
  })
  assert.strictEqual(r.status, 0, `npm install ${pkg} failed: ${r.stderr || r.error}`)
})

after(() => {
  if (app) fs.rmSync(app, { recursive: true, force: true })
})

test('the installed package resolves inside the project, by require and by import', () => {
  const cjs = spawnSync(process.execPath, ['-e',
    "const p = require.resolve('lbmkv'); const { Node, Table, version } = require('lbmkv');" +
    "if (typeof Node.start !== 'function' || typeof Table !== 'function') throw new Error('bad exports');" +
    "console.log(p, version())"], { cwd: app, encoding: 'utf8', timeout: 30000 })
  assert.strictEqual(cjs.status, 0, cjs.stderr)
  // npm links a directory it installs: the project's lbmkv is this package.
  assert.strictEqual(fs.realpathSync(path.join(app, 'node_modules', 'lbmkv')), fs.realpathSync(pkg))
  assert.ok(cjs.stdout.startsWith(fs.realpathSync(pkg)), cjs.stdout)
  const esm = spawnSync(process.execPath, ['--input-type=module', '-e',
    "import lbmkv, { Node, Table, version, setLogger } from 'lbmkv';" +
    "if (lbmkv.Node !== Node || typeof setLogger !== 'function' || !(Table.prototype[Symbol.iterator])) throw new Error('bad exports');" +
    "console.log(version())"], { cwd: app, encoding: 'utf8', timeout: 30000 })
  assert.strictEqual(esm.status, 0, esm.stderr)
})

const blocks = snippets(path.join(pkg, 'README.md'))

test('the README has snippets to run', () => {
  assert.ok(blocks.length >= 3, `only ${blocks.length} js blocks`)
})

blocks.forEach((code, i) => {
  const first = code.split('\n').find((l) => l.trim() !== '') || ''
  test(`README snippet ${i + 1} runs as written: ${first.slice(0, 60)}`, () => {
    const esm = /^import /m.test(code)
    const file = path.join(app, `snippet-${i + 1}.${esm ? 'mjs' : 'cjs'}`)
    fs.writeFileSync(file, code)
    const r = spawnSync(process.execPath, [file], { cwd: app, encoding: 'utf8', timeout: 30000 })
    assert.strictEqual(r.signal, null, `snippet ${i + 1} was killed (${r.signal}): ${r.stderr}`)
    assert.strictEqual(r.status, 0, `snippet ${i + 1} failed:\n${code}\n${r.stderr}`)
  })
})
