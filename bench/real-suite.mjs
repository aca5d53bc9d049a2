// Real-suite benchmark: the wall time of fixtures/real-suite (a global setup
// with HTTP, HTTPS and WebSocket servers on the host's loopback, 30-odd files
// of node, netns and happy-dom tests) run plainly (vitest.plain.config.ts, no
// plugin) and under netns (vitest.config.ts, sandbox: 'all', the servers
// shared with shareHostPort), in one run.
//
//   npm run bench                 (builds, links the package, runs this after the other benches)
//   node bench/real-suite.mjs [--rounds 5] [--run-timeout 300] [--json FILE]
//
// Each variant runs once to warm up, then the two alternate for R rounds (the
// one that goes first swaps every round), each `vitest run` timed from spawn
// to exit. Reported: median and min–max per variant, the ratio of the medians
// (netns / plain; the goal is <= 1.05) and the median of the per-round ratios;
// and the CPU time (user + system) of each run's whole process tree, which
// other load on the machine disturbs much less than wall time.
// Timing is only reported, never checked; the exit status is 1 only when a run
// itself failed (a test failed, Vitest crashed, a run timed out).
import { mkdirSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { childrenCpuMs, fmt, median, parseArgs, table, timeCommand } from './lib.mjs'

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..')
const root = join(repoRoot, 'fixtures', 'real-suite')
const workDir = join(repoRoot, 'bench', '.work', 'real-suite')
const vitestCli = join(repoRoot, 'node_modules', 'vitest', 'vitest.mjs')

const args = parseArgs(process.argv.slice(2), {
  script: import.meta.url,
  helpLines: 15,
  defaults: { rounds: 5, 'run-timeout': 300 },
  limits: { rounds: [1, 30], 'run-timeout': [10, 1800] },
})

const variants = [
  { name: 'plain', label: 'plain (no plugin)', config: 'vitest.plain.config.ts' },
  { name: 'netns', label: "netns (sandbox: 'all', shared ports)", config: 'vitest.config.ts' },
]


// Every run started is ended if the bench is stopped.
const running = new Set()
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(signal, () => {
    for (const child of running) try { process.kill(-child.pid, 'SIGKILL') } catch {}
    rmSync(workDir, { recursive: true, force: true })
    process.exit(130)
  })
}

/** One `vitest run` of the fixture with `variant`'s config; its records go to a fresh directory. */
async function runOnce(variant) {
  const recordDir = join(workDir, `${variant.name}-records`)
  rmSync(recordDir, { recursive: true, force: true })
  mkdirSync(recordDir, { recursive: true })
  const cpuBefore = childrenCpuMs()
  const result = await timeCommand(process.execPath, [vitestCli, 'run', '--root', root, '--config', variant.config], {
    cwd: root,
    env: { ...process.env, NETNS_RECORD_DIR: recordDir, FORCE_COLOR: '0', NO_COLOR: '1' },
    timeoutMs: args['run-timeout'] * 1000,
    capture: true,
    onChild: (child) => (running.add(child), child.on('close', () => running.delete(child))),
  })
  if (result.code !== 0) {
    console.error(`\n  ${variant.label} failed (${result.timedOut ? 'timed out' : `exit ${result.code ?? result.signal}`}):\n${result.out.slice(-4000)}`)
    process.exitCode = 1
  }
  return { ms: result.ms, cpu: childrenCpuMs() - cpuBefore }
}

console.log(`\n## Real suite: plain vs netns (fixtures/real-suite)\n`)
console.log(`${os.availableParallelism()} CPUs, Node ${process.version}, load average ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}; ${args.rounds} rounds after one warm-up run each\n`)
mkdirSync(workDir, { recursive: true })
for (const variant of variants) await runOnce(variant)
const times = { plain: [], netns: [] }
const cpu = { plain: [], netns: [] }
const ratios = []
for (let round = 0; round < args.rounds && process.exitCode !== 1; round++) {
  const order = round % 2 === 0 ? variants : [...variants].reverse()
  const ms = {}
  const cpuMs = {}
  for (const variant of order) ({ ms: ms[variant.name], cpu: cpuMs[variant.name] } = await runOnce(variant))
  for (const name of ['plain', 'netns']) (times[name].push(ms[name]), cpu[name].push(cpuMs[name]))
  ratios.push(ms.netns / ms.plain)
  console.log(`  round ${round + 1}: plain ${fmt(ms.plain)} ms, netns ${fmt(ms.netns)} ms (${fmt(ms.netns / ms.plain, 3)}x); CPU plain ${fmt(cpuMs.plain)} ms, netns ${fmt(cpuMs.netns)} ms`)
}
rmSync(workDir, { recursive: true, force: true })

const row = (v) => [
  v.label,
  fmt(median(times[v.name])),
  `${fmt(Math.min(...times[v.name]))}–${fmt(Math.max(...times[v.name]))}`,
  `${fmt(median(times[v.name]) / median(times.plain), 3)}x`,
  fmt(median(cpu[v.name])),
  `${fmt(median(cpu[v.name]) / median(cpu.plain), 3)}x`,
]
console.log(`\n${table(['variant', 'median wall ms', 'min–max ms', 'wall vs plain', 'median CPU ms', 'CPU vs plain'], variants.map(row))}\n`)
const ratio = median(times.netns) / median(times.plain)
console.log(`  netns / plain wall time: ${fmt(ratio, 3)}x (ratio of the medians), ${fmt(median(ratios), 3)}x (median of the per-round ratios); goal <= 1.05x`)
if (args.json) {
  writeFileSync(args.json, JSON.stringify({ rounds: args.rounds, times, cpu, ratios, ratio, pairedRatio: median(ratios), loadavg: os.loadavg() }, null, 2))
}
