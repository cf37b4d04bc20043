'use strict'
// Builds the native addon (release) with @napi-rs/cli and installs it as
// lbmkv.node next to index.js. The type definitions are written to
// index.d.ts only with --dts (the checked-in file is compared, not rewritten,
// by the tests). With --install (the npm `install` hook) a package that
// already carries lbmkv.node and no Rust sources (an installed tarball) is
// left as it is.
const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const root = path.resolve(__dirname, '..')
const args = process.argv.slice(2)
const install = args.includes('--install')
const dtsIndex = args.indexOf('--dts')
const dtsOut = dtsIndex >= 0 ? path.resolve(args[dtsIndex + 1] || path.join(root, 'index.d.ts')) : null

const hasSources = fs.existsSync(path.join(root, 'Cargo.toml'))
if (install && !hasSources) {
  if (fs.existsSync(path.join(root, 'lbmkv.node'))) process.exit(0)
  console.error('lbmkv: this package has neither the native addon nor its Rust sources')
  process.exit(1)
}

const cli = path.join(root, 'node_modules', '@napi-rs', 'cli', 'dist', 'cli.js')
if (!fs.existsSync(cli)) {
  console.error('lbmkv: @napi-rs/cli is missing; run `npm install` (with dev dependencies) first')
  process.exit(1)
}
const out = fs.mkdtempSync(path.join(os.tmpdir(), 'lbmkv-node-build-'))
const env = { ...process.env }
if (!env.CARGO_TARGET_DIR) env.CARGO_TARGET_DIR = path.resolve(root, '..', '..', 'target', 'node')
const r = spawnSync(
  process.execPath,
  [cli, 'build', '--release', '--manifest-path', path.join(root, 'Cargo.toml'), '--package-json-path',
    path.join(root, 'package.json'), '-o', out, '--dts', 'index.d.ts'],
  { cwd: root, env, stdio: 'inherit' }
)
try {
  if (r.status !== 0) {
    console.error(`lbmkv: building the native addon failed (${r.error ? r.error.message : `exit ${r.status}`})`)
    process.exit(1)
  }
  // Replace, never overwrite in place: a loaded addon must keep its file.
  const tmp = path.join(root, `.lbmkv.node.${process.pid}`)
  fs.copyFileSync(path.join(out, 'lbmkv.node'), tmp)
  fs.renameSync(tmp, path.join(root, 'lbmkv.node'))
  if (dtsOut) fs.copyFileSync(path.join(out, 'index.d.ts'), dtsOut)
} finally {
  fs.rmSync(out, { recursive: true, force: true })
}
