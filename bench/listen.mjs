// netns.listen() benchmark: a server in a sandboxed Vitest file, listening on
// a socket handed in from the host (netns.listen()), against the same server
// in a plain Vitest file listening on the host's 127.0.0.1 itself, both
// called from a plain process on the host, in one run. Throughput (a bounded
// transfer) and round trip (1-byte echoes), alternating the two servers,
// several rounds. Goals (issue: sockets across the boundary): throughput
// >= 0.95x and round trip <= 1.05x of the plain server.
//
//   npm run bench
//   node bench/listen.mjs [--mib 256] [--pings 2000] [--rounds 5]
//
// Traffic stays on the host's loopback. Timing is only reported, never checked.
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { fmt, median, parseArgs, table } from './lib.mjs'

const here = dirname(fileURLToPath(import.meta.url))
const repoRoot = join(here, '..')
const client = join(here, 'shared-client.mjs')
const vitestCli = join(repoRoot, 'node_modules', 'vitest', 'vitest.mjs')
const work = join(here, '.work', 'listen')
const args = parseArgs(process.argv.slice(2), {
  script: import.meta.url,
  helpLines: 9,
  defaults: { mib: 256, pings: 2000, rounds: 5 },
  limits: { mib: [1, 1024], pings: [10, 100000], rounds: [1, 50] },
})

// The project: one file per variant, each serving until the bench writes `done`.
const serve = (listen) => `import { createServer } from 'node:net'
import { existsSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { ${listen ? "test } from 'vitest-environment-netns/test'" : "test } from 'vitest'"}
import { serveBenchConnection } from '${join(here, 'echo-server.mjs')}'

test('serves the bench', async (${listen ? '{ netns }' : ''}) => {
  const dir = process.env.BENCH_LISTEN_DIR
  const server = createServer(serveBenchConnection)
  ${listen ? 'const listener = await netns.listen()\n  await new Promise((resolve) => server.listen(listener, resolve))' : "await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))"}
  writeFileSync(join(dir, '${listen ? 'netns' : 'plain'}.port'), String(server.address().port))
  const deadline = Date.now() + ${30 * 60_000}
  while (!existsSync(join(dir, 'done')) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
  server.close()
}, ${31 * 60_000})
`
rmSync(work, { recursive: true, force: true })
mkdirSync(join(work, 'test'), { recursive: true })
writeFileSync(join(work, 'test', 'plain.test.mjs'), serve(false))
writeFileSync(join(work, 'test', 'netns.test.mjs'), serve(true))
writeFileSync(join(work, 'plain.config.mjs'), `export default { test: { pool: 'forks', include: ['test/plain.test.mjs'] } }\n`)
writeFileSync(
  join(work, 'netns.config.mjs'),
  `import { netns } from 'vitest-environment-netns/plugin'\nexport default { plugins: [netns({ uplink: false })], test: { environment: 'netns', include: ['test/netns.test.mjs'] } }\n`,
)

const runs = []
function startVitest(config) {
  const child = spawn(process.execPath, [vitestCli, 'run', '--root', work, '--config', config], {
    cwd: work,
    env: { ...process.env, BENCH_LISTEN_DIR: work, FORCE_COLOR: '0' },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  })
  let out = ''
  child.stdout.on('data', (d) => (out += d))
  child.stderr.on('data', (d) => (out += d))
  const exited = new Promise((resolve) => child.on('close', (code) => resolve({ code, out })))
  runs.push({ child, exited })
  return exited
}

function stopAll() {
  for (const { child } of runs) try { process.kill(-child.pid, 'SIGKILL') } catch {}
}
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(signal, () => (stopAll(), rmSync(work, { recursive: true, force: true }), process.exit(130)))

async function portOf(name, exited) {
  const file = join(work, `${name}.port`)
  const deadline = Date.now() + 60_000
  let gone
  void exited.then((result) => (gone = result))
  while (!existsSync(file)) {
    if (gone) throw new Error(`the ${name} Vitest run ended before serving (exit ${gone.code}):\n${gone.out.slice(-3000)}`)
    if (Date.now() > deadline) throw new Error(`the ${name} Vitest run did not serve within 60 s`)
    await new Promise((r) => setTimeout(r, 50))
  }
  return Number(readFileSync(file, 'utf8'))
}

function runClient(port, mode, amount) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [client, String(port), mode, String(amount)], { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    child.stdout.on('data', (d) => (out += d))
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000)
    child.on('close', (code) => {
      clearTimeout(timer)
      if (code !== 0) return reject(new Error(`${mode} client for port ${port} exited ${code}`))
      resolve(JSON.parse(out))
    })
  })
}

const results = { plain: { mib: [], rtt: [] }, netns: { mib: [], rtt: [] } }
let finished
try {
  const plainExit = startVitest('plain.config.mjs')
  const netnsExit = startVitest('netns.config.mjs')
  const ports = { plain: await portOf('plain', plainExit), netns: await portOf('netns', netnsExit) }
  for (let round = 0; round < args.rounds; round++) {
    for (const kind of round % 2 ? ['netns', 'plain'] : ['plain', 'netns']) {
      results[kind].mib.push((await runClient(ports[kind], 'throughput', args.mib * 1048576)).mibPerS)
      results[kind].rtt.push(median((await runClient(ports[kind], 'rtt', args.pings)).rttUs))
    }
  }
  writeFileSync(join(work, 'done'), '')
  finished = await Promise.all([plainExit, netnsExit])
} finally {
  writeFileSync(join(work, 'done'), '')
  stopAll()
  rmSync(work, { recursive: true, force: true })
}
for (const result of finished) if (result.code !== 0) {
  console.error(result.out.slice(-3000))
  process.exitCode = 1
}
const mode = process.getuid?.() === 0 ? 'root' : 'rootless'
const tp = (k) => median(results[k].mib)
const rt = (k) => median(results[k].rtt)
console.log(`\nnetns.listen() (${mode}): ${args.rounds} rounds, ${args.mib} MiB per transfer, ${args.pings} echoes per round trip sample, medians; a host client calls each server`)
console.log(
  table(
    ['server', 'throughput MiB/s', 'round trip µs'],
    [
      ['plain Vitest file, listening on 127.0.0.1 itself', fmt(tp('plain')), fmt(rt('plain'), 1)],
      ['netns file, on a listener from netns.listen()', fmt(tp('netns')), fmt(rt('netns'), 1)],
      ['ratio (netns / plain); goals >= 0.95x, <= 1.05x', fmt(tp('netns') / tp('plain'), 2) + 'x', fmt(rt('netns') / rt('plain'), 2) + 'x'],
    ],
  ),
)
