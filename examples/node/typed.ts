// lbmkv from TypeScript: checked against the package's index.d.ts by
// `make test-node` (tsc --noEmit). Run it after compiling, or read it as a tour.
import { Node, Table, type ConflictHandler, type NodeInfo } from 'lbmkv'

// After a netsplit, keep the larger of two decimal counters.
const keepMax: ConflictHandler = (key, local, remote) =>
  String(Math.max(Number(local?.toString() ?? 0), Number(remote?.toString() ?? 0)))

export async function tour(seeds: string[] = []): Promise<number> {
  await using node = await Node.start({ name: 'typed', seeds, cookie: 'typed-example', failureTimeoutMs: 2000 })
  node.on('nodeup', (name) => console.log(`${name.toUpperCase()} joined`))
  node.on('nodedown', (name, reason) => console.log(`${name} left: ${reason}`))
  node.on('merged', (e) => console.log(`${e.table}: ${e.keysChanged.toFixed()} keys from ${e.peer}`))
  node.on('conflict', (e) => console.log(`${e.key}: ${e.resolution === 'handler' ? 'decided' : 'fallback'}`))

  const counters: Table = await node.createTable('counters', { onConflict: keepMax })
  const previous: Buffer | null = await counters.put('visits', '0')
  const local: Buffer | null = counters.get('visits')
  const pending: Promise<Buffer | null> = counters.get('visits', { strong: true })
  const strong: Buffer | null = await pending
  const [before, after] = await counters.update('visits', (_key, v) => String(Number(v ?? 0) + 1))
  const written: Array<[Buffer, Buffer]> = await counters.putMany({ a: '1', b: new Uint8Array([50]) })
  const matched: Array<[Buffer, Buffer]> = counters.match('[ab]', '*')
  const [oldPairs, newPairs] = await counters.updateAll(async (_key, v) => Buffer.concat([v, Buffer.from('0')]))
  const gone: Array<[Buffer, Buffer]> = await counters.deleteMany(['a', Buffer.from('b')])
  const text: string | null = counters.get('visits', { encoding: 'utf8' })
  const strongText: string | null = await counters.get('visits', { strong: true, encoding: 'utf8', signal: AbortSignal.timeout(5000) })
  const [oldText, newText] = await counters.update('visits', (_key, v: string | null) => String(Number(v ?? 0) + 1), { encoding: 'utf8' })
  const textPairs: Array<[string, string]> = counters.match('*', '*', { encoding: 'utf8' })
  for (const [key, value] of counters) console.log(key.toString(), value.length)
  for await (const [key] of counters) console.log(key.byteLength)
  const keys: string[] = [...counters.keys({ encoding: 'utf8' })]
  await node.waitForMembers(1, 1000, { signal: new AbortController().signal })
  void [text, strongText, oldText, newText, textPairs, keys]
  const info: NodeInfo = node.info()
  node.unref().ref()
  // @ts-expect-error a strong read is a Promise, not a Buffer
  const wrong: Buffer | null = counters.get('visits', { strong: true })
  void [previous, local, strong, before, written, matched, oldPairs, newPairs, gone, wrong]
  console.log(`${info.name} at ${node.address}: visits=${after?.toString()}, ${counters.size} entries`)
  return counters.size
}
