// The lbm_kv sequencer sample in Node.js: three nodes in this process share a
// counter table; clients on every node hand out numbers with an atomic
// `update`, concurrently; a conflict handler keeps the larger counter should a
// netsplit ever let both sides count on. Prints the final value and exits 1
// when a number was lost or handed out twice.
//
// Run with `node examples/node/sequencer.mjs` once the package is built
// (`npm install` in bindings/node), or `make test-node`.

import { Node } from 'lbmkv'

const CLIENTS_PER_NODE = 4
const INCREMENTS = 25

const counter = (v) => (v === null ? 0 : Number(v.toString()))
const keepMax = (key, local, remote) => String(Math.max(counter(local), counter(remote)))

const options = (name, seeds = []) => ({ name, seeds, cookie: 'sequencer-sample' })
const first = await Node.start(options('seq-1'))
const nodes = [first]
for (const name of ['seq-2', 'seq-3']) nodes.push(await Node.start(options(name, [first.address])))

try {
  const clients = []
  for (const node of nodes) {
    const table = await node.createTable('sequence', { onConflict: keepMax })
    for (let c = 0; c < CLIENTS_PER_NODE; c++) {
      clients.push(
        (async () => {
          const got = []
          for (let i = 0; i < INCREMENTS; i++) {
            const [, now] = await table.update('next', (key, v) => String(counter(v) + 1))
            got.push(counter(now))
          }
          return got
        })()
      )
    }
  }
  const handedOut = (await Promise.all(clients)).flat()
  const distinct = new Set(handedOut)
  const finals = nodes.map((n) => counter(n.table('sequence').get('next')))
  const total = nodes.length * CLIENTS_PER_NODE * INCREMENTS
  console.log(
    `${handedOut.length} numbers handed out by ${clients.length} clients on ${nodes.length} nodes, ` +
      `${distinct.size} distinct; counter on each node: [${finals.join(', ')}]`
  )
  if (distinct.size !== total || finals.some((f) => f !== total)) {
    console.error('the sequence has a gap or a duplicate')
    process.exitCode = 1
  }
} finally {
  for (const n of nodes) await n.close()
}
