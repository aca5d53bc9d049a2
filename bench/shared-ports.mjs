// Shared host ports benchmark: a service on the host's 127.0.0.1, reached from
// a sandbox through a shared port (netns-launch --share-ports, what a netns
// file with hostPorts/shareHostPort gets), against a plain process talking to
// the same service, in one run. Throughput (a bounded transfer) and round
// trip (1-byte echoes), alternating the two, several rounds; and what a
// connect() itself costs (200 sequential connects, median), the one step
// the supervisor is in. Then, with nothing shared, what the connect filter
// alone costs each connect (netns-launch --guard, which every netns worker
// gets while netns.listen() is allowed): 200 connects to a server in the same
// sandbox, with and without the filter, alternating.
//
//   npm run bench
//   node bench/shared-ports.mjs [--mib 256] [--pings 2000] [--rounds 5]
//
// Traffic stays on the host's loopback. Timing is only reported, never checked.
import { spawn } from 'node:child_process'
import { createServer } from 'node:net'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { serveBenchConnection } from './echo-server.mjs'
import { fmt, median, parseArgs, table } from './lib.mjs'

const here = dirname(fileURLToPath(import.meta.url))
const launcher = join(here, '..', 'build', 'netns-launch')
const client = join(here, 'shared-client.mjs')
const args = parseArgs(process.argv.slice(2), {
  script: import.meta.url,
  helpLines: 11,
  defaults: { mib: 256, pings: 2000, rounds: 5 },
  limits: { mib: [1, 1024], pings: [10, 100000], rounds: [1, 50] },
})

const server = createServer(serveBenchConnection)
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
const port = server.address().port

/** `sandboxed`: false (a plain process), true (shared port), or the launcher's flags for a client of the sandbox's own server. */
function runClient(sandboxed, mode, amount) {
  const command = Array.isArray(sandboxed)
    ? [launcher, ['--record', ...sandboxed, '--', process.execPath, client, '0', mode, String(amount)]]
    : sandboxed
      ? [launcher, ['--share-ports', String(port), '--', process.execPath, client, String(port), mode, String(amount)]]
      : [process.execPath, [client, String(port), mode, String(amount)]]
  return new Promise((resolve, reject) => {
    const child = spawn(command[0], command[1], { stdio: ['ignore', 'pipe', 'inherit'], cwd: join(here, '..') })
    let out = ''
    child.stdout.on('data', (d) => (out += d))
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000)
    child.on('close', (code) => {
      clearTimeout(timer)
      if (code !== 0) return reject(new Error(`${sandboxed ? 'sandboxed' : 'plain'} ${mode} client exited ${code}`))
      resolve(JSON.parse(out))
    })
  })
}

const results = { plain: { mib: [], rtt: [], connect: [] }, sandbox: { mib: [], rtt: [], connect: [] } }
const inside = { guard: [], none: [] }
try {
  for (let round = 0; round < args.rounds; round++) {
    for (const kind of round % 2 ? ['sandbox', 'plain'] : ['plain', 'sandbox']) {
      const sandboxed = kind === 'sandbox'
      results[kind].mib.push((await runClient(sandboxed, 'throughput', args.mib * 1048576)).mibPerS)
      results[kind].rtt.push(median((await runClient(sandboxed, 'rtt', args.pings)).rttUs))
      results[kind].connect.push(median((await runClient(sandboxed, 'connects', 200)).connectUs))
    }
    for (const kind of round % 2 ? ['guard', 'none'] : ['none', 'guard']) {
      inside[kind].push(median((await runClient(kind === 'guard' ? ['--guard'] : [], 'connects', 200)).connectUs))
    }
  }
} finally {
  server.close()
}
const mode = process.getuid?.() === 0 ? 'root' : 'rootless'
const tp = (k) => median(results[k].mib)
const rt = (k) => median(results[k].rtt)
const ct = (k) => median(results[k].connect)
console.log(`\nShared host port (${mode}): ${args.rounds} rounds, ${args.mib} MiB per transfer, ${args.pings} echoes per round trip sample, medians`)
console.log(
  table(
    ['path', 'throughput MiB/s', 'round trip µs', 'connect µs'],
    [
      ['plain process -> host 127.0.0.1', fmt(tp('plain')), fmt(rt('plain'), 1), fmt(ct('plain'), 1)],
      ['sandbox, shared port -> host 127.0.0.1', fmt(tp('sandbox')), fmt(rt('sandbox'), 1), fmt(ct('sandbox'), 1)],
      ['ratio (sandbox / plain)', fmt(tp('sandbox') / tp('plain'), 2) + 'x', fmt(rt('sandbox') / rt('plain'), 2) + 'x', fmt(ct('sandbox') / ct('plain'), 2) + 'x'],
    ],
  ),
)
const inner = (k) => median(inside[k])
console.log(`\nConnects inside one sandbox, nothing shared (${mode}): 200 per sample, ${args.rounds} rounds, medians`)
console.log(
  table(
    ['launcher', 'connect µs'],
    [
      ['--record (no connect filter)', fmt(inner('none'), 1)],
      ['--record --guard (the connect filter)', fmt(inner('guard'), 1)],
      ['added by the filter', `+${fmt(inner('guard') - inner('none'), 1)} (${fmt(inner('guard') / inner('none'), 2)}x)`],
    ],
  ),
)
