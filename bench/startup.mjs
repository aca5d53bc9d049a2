// Start-up benchmark: what a netns test file costs over Vitest's plain forks
// pool, and what the launcher alone costs over a plain spawn.
//
//   npm run bench                      (builds, links the package, runs this)
//   node bench/startup.mjs [--rounds 5] [--files 40] [--workers 2] [--iterations 50]
//                          [--budget 900] [--run-timeout 180] [--skip-vitest] [--skip-raw] [--skip-shell] [--skip-node]
//                          [--compare-launcher PATH] [--json FILE]
//
// Part 1 generates three projects of N trivial test files under bench/.work/
// (A: plain forks pool, environment node; B: netns, native launcher; C: netns,
// launcher 'shell'), warms each up once, then runs them interleaved for R
// rounds (the order rotates every round), timing each `vitest run` from spawn
// to exit. Part 2 times the launchers alone, K interleaved iterations of
// `/bin/true` and `node -e 0`, plain and through each launcher.
// --skip-shell leaves the shell launcher out of part 2, --skip-node `node -e 0`.
// --compare-launcher PATH adds another build of netns-launch (say, an older
// commit's) to part 2, with the same arguments, so two builds are compared in
// the same interleaved run.
//
// Timing is only reported, never checked. The exit status is 1 only when a
// run itself failed (a test failed, Vitest crashed, a run timed out), since
// the numbers would then not mean what they say.
import { accessSync, constants, existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { performance } from 'node:perf_hooks'
import { childrenCpuMs, clockTick, fmt, median, p90, parseArgs, signed, table, timeCommand } from './lib.mjs'

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..')
const workDir = join(repoRoot, 'bench', '.work', 'startup')
const vitestCli = join(repoRoot, 'node_modules', 'vitest', 'vitest.mjs')

// ---------------------------------------------------------------- arguments

const defaults = { rounds: 5, files: 40, workers: 2, iterations: 50, budget: 900, 'run-timeout': 180 }
const limits = { rounds: [1, 50], files: [1, 500], workers: [1, 64], iterations: [1, 1000], budget: [10, 7200], 'run-timeout': [5, 1800] }

/** --compare-launcher: an executable file. */
function executableFile(path) {
  try {
    accessSync(path, constants.X_OK)
    return statSync(path).isFile() ? undefined : `${path} is not a file`
  } catch {
    return `${path} is not an executable file (build one, e.g. with cc -static -O2 -o PATH native/*.c)`
  }
}

const parse = (argv) =>
  parseArgs(argv, {
    script: import.meta.url,
    helpLines: 24,
    defaults,
    limits,
    flags: ['skip-vitest', 'skip-raw', 'skip-shell', 'skip-node'],
    strings: { 'compare-launcher': executableFile },
  })

// ---------------------------------------------------------------- statistics

// ---------------------------------------------------------------- processes

// ---------------------------------------------------------------- CPU time of finished children


// ---------------------------------------------------------------- part 1: Vitest runs

const VARIANTS = [
  { id: 'A', label: 'A forks (plain)', config: (w) => `export default {\n  test: { pool: 'forks', environment: 'node', maxWorkers: ${w} },\n}\n` },
  {
    id: 'B',
    label: 'B netns native',
    config: (w) =>
      `import { netns } from 'vitest-environment-netns/plugin'\n\nexport default {\n  plugins: [netns({ launcher: 'native' })],\n  test: { environment: 'netns', maxWorkers: ${w} },\n}\n`,
  },
  {
    id: 'C',
    label: 'C netns shell',
    config: (w) =>
      `import { netns } from 'vitest-environment-netns/plugin'\n\nexport default {\n  plugins: [netns({ launcher: 'shell' })],\n  test: { environment: 'netns', maxWorkers: ${w} },\n}\n`,
  },
]

function generateProjects(files, workers) {
  rmSync(workDir, { recursive: true, force: true })
  for (const v of VARIANTS) {
    const dir = join(workDir, v.id)
    mkdirSync(join(dir, 'test'), { recursive: true })
    writeFileSync(join(dir, 'vitest.config.mjs'), v.config(workers))
    for (let i = 0; i < files; i++) {
      const name = `t${String(i).padStart(3, '0')}.test.js`
      writeFileSync(join(dir, 'test', name), `import { test, expect } from 'vitest'\n\ntest('x', () => expect(1).toBe(1))\n`)
    }
    v.dir = dir
  }
}

const strip = (s) => s.replace(/\x1b\[[0-9;]*m/g, '')

async function runVitest(variant, files, timeoutMs) {
  const env = { ...process.env, FORCE_COLOR: '0', NO_COLOR: '1' }
  delete env.VITEST // in case this runs inside a Vitest worker
  const cpuBefore = childrenCpuMs()
  const r = await timeCommand(process.execPath, [vitestCli, 'run', '--root', variant.dir], { cwd: variant.dir, env, timeoutMs, capture: true })
  const cpu = childrenCpuMs() - cpuBefore
  const passed = Number(/Tests\s+(\d+) passed/.exec(strip(r.out))?.[1] ?? -1)
  const ok = r.code === 0 && passed === files && !r.timedOut
  // Vitest's own summary: "Duration 9.1s (transform 80ms, setup 0ms, import 1.2s, tests 40ms, environment 5ms)",
  // each part summed over all files (so over all workers).
  const parts = {}
  const summary = /Duration\s+[\d.]+m?s\s+\(([^)]*)\)/.exec(strip(r.out))?.[1] ?? ''
  for (const m of summary.matchAll(/(\w+) ([\d.]+)(m?s)/g)) parts[m[1]] = Number(m[2]) * (m[3] === 's' ? 1000 : 1)
  return { ms: r.ms, cpu, parts, ok, why: ok ? '' : r.timedOut ? `timed out after ${timeoutMs} ms` : `exit ${r.code ?? r.signal}, ${passed} tests passed:\n${strip(r.out).slice(-3000)}` }
}

async function benchVitest(args, deadline) {
  const { files, workers, rounds } = args
  generateProjects(files, workers)
  const timeoutMs = args['run-timeout'] * 1000
  const results = Object.fromEntries(VARIANTS.map((v) => [v.id, { times: [], cpu: [], parts: [], byRound: [], failures: [] }]))
  console.log(`\nPart 1: vitest run of ${files} trivial files, maxWorkers ${workers}, isolate default (true); ${rounds} interleaved rounds after one warm-up each`)
  const active = new Set(VARIANTS.map((v) => v.id))
  for (const v of VARIANTS) {
    const r = await runVitest(v, files, timeoutMs)
    console.log(`  warm-up ${v.label}: ${fmt(r.ms)} ms${r.ok ? '' : ' FAILED'}`)
    if (!r.ok) {
      results[v.id].failures.push(`warm-up: ${r.why}`)
      active.delete(v.id)
      console.log(r.why.replace(/^/gm, '    '))
    }
  }
  let done = 0
  for (let round = 0; round < rounds; round++) {
    if (performance.now() > deadline) {
      console.log(`  time budget (--budget ${args.budget} s) used up after ${done} rounds`)
      break
    }
    const order = VARIANTS.map((_, i) => VARIANTS[(i + round) % VARIANTS.length]).filter((v) => active.has(v.id))
    const cells = []
    for (const v of order) {
      const r = await runVitest(v, files, timeoutMs)
      if (r.ok) {
        results[v.id].times.push(r.ms)
        results[v.id].cpu.push(r.cpu)
        results[v.id].parts.push(r.parts)
        results[v.id].byRound[round] = r.ms
      } else {
        results[v.id].failures.push(`round ${round + 1}: ${r.why}`)
        console.log(r.why.replace(/^/gm, '    '))
      }
      cells.push(`${v.id} ${fmt(r.ms)}${r.ok ? '' : '!'} (cpu ${fmt(r.cpu)})`)
    }
    done++
    console.log(`  round ${round + 1}/${rounds} (load ${os.loadavg()[0].toFixed(2)}): ${cells.join(', ')} ms`)
  }

  const base = median(results.A.times)
  const baseCpu = median(results.A.cpu)
  // Paired: each round's X minus the same round's A, which ran next to it under the same load.
  const paired = (id) => results[id].byRound.flatMap((ms, r) => (ms !== undefined && results.A.byRound[r] !== undefined ? [ms - results.A.byRound[r]] : []))
  const wallRows = VARIANTS.map((v) => {
    const t = results[v.id].times
    const m = median(t)
    const delta = m - base
    const isBase = v.id === 'A'
    return [
      v.label,
      t.length,
      fmt(m),
      t.length ? `${fmt(Math.min(...t))}–${fmt(Math.max(...t))}` : 'n/a',
      isBase ? '1.00×' : `${fmt(m / base, 2)}×`,
      isBase ? '' : signed(delta / files),
      isBase ? '' : signed((delta * workers) / files),
      isBase ? '' : signed(median(paired(v.id)) / files),
    ]
  })
  console.log(
    '\nWall time, spawn to exit of `vitest run`\n\n' +
      table(['variant', 'runs', 'median ms', 'min–max ms', 'vs A', 'added ms/file', `added ms/worker start (×${workers})`, 'paired added ms/file'], wallRows),
  )
  const cpuRows = VARIANTS.map((v) => {
    const c = results[v.id].cpu
    const m = median(c)
    const isBase = v.id === 'A'
    return [v.label, c.length, fmt(m), isBase ? '1.00×' : `${fmt(m / baseCpu, 2)}×`, isBase ? '' : signed((m - baseCpu) / files)]
  })
  console.log('\nCPU time (user + system) of the whole process tree of `vitest run`\n\n' + table(['variant', 'runs', 'median CPU ms', 'vs A', 'added CPU ms/file'], cpuRows))
  const partNames = [...new Set(VARIANTS.flatMap((v) => results[v.id].parts.flatMap((p) => Object.keys(p))))]
  if (partNames.length) {
    const partRows = VARIANTS.map((v) => [
      v.label,
      ...partNames.map((n) => {
        const m = median(results[v.id].parts.map((p) => p[n]).filter((x) => x !== undefined))
        const a = median(results.A.parts.map((p) => p[n]).filter((x) => x !== undefined))
        return v.id === 'A' ? fmt(m) : `${fmt(m)} (${signed((m - a) / files)}/file)`
      }),
    ])
    console.log("\nVitest's own duration breakdown (medians, ms, summed over all files)\n\n" + table(['variant', ...partNames], partRows))
  }
  console.log(
    `\n  added ms/file = (median_X − median_A) / ${files}: what each file adds to the run's wall time.\n` +
      `  added ms/worker start = that × maxWorkers (${workers}): ${workers} workers start files side by side, so each start\n` +
      `  takes about ${workers}× what it adds to the wall time (an estimate: it assumes the ${workers} slots overlap fully).\n` +
      `  paired added ms/file = median over rounds of (X − A in the same round) / ${files}: less sensitive to load that drifts.\n` +
      `  added CPU ms/file = (median CPU_X − median CPU_A) / ${files}: the work each file adds, whatever runs beside it.`,
  )
  return { results, files, workers, rounds: done }
}

// ---------------------------------------------------------------- part 2: launcher alone

async function benchRaw(args, deadline) {
  const K = args.iterations
  const { resolveOptions } = await import('../dist/config.js')
  const { planLauncher } = await import('../dist/launcher.js')
  const nativeLauncherPath = (await import('../dist/launcher-binary.js')).nativeLauncher().path
  const plans = []
  if (nativeLauncherPath) {
    const plan = planLauncher(resolveOptions({ launcher: 'native' }), [])
    plans.push(['native launcher', plan])
    // The same launcher with every optional per-start step off (attempt recording), when the defaults turn one on.
    try {
      const bare = planLauncher(resolveOptions({ launcher: 'native', recordAttempts: false }), [])
      if (bare.prefix.join(' ') !== plan.prefix.join(' ')) plans.push(['native launcher, no --record', bare])
    } catch {}
    // As root, the default keeps root's file capabilities (--file-caps); 'none' is the other choice, and what older builds run.
    const none = planLauncher(resolveOptions({ launcher: 'native', rootCapabilities: 'none' }), [])
    if (none.prefix.join(' ') !== plan.prefix.join(' ')) plans.push(["native launcher, rootCapabilities 'none'", none])
  } else console.log('  (no native launcher: skipped)')
  const other = args['compare-launcher']
  if (other) {
    // The same command lines, another build of the launcher.
    const name = other.split('/').pop()
    for (const [kind, plan] of plans.filter(([, p]) => p.kind === 'native')) {
      plans.push([kind.replace('native launcher', name), { ...plan, file: resolve(other) }, kind])
    }
  }
  if (!args['skip-shell']) {
    try {
      plans.push(['shell launcher', planLauncher(resolveOptions({ launcher: 'shell' }), [])])
    } catch (error) {
      console.log(`  (shell launcher unavailable: ${error.message})`)
    }
  }
  const programs = [['/bin/true', ['/bin/true']]]
  if (!args['skip-node']) programs.push(['node -e 0', [process.execPath, '-e', '0']])
  const cases = []
  for (const [pname, cmd] of programs) {
    cases.push({ program: pname, how: 'plain spawn', file: cmd[0], args: cmd.slice(1) })
    for (const [kind, plan, counterpart] of plans) {
      cases.push({ program: pname, how: kind, file: plan.file, args: [...plan.prefix, ...cmd], controlFd: plan.controlFd, counterpart })
    }
  }
  for (const c of cases) c.times = [], c.byIteration = [], c.cpu = 0, c.failures = 0

  console.log(`\nPart 2: launcher alone, ${K} interleaved iterations of each command (spawn to exit, stdio ignored)`)
  // One unmeasured run of each first: page cache, first-exec costs.
  for (const c of cases) {
    const r = await timeCommand(c.file, c.args, { timeoutMs: 10_000, controlFd: c.controlFd })
    if (r.code !== 0) {
      const r2 = await timeCommand(c.file, c.args, { timeoutMs: 10_000, capture: true, controlFd: c.controlFd })
      console.log(`  ${c.how} ${c.program} FAILED (exit ${r2.code ?? r2.signal}): ${r2.out.trim().slice(0, 500)}`)
      c.broken = true
    }
  }
  let done = 0
  for (let k = 0; k < K && performance.now() < deadline; k++) {
    const live = cases.filter((c) => !c.broken)
    for (let j = 0; j < live.length; j++) {
      const c = live[(j + k) % live.length]
      const cpuBefore = childrenCpuMs()
      const r = await timeCommand(c.file, c.args, { timeoutMs: 10_000, controlFd: c.controlFd })
      c.cpu += childrenCpuMs() - cpuBefore
      if (r.code === 0) c.times.push(r.ms), (c.byIteration[k] = r.ms)
      else c.failures++
    }
    done++
  }
  if (done < K) console.log(`  time budget used up after ${done} iterations`)

  const rows = cases.map((c) => {
    const plain = cases.find((p) => p.program === c.program && p.how === 'plain spawn')
    const isPlain = c === plain
    return [
      `${c.how}: ${c.program}`,
      c.broken ? 'failed' : `${c.times.length}${c.failures ? ` (+${c.failures} failed)` : ''}`,
      fmt(median(c.times), 1),
      fmt(p90(c.times), 1),
      isPlain ? '' : signed(median(c.times) - median(plain.times)),
      isPlain ? '' : signed(p90(c.times) - p90(plain.times)),
      fmt(c.cpu / Math.max(1, c.times.length + c.failures), 1),
    ]
  })
  console.log('\n' + table(['command', 'n', 'median ms', 'p90 ms', 'added median ms', 'added p90 ms', 'mean CPU ms'], rows))
  console.log(`\n  mean CPU ms: user + system time of the command's whole process tree, averaged (the clock ticks every ${1000 / clockTick} ms).`)
  const compared = cases.filter((c) => c.counterpart)
  if (compared.length) {
    // Paired: this build's start minus the other build's start of the same iteration, which ran next to it.
    const compareRows = compared.map((old) => {
      const now = cases.find((c) => c.program === old.program && c.how === old.counterpart)
      const diffs = now.byIteration.flatMap((ms, k) => (ms !== undefined && old.byIteration[k] !== undefined ? [ms - old.byIteration[k]] : []))
      return [
        `${old.counterpart}: ${old.program}`,
        diffs.length,
        signed(median(now.times) - median(old.times), 2),
        signed(median(diffs), 2),
        signed(now.cpu / Math.max(1, now.times.length + now.failures) - old.cpu / Math.max(1, old.times.length + old.failures), 2),
      ]
    })
    console.log(
      `\nThis build (${nativeLauncherPath}) against ${resolve(other)}, same command lines\n\n` +
        table(['command', 'pairs', 'median ms, this − other', 'paired median ms, this − other', 'mean CPU ms, this − other'], compareRows),
    )
  }
  return { cases: cases.map(({ program, how, file, times, cpu, failures, broken }) => ({ program, how, file, times, cpu, failures, broken: !!broken })), iterations: done }
}

// ---------------------------------------------------------------- main

function launcherInfo() {
  const path = join(repoRoot, 'build', 'netns-launch')
  if (!existsSync(path)) return 'not built'
  const head = readFileSync(path).subarray(0, 4096).toString('latin1')
  return head.includes('/lib64/ld-linux') || head.includes('/lib/ld-') ? 'dynamic' : 'static'
}

async function main() {
  const args = parse(process.argv.slice(2))
  if (!existsSync(join(repoRoot, 'dist', 'plugin.js'))) throw new Error('dist/ is missing: run `npm run bench` (it builds first) or `npm run build`')
  const vitestVersion = JSON.parse(readFileSync(join(repoRoot, 'node_modules', 'vitest', 'package.json'), 'utf8')).version
  const uid = process.getuid()
  console.log('vitest-environment-netns start-up benchmark')
  console.log(
    `  machine: ${os.availableParallelism()} CPUs (${os.cpus()[0]?.model ?? '?'}), kernel ${os.release()}, node ${process.version}, vitest ${vitestVersion}\n` +
      `  user: uid ${uid} (${uid === 0 ? 'root' : 'rootless'}), native launcher: ${launcherInfo()}, load average at start: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`,
  )
  const started = performance.now()
  const deadline = started + args.budget * 1000
  const out = { args, machine: { cpus: os.availableParallelism(), kernel: os.release(), node: process.version, vitest: vitestVersion, uid } }
  if (!args['skip-vitest']) out.vitest = await benchVitest(args, deadline)
  if (!args['skip-raw']) out.raw = await benchRaw(args, deadline + 60_000) // the raw part is short: let it finish
  console.log(`\n  total ${((performance.now() - started) / 1000).toFixed(0)} s, load average at end: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`)
  if (args.json) writeFileSync(args.json, JSON.stringify(out, null, 2) + '\n')
  const failed = out.vitest && Object.values(out.vitest.results).some((r) => r.failures.length)
  const rawFailed = out.raw?.cases.some((c) => c.broken || c.failures)
  if (failed || rawFailed) {
    console.log('\n  Some runs FAILED (see above): their variants are missing from, or thin in, the tables.')
    process.exitCode = 1
  }
}

main().catch((error) => {
  console.error(`bench/startup.mjs: ${error.message}`)
  process.exitCode = 1
})
