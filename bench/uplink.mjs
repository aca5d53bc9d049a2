// Uplink benchmark: what a per-test uplink costs (attach + detach), and how
// fast traffic goes through it, each as a ratio to a baseline measured in the
// same run.
//
//   npm run bench                      (builds, links the package, runs startup.mjs and this)
//   node bench/uplink.mjs [--sandboxes 30] [--cycles 50] [--reps 3] [--pings 2000]
//                         [--max-mib 1024] [--seconds 3] [--pool 10.214.0.0/16]
//                         [--vitest [--rounds 5] [--tests 30] [--run-timeout 180]]
//                         [--skip-attach] [--skip-net] [--budget 900] [--json FILE]
//
// Part 1 times `UplinkSession.handle()` (the pool's own code path) around
// attach and detach: the first attach of fresh sandboxes (it creates the
// veth), then attach/detach cycles on one sandbox (what later uplink tests of
// a file pay). Baseline: a plain sandbox start (`netns-launch -- /bin/true`).
// Part 2 (--vitest, run last: Vitest starts a helper of its own) runs a
// generated file of N tests that use the `uplink`
// fixture against the same file whose tests do not. Part 3 measures TCP
// throughput and round-trip time through each path against host loopback,
// with Node peers (bench/peer.mjs) at both ends: veth egress to a fake
// upstream namespace; a shared host port; hostService (root: kernel DNAT;
// rootless: the socket hand-over, and the hub's relay as the fallback, from a
// sandbox without the hand-over channel); forward asked before the server
// binds (rootless: the server listens on a host socket) and after (rootless:
// the relay); and the UDP round trip through hostService and forward. netns.listen()
// has its own benchmark, bench/listen.mjs.
//
// Traffic only ever goes to loopback, to the sandboxes made here and to a fake
// upstream namespace made here (never past this machine; rootless never
// through pasta). Timing is only reported, never checked; the exit status is 1
// only when a run itself failed.
import { execFileSync, spawn } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, readlinkSync, realpathSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import { dirname, join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { performance } from 'node:perf_hooks'
import { fmt, median, p90, parseArgs, signed, table as baseTable, timeCommand } from './lib.mjs'

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..')
const workDir = join(repoRoot, 'bench', '.work', 'uplink')
const vitestCli = join(repoRoot, 'node_modules', 'vitest', 'vitest.mjs')
const peerScript = join(repoRoot, 'bench', 'peer.mjs')
const MODE = process.getuid() === 0 ? 'root' : 'rootless'
// The sandbox server's port for the forward asked before it binds (inside the sandbox: nothing else is there).
const BEFORE_BIND_PORT = 18080

// ---------------------------------------------------------------- arguments

const defaults = { sandboxes: 30, cycles: 50, reps: 3, pings: 2000, 'max-mib': 1024, seconds: 3, rounds: 5, tests: 30, 'run-timeout': 180, budget: 900 }
const limits = {
  sandboxes: [1, 200], cycles: [1, 1000], reps: [1, 20], pings: [10, 100_000], 'max-mib': [1, 8192], seconds: [1, 10],
  rounds: [1, 50], tests: [1, 500], 'run-timeout': [5, 1800], budget: [30, 7200],
}
const FLAGS = ['vitest', 'skip-attach', 'skip-net']

const parse = (argv) =>
  parseArgs(argv, {
    script: import.meta.url,
    helpLines: 26,
    defaults: { ...defaults, pool: '10.214.0.0/16' },
    limits,
    flags: FLAGS,
    // A private block only: the pool's addresses are where sandbox traffic goes.
    strings: { pool: (v) => (/^10\.\d{1,3}\.\d{1,3}\.\d{1,3}\/(1[6-9]|2[0-4])$/.test(v) ? undefined : 'must be a block inside 10.0.0.0/8 with a prefix from /16 to /24') },
  })

// ---------------------------------------------------------------- statistics and tables

const ratio = (x, base) => (Number.isFinite(x / base) ? `${(x / base).toFixed(2)}×` : 'n/a')

const table = (header, rows) => baseTable(header, rows, 2)

const failures = [] // a run that failed: the numbers around it are missing, and the exit status is 1
function fail(what, error) {
  const message = `${what}: ${error?.message ?? error}`
  failures.push(message)
  console.log(`  FAILED ${message}`)
}

// ---------------------------------------------------------------- processes, and cleaning them up

// Everything this script starts, so that an error, a signal or the time budget
// still ends it all. Sandboxes die with their relay (PR_SET_PDEATHSIG in the
// launcher), the fake upstream's namespace and veth with its one process, the
// uplink helper with us.
const children = new Set()
let daemon
function killAll() {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  daemon?.stop()
}
process.on('exit', killAll)
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(signal, () => {
    console.log(`\n  ${signal}: cleaning up`)
    killAll()
    process.exit(130)
  })
}

/** A child that answers one line per request on stdout (bench/peer.mjs, or a sandbox's `echo ready`). */
class LineChild {
  constructor(name, file, argv, { stdio = ['pipe', 'pipe', 'pipe'], env } = {}) {
    this.name = name
    this.child = spawn(file, argv, { stdio, env })
    children.add(this.child)
    this.pid = this.child.pid
    this.lines = []
    this.waiters = []
    this.stderr = ''
    this.child.stderr?.on('data', (d) => (this.stderr = (this.stderr + d).slice(-2000)))
    this.child.stdin?.on('error', () => {}) // the child went away: its 'close' says so
    createInterface({ input: this.child.stdout }).on('line', (line) => {
      const waiter = this.waiters.shift()
      if (waiter) waiter.resolve(line)
      else this.lines.push(line)
    })
    const end = (why) => {
      children.delete(this.child)
      this.closed ??= new Error(`${name} ${why}${this.stderr.trim() ? `: ${this.stderr.trim().slice(-500)}` : ''}`)
      for (const waiter of this.waiters.splice(0)) waiter.reject(this.closed)
    }
    this.child.on('error', (error) => end(`could not start (${error.message})`))
    this.child.on('close', (code, signal) => end(`exited (${code ?? signal})`))
  }

  /** The next line, or an error after timeoutMs (then the child is killed: later replies would be out of step). */
  next(timeoutMs) {
    if (this.lines.length) return Promise.resolve(this.lines.shift())
    if (this.closed) return Promise.reject(this.closed)
    return new Promise((resolve, reject) => {
      const waiter = {
        resolve: (line) => (clearTimeout(timer), resolve(line)),
        reject: (error) => (clearTimeout(timer), reject(error)),
      }
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1)
        this.closed ??= new Error(`${this.name}: no answer within ${timeoutMs} ms`)
        this.child.kill('SIGKILL')
        reject(this.closed)
      }, timeoutMs)
      this.waiters.push(waiter)
    })
  }

  /** One JSON command to a peer, its JSON reply. */
  async request(command, timeoutMs) {
    if (this.closed) throw this.closed
    this.child.stdin.write(`${JSON.stringify(command)}\n`)
    const reply = JSON.parse(await this.next(timeoutMs))
    if (reply.error) throw new Error(`${this.name}: ${reply.error}`)
    return reply
  }

  /** Ends stdin (the program exits by itself), then SIGKILL if it has not within 2 s. */
  async stop() {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return
    const exited = new Promise((resolve) => this.child.once('close', resolve))
    this.child.stdin?.end()
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 2000)
    await exited
    clearTimeout(timer)
  }
}

/** A timed command whose process is killed with the bench if it is stopped meanwhile. */
async function timed(file, args, options) {
  let child
  const result = await timeCommand(file, args, { ...options, onChild: (c) => children.add((child = c)) })
  children.delete(child)
  return result
}

/** `promise`, or a rejection after `ms`. */
function within(promise, ms, what) {
  let timer
  const timeout = new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms)))
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

const netnsOf = (pid) => {
  try {
    return readlinkSync(`/proc/${pid}/ns/net`)
  } catch {
    return undefined
  }
}

/** Waits until `pid` is in a network namespace that is none of `others` (it has unshared); false after 3 s. */
async function waitOwnNetns(pid, others) {
  const deadline = performance.now() + 3000
  while (performance.now() < deadline) {
    const net = netnsOf(pid)
    if (net && !others.includes(net)) return true
    await new Promise((r) => setTimeout(r, 5))
  }
  return false
}

// ---------------------------------------------------------------- the run's context: helper and launcher

async function setUp(args) {
  const { UplinkDaemon, UplinkSession } = await import('../dist/uplink-host.js')
  const { resolveOptions } = await import('../dist/config.js')
  const { planLauncher, launchCommand, withSupervision } = await import('../dist/launcher.js')
  const { HANDOVER_FD, HandoverChannel } = await import('../dist/handover.js')
  // egressVia 'none': rootless, nothing may go through pasta; the fake upstream hangs off the hub.
  daemon = await UplinkDaemon.start(MODE, { pool: args.pool, egressVia: 'none' })
  const hubPid = MODE === 'rootless' ? daemon.hubPid : undefined
  // The launcher exactly as the pool starts a worker (attempt recording on, its control socket, --hub rootless).
  const plan = planLauncher(resolveOptions({ launcher: 'native' }), [])
  const { file, args: prefix } = launchCommand(plan, hubPid)
  const ownNet = netnsOf('self')
  // Where the outer ends live: the host (root) or the hub (rootless).
  const outerNet = hubPid ? netnsOf(hubPid) : ownNet
  const enter = hubPid ? ['nsenter', '-t', String(hubPid), '-U', '-n', '--preserve-credentials', '--'] : []
  const warnings = []
  // The pool's own UplinkSession; each call bounded, so a stuck helper fails the run instead of hanging it.
  // Registered first, untimed: the pool registers a sandbox when its worker starts, before any test asks.
  const session = async (pid, handover) => {
    const real = new UplinkSession(() => Promise.resolve(daemon), pid, (message) => warnings.push(message), handover)
    await within(real.register(), 10_000, 'uplink register')
    return {
      handle: (request) => within(real.handle(request), 10_000, `uplink ${request.op}`),
      release: () => within(real.release(), 10_000, 'uplink release'),
    }
  }
  /**
   * A sandbox running `program`, whose first stdout line says it runs. Its pid is the relay's, in the sandbox's
   * namespace. `supervision`: what its init supervises, as the pool asks (shared ports; rootless, the hand-over
   * channel, which `child.handover` then speaks on).
   */
  const sandbox = async (name, program, supervision = { ports: [], guard: false }) => {
    const handover = supervision.handover && MODE === 'rootless'
    const command = withSupervision({ file, args: prefix }, { ports: supervision.ports, guard: supervision.guard, handoverFd: handover ? HANDOVER_FD : undefined })
    const stdio = ['pipe', 'pipe', 'pipe']
    if (plan.controlFd) stdio[plan.controlFd] = 'pipe'
    if (handover) stdio[HANDOVER_FD] = 'pipe'
    for (let i = 0; i < stdio.length; i++) stdio[i] ??= 'ignore'
    const child = new LineChild(name, command.file, [...command.args, ...program], { stdio })
    if (handover) child.handover = new HandoverChannel(child.child.stdio[HANDOVER_FD])
    await child.next(10_000) // the program runs: every namespace is set up
    if (!(await waitOwnNetns(child.pid, [ownNet, outerNet]))) throw new Error(`${name}: not in a network namespace of its own`)
    return child
  }
  return { daemon, hubPid, plan, file, prefix, ownNet, outerNet, enter, warnings, session, sandbox }
}

// ---------------------------------------------------------------- part 1: attach and detach

/** Milliseconds of one attach and of the detach after it, through the pool's UplinkSession. */
async function timedAttachDetach(session) {
  const t0 = performance.now()
  await session.handle({ op: 'attach' })
  const t1 = performance.now()
  await session.handle({ op: 'detach' })
  return [t1 - t0, performance.now() - t1]
}

async function benchAttach(ctx, args) {
  const N = args.sandboxes, C = args.cycles
  const r = {
    start: [], firstAttach: [], firstDetach: [], first: [],
    reAttach: [], reDetach: [], re: [], withRules: [],
  }
  console.log(`\nPart 1: attach + detach through UplinkSession.handle(), ${N} fresh sandboxes, then ${C} + ${C} cycles on one`)
  const startArgs = [...ctx.prefix, '/bin/true']
  await timed(ctx.file, startArgs, { timeoutMs: 10_000, controlFd: ctx.plan.controlFd }) // page cache, first exec
  for (let i = 0; i < N; i++) {
    // The baseline, interleaved with the attach runs so both see the same load.
    const start = await timed(ctx.file, startArgs, { timeoutMs: 10_000, controlFd: ctx.plan.controlFd })
    if (start.code === 0) r.start.push(start.ms)
    else fail(`sandbox start ${i + 1}`, `exit ${start.code}`)
    let box
    try {
      // `cat` keeps the sandbox alive until its stdin ends.
      box = await ctx.sandbox(`sandbox ${i + 1}`, ['/bin/sh', '-c', 'echo ready; exec cat'])
      const session = await ctx.session(box.pid)
      const [attach, detach] = await timedAttachDetach(session)
      r.firstAttach.push(attach), r.firstDetach.push(detach), r.first.push(attach + detach)
      await session.release()
    } catch (error) {
      fail(`first attach ${i + 1}`, error)
    } finally {
      await box?.stop()
    }
  }

  let box
  try {
    box = await ctx.sandbox('cycling sandbox', ['/bin/sh', '-c', 'echo ready; exec cat'])
    const session = await ctx.session(box.pid)
    await session.handle({ op: 'attach' }) // creates the veth: not part of the cycles
    await session.handle({ op: 'detach' })
    for (let c = 0; c < C; c++) {
      const [attach, detach] = await timedAttachDetach(session)
      r.reAttach.push(attach), r.reDetach.push(detach), r.re.push(attach + detach)
    }
    // What a test that also asks for a host service and a forward pays (rules only: no traffic).
    for (let c = 0; c < C; c++) {
      const t0 = performance.now()
      await session.handle({ op: 'attach' })
      await session.handle({ op: 'hostService', port: 9, protocol: 'tcp' })
      await session.handle({ op: 'forward', port: 8080, protocol: 'tcp' })
      await session.handle({ op: 'detach' })
      r.withRules.push(performance.now() - t0)
    }
    await session.release()
  } catch (error) {
    fail('attach/detach cycles', error)
  } finally {
    await box?.stop()
  }

  const base = median(r.start)
  const row = (what, xs) => [MODE, what, xs.length, fmt(median(xs), 2), fmt(p90(xs), 2), what.startsWith('plain') ? '1.00×' : ratio(median(xs), base)]
  const rows = [
    row('plain sandbox start (baseline)', r.start),
    row('first attach (creates the veth)', r.firstAttach),
    row('first detach', r.firstDetach),
    row('first attach + detach', r.first),
    row('re-attach', r.reAttach),
    row('re-detach', r.reDetach),
    row('re-attach + detach', r.re),
    row('re-attach + hostService + forward + detach', r.withRules),
  ]
  console.log(
    '\nAttach and detach (ms, around session.handle)\n\n' +
      table(['mode', 'measured', 'n', 'median ms', 'p90 ms', 'vs plain sandbox start'], rows) +
      `\n\n  plain sandbox start: spawn to exit of \`${['netns-launch', ...ctx.prefix, '/bin/true'].join(' ')}\` (the pool's command line).\n` +
      `  goal (issue): ≤ 10 ms added per uplink test (attach + detach): first ${fmt(median(r.first), 1)} ms, later tests of a file ${fmt(median(r.re), 1)} ms (medians).`,
  )
  return r
}

// ---------------------------------------------------------------- part 2: a Vitest file with and without the fixture

function generateProjects(args) {
  rmSync(workDir, { recursive: true, force: true })
  const projects = []
  for (const [id, uses] of [['with', true], ['without', false]]) {
    const dir = join(workDir, id)
    mkdirSync(join(dir, 'test'), { recursive: true })
    writeFileSync(
      join(dir, 'vitest.config.mjs'),
      `import { netns } from 'vitest-environment-netns/plugin'\n\n` +
        `export default {\n  plugins: [netns({ uplink: { pool: '${args.pool}', egressVia: 'none' } })],\n  test: { environment: 'netns', maxWorkers: 1 },\n}\n`,
    )
    // Same imports either way: only the fixture differs.
    const body = uses ? `async ({ uplink }) => { expect(uplink.interface).toBe('eth0') }` : `async () => { expect('eth0').toBe('eth0') }`
    writeFileSync(
      join(dir, 'test', 'uplink.test.js'),
      `import { expect } from 'vitest'\nimport { test } from 'vitest-environment-netns/test'\n\n` +
        `for (let i = 0; i < ${args.tests}; i++) test(\`t\${i}\`, ${body})\n`,
    )
    projects.push({ id, label: uses ? `${args.tests} tests using \`uplink\`` : `${args.tests} tests without it`, dir })
  }
  return projects
}

const strip = (s) => s.replace(/\x1b\[[0-9;]*m/g, '')

async function runVitest(project, args) {
  const env = { ...process.env, FORCE_COLOR: '0', NO_COLOR: '1' }
  delete env.VITEST
  const r = await timed(process.execPath, [vitestCli, 'run', '--root', project.dir], { cwd: project.dir, env, timeoutMs: args['run-timeout'] * 1000, capture: true })
  const out = strip(r.out)
  const passed = Number(/Tests\s+(\d+) passed/.exec(out)?.[1] ?? -1)
  const ok = r.code === 0 && passed === args.tests && !r.timedOut
  // Vitest's own "tests" time (the sum of the test durations, fixtures included): without start-up noise.
  const tests = /Duration\s+[\d.]+m?s\s+\([^)]*\btests ([\d.]+)(m?s)/.exec(out)
  const testsMs = tests ? Number(tests[1]) * (tests[2] === 's' ? 1000 : 1) : NaN
  return { ms: r.ms, testsMs, ok, why: ok ? '' : r.timedOut ? 'timed out' : `exit ${r.code ?? r.signal}, ${passed} passed:\n${out.slice(-2000)}` }
}

async function benchVitest(args, deadline) {
  if (!existsSync(join(repoRoot, 'node_modules', 'vitest-environment-netns'))) {
    fail('vitest part', 'vitest-environment-netns is not resolvable by name: run `node scripts/link-self.mjs` first')
    return undefined
  }
  const projects = generateProjects(args)
  const results = Object.fromEntries(projects.map((p) => [p.id, { times: [], tests: [], byRound: [] }]))
  console.log(`\nPart 2: vitest run of one netns file of ${args.tests} tests, with and without the uplink fixture; ${args.rounds} interleaved rounds after one warm-up each`)
  for (const p of projects) {
    const r = await runVitest(p, args)
    console.log(`  warm-up ${p.id}: ${fmt(r.ms)} ms${r.ok ? '' : ' FAILED'}`)
    if (!r.ok) return void fail(`vitest warm-up (${p.id})`, r.why)
  }
  for (let round = 0; round < args.rounds && performance.now() < deadline; round++) {
    const order = round % 2 ? [...projects].reverse() : projects
    const cells = []
    for (const p of order) {
      const r = await runVitest(p, args)
      if (r.ok) results[p.id].times.push(r.ms), results[p.id].tests.push(r.testsMs), (results[p.id].byRound[round] = r.ms)
      else fail(`vitest round ${round + 1} (${p.id})`, r.why)
      cells.push(`${p.id} ${fmt(r.ms)}${r.ok ? '' : '!'}`)
    }
    console.log(`  round ${round + 1}/${args.rounds} (load ${os.loadavg()[0].toFixed(2)}): ${cells.join(', ')} ms`)
  }
  const withT = results.with, without = results.without
  const paired = withT.byRound.flatMap((ms, i) => (ms !== undefined && without.byRound[i] !== undefined ? [ms - without.byRound[i]] : []))
  const rows = projects.map((p) => {
    const t = results[p.id].times
    const isBase = p.id === 'without'
    return [
      MODE, p.label, t.length, fmt(median(t)), t.length ? `${fmt(Math.min(...t))}–${fmt(Math.max(...t))}` : 'n/a',
      isBase ? '1.00×' : ratio(median(t), median(without.times)),
      isBase ? '' : signed((median(t) - median(without.times)) / args.tests, 2),
      isBase ? '' : signed(median(paired) / args.tests, 2),
      fmt(median(results[p.id].tests)),
      isBase ? '' : signed((median(results[p.id].tests) - median(without.tests)) / args.tests, 2),
    ]
  })
  console.log(
    '\nWall time of `vitest run` (spawn to exit), and Vitest\'s own "tests" time\n\n' +
      table(['mode', 'project', 'runs', 'median ms', 'min–max ms', 'vs without', 'added ms/test', 'paired added ms/test', 'tests ms', 'added tests ms/test'], rows) +
      `\n\n  added ms/test = (median with − median without) / ${args.tests}; paired: the median over rounds of the same difference.\n` +
      `  tests ms: the "tests" part of Vitest's Duration line (test bodies and fixtures, so attach and detach too).`,
  )
  return results
}

// ---------------------------------------------------------------- part 3: throughput and round trips

// The fake upstream's block: a /30 at the top of a documentation block, not
// the fixture's 198.51.100.0/24. As root the outer ends share the host's
// namespace with any other run (the uplink fixture, other tests) that may
// route a whole documentation /24 there; a /30 is more specific, so the
// longest-prefix match sends these two addresses, and only them, to us.
const UPSTREAM = { net: '198.51.100.248/30', outer: '198.51.100.249', inner: '198.51.100.250', prefix: 30 }

/** Runs a command in the uplinks' outer namespace (as root: here), with a time limit. */
function outside(ctx, argv) {
  const command = [...ctx.enter, ...argv]
  return execFileSync(command[0], command.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], timeout: 5000, encoding: 'utf8' })
}

/**
 * A network namespace with UPSTREAM.inner, linked by a veth (ub<our pid>) to
 * the outer namespace, running a peer; the recipe of fixtures/uplink/global-setup.ts
 * (but with MTU 65535 on that veth).
 * The namespace and veth go away with the peer's process.
 */
async function startUpstream(ctx, args) {
  // A route as specific as ours (another run of this bench, or the last one's, which the kernel
  // tears down in the background) would shadow it. Wait a little for it to go.
  for (let i = 0; outside(ctx, ['ip', '-4', 'route', 'show', 'root', UPSTREAM.net]).trim(); i++) {
    if (i === 30) throw new Error(`${UPSTREAM.net} is already routed in the outer namespace`)
    await new Promise((r) => setTimeout(r, 100))
  }
  // unshare -n execs node in place (and nsenter, without -p, too): the pid we get is the peer's.
  const command = [...ctx.enter, 'unshare', '-n', '--', process.execPath, peerScript, args.pool]
  const peer = new LineChild('upstream peer', command[0], command.slice(1))
  await peer.next(10_000)
  // Configure it by pid only once it is surely in a namespace of its own, and is node: a wrong pid would configure the host.
  if (!(await waitOwnNetns(peer.pid, [ctx.ownNet, ctx.outerNet])) || readlinkSync(`/proc/${peer.pid}/exe`) !== realpathSync(process.execPath)) {
    throw new Error('the fake upstream did not get a network namespace of its own')
  }
  const hostEnd = `ub${process.pid}`.slice(0, 15)
  const inner = ['nsenter', '-t', String(peer.pid), '-n', '--']
  outside(ctx, ['ip', 'link', 'add', hostEnd, 'type', 'veth', 'peer', 'name', 'up0', 'netns', String(peer.pid)])
  outside(ctx, ['ip', 'addr', 'add', `${UPSTREAM.outer}/${UPSTREAM.prefix}`, 'dev', hostEnd])
  // Loopback's segment size (a veth's maximum MTU), so this link never limits the path: what is measured is the uplink.
  outside(ctx, ['ip', 'link', 'set', hostEnd, 'mtu', '65535', 'up'])
  outside(ctx, [...inner, 'ip', 'link', 'set', 'lo', 'up'])
  outside(ctx, [...inner, 'ip', 'addr', 'add', `${UPSTREAM.inner}/${UPSTREAM.prefix}`, 'dev', 'up0'])
  outside(ctx, [...inner, 'ip', 'link', 'set', 'up0', 'mtu', '65535', 'up'])
  // The egress rule must lead into our veth and nowhere else (as root, the default route is the real link).
  const route = outside(ctx, ['ip', '-4', 'route', 'get', UPSTREAM.inner])
  if (!new RegExp(`\\bdev ${hostEnd}\\b`).test(route)) throw new Error(`${UPSTREAM.inner} is not routed through ${hostEnd}: ${route.trim()}`)
  const { port } = await peer.request({ op: 'listen', host: UPSTREAM.inner, port: 0 }, 5000)
  return { peer, port, hostEnd }
}

async function benchNet(ctx, args) {
  const maxBytes = args['max-mib'] * 2 ** 20
  const maxMs = args.seconds * 1000
  console.log(
    `\nPart 3: TCP through each path, Node peers at both ends; throughput: one connection, 1 MiB writes, ` +
      `at most ${args['max-mib']} MiB or ${args.seconds} s, ${args.reps} runs; round trip: ${args.pings} one-byte ping-pongs (at most 5 s), ${args.reps} runs`,
  )
  const started = []
  const peer = (name) => {
    const p = new LineChild(name, process.execPath, [peerScript, args.pool])
    started.push(p)
    return p
  }
  const paths = []
  const udpPaths = []
  let session, relayBox, relaySession
  let mtus = ''
  // Segment size matters more than anything else here: loopback's MTU is 64 KiB, a veth's 1500 unless set.
  const mtu = (prefix, dev) => {
    try {
      return /\bmtu (\d+)/.exec(outside({ enter: prefix }, ['ip', '-o', 'link', 'show', 'dev', dev]))?.[1] ?? '?'
    } catch {
      return '?'
    }
  }
  try {
    const hostServer = peer('host server peer')
    const hostClient = peer('host client peer')
    await Promise.all([hostServer.next(10_000), hostClient.next(10_000)])
    const { port: hostPort } = await hostServer.request({ op: 'listen', host: '127.0.0.1', port: 0 }, 5000)
    paths.push({ name: 'host loopback (baseline)', client: hostClient, host: '127.0.0.1', port: hostPort })

    let upstream
    try {
      upstream = await startUpstream(ctx, args)
      started.push(upstream.peer)
    } catch (error) {
      fail('fake upstream (the veth path is left out)', error)
    }

    // Supervised as the pool starts a worker here: the host server's port shared, rootless the hand-over channel.
    const box = await ctx.sandbox('sandbox peer', [process.execPath, peerScript, args.pool], { ports: [hostPort], guard: true, handover: true })
    started.push(box)
    session = await ctx.session(box.pid, box.handover)
    const attached = await session.handle({ op: 'attach', egress: upstream ? [{ cidr: UPSTREAM.net }] : [] })
    if (upstream) paths.push({ name: `veth egress → upstream ${UPSTREAM.inner}`, client: box, host: UPSTREAM.inner, port: upstream.port })
    paths.push({ name: 'shared host port (hostPorts): 127.0.0.1 → host 127.0.0.1', client: box, host: '127.0.0.1', port: hostPort })
    const service = await session.handle({ op: 'hostService', port: hostPort, protocol: 'tcp' })
    const how = MODE === 'root' ? 'kernel DNAT' : 'socket hand-over'
    paths.push({ name: `hostService (${how}) → ${service.host} → host 127.0.0.1`, client: box, host: service.host, port: service.port })
    // Forward asked before the server binds (rootless: its bind gets a host socket), then one asked after.
    const early = await session.handle({ op: 'forward', port: BEFORE_BIND_PORT, protocol: 'tcp' })
    await box.request({ op: 'listen', host: '0.0.0.0', port: BEFORE_BIND_PORT }, 5000)
    paths.push({ name: `forward before bind (${MODE === 'root' ? 'kernel DNAT' : 'server on a host socket'}): host 127.0.0.1`, client: hostClient, host: early.host, port: early.port })
    const { port: boxPort } = await box.request({ op: 'listen', host: '0.0.0.0', port: 0 }, 5000)
    const forwarded = await session.handle({ op: 'forward', port: boxPort, protocol: 'tcp' })
    paths.push({ name: `forward after bind (${MODE === 'root' ? 'kernel DNAT' : 'hub relay'}): host 127.0.0.1 → ${attached.address}`, client: hostClient, host: forwarded.host, port: forwarded.port })
    if (MODE === 'rootless') {
      // The relay, as where the hand-over is unavailable: a sandbox without the hand-over channel.
      relayBox = await ctx.sandbox('relay sandbox peer', [process.execPath, peerScript, args.pool])
      started.push(relayBox)
      relaySession = await ctx.session(relayBox.pid)
      await relaySession.handle({ op: 'attach' })
      const relayed = await relaySession.handle({ op: 'hostService', port: hostPort, protocol: 'tcp' })
      paths.push({ name: `hostService (hub relay, the fallback) → ${relayed.host} → host 127.0.0.1`, client: relayBox, host: relayed.host, port: relayed.port })
    }

    for (const p of paths) (p.mbps = []), (p.rtt = [])
    // A short exchange first: a path that does not work is reported once, not measured.
    for (const p of paths) {
      try {
        await p.client.request({ op: 'rtt', host: p.host, port: p.port, count: 10, maxMs: 2000 }, 10_000)
      } catch (error) {
        fail(`path ${p.name}`, error)
        p.broken = true
      }
    }
    const live = () => paths.filter((p) => !p.broken)
    // One unmeasured transfer each: the first connections of a peer are markedly slower (JIT, buffers).
    for (const p of live()) await p.client.request({ op: 'throughput', host: p.host, port: p.port, maxBytes: Math.min(maxBytes, 256 * 2 ** 20), maxMs: 1000 }, 20_000).catch(() => {})
    mtus = `MTU: lo ${mtu([], 'lo')}, sandbox eth0 ${mtu([...ctx.enter, 'nsenter', '-t', String(box.pid), '-n', '--'], 'eth0')}` + (upstream ? `, fake upstream veth ${mtu(ctx.enter, upstream.hostEnd)}` : '')
    // Interleaved: each repetition runs every path once, the order rotating.
    for (let rep = 0; rep < args.reps; rep++) {
      const order = live().map((_, i, all) => all[(i + rep) % all.length])
      for (const p of order) {
        try {
          const r = await p.client.request({ op: 'throughput', host: p.host, port: p.port, maxBytes, maxMs }, maxMs + 20_000)
          p.mbps.push(r.bytes / 1e6 / (r.ms / 1000))
        } catch (error) {
          fail(`throughput ${p.name}`, error)
        }
      }
    }
    for (let rep = 0; rep < args.reps; rep++) {
      const order = live().map((_, i, all) => all[(i + rep) % all.length])
      for (const p of order) {
        try {
          const r = await p.client.request({ op: 'rtt', host: p.host, port: p.port, count: args.pings, maxMs: 5000 }, 15_000)
          p.rtt.push(...r.samples)
        } catch (error) {
          fail(`round trips ${p.name}`, error)
        }
      }
    }
    // UDP round trips: host loopback against hostService and forward UDP (root: kernel DNAT; rootless: the hub's datagram relay).
    try {
      const { port: udpPort } = await hostServer.request({ op: 'listenUdp', host: '127.0.0.1', port: 0 }, 5000)
      const udpService = await session.handle({ op: 'hostService', port: udpPort, protocol: 'udp' })
      udpPaths.push({ name: 'UDP host loopback (baseline)', client: hostClient, host: '127.0.0.1', port: udpPort, rtt: [] })
      udpPaths.push({ name: `UDP hostService → ${udpService.host} → host 127.0.0.1`, client: box, host: udpService.host, port: udpService.port, rtt: [] })
      const { port: boxUdpPort } = await box.request({ op: 'listenUdp', host: '0.0.0.0', port: 0 }, 5000)
      const udpForward = await session.handle({ op: 'forward', port: boxUdpPort, protocol: 'udp' })
      udpPaths.push({ name: `UDP forward: host 127.0.0.1 → ${attached.address}`, client: hostClient, host: udpForward.host, port: udpForward.port, rtt: [] })
      for (let rep = 0; rep < args.reps; rep++) {
        for (const p of udpPaths.map((_, i, all) => all[(i + rep) % all.length])) {
          const r = await p.client.request({ op: 'udpRtt', host: p.host, port: p.port, count: args.pings, maxMs: 5000 }, 15_000)
          p.rtt.push(...r.samples)
        }
      }
    } catch (error) {
      fail('UDP round trips', error)
    }
  } catch (error) {
    fail('network set-up', error)
  } finally {
    await session?.handle({ op: 'detach' }).catch(() => {})
    await session?.release()
    await relaySession?.handle({ op: 'detach' }).catch(() => {})
    await relaySession?.release()
    await Promise.all(started.map((p) => p.stop()))
  }

  const summary = paths.map(({ name, mbps = [], rtt: samples = [] }) => ({ name, mbps, rttMedianUs: median(samples), rttP90Us: p90(samples), rttCount: samples.length }))
  const base = paths[0]
  if (!base?.mbps) return summary
  const goal = (p) =>
    p.name.startsWith('veth') ? 'goal ≥ 0.75×'
      : /hand-over|host socket|shared host port/.test(p.name) ? 'goal ≥ 0.9×'
        : ''
  const tput = paths.map((p) => [MODE, p.name, p.mbps.length, fmt(median(p.mbps)), p === base ? '1.00×' : ratio(median(p.mbps), median(base.mbps)), goal(p)])
  const rttGoal = (p) => (/hand-over|host socket|shared host port/.test(p.name) ? 'goal ≤ 1.1×' : '')
  const rtt = paths.map((p) => [MODE, p.name, p.rtt.length, fmt(median(p.rtt)), fmt(p90(p.rtt)), p === base ? '1.00×' : ratio(median(p.rtt), median(base.rtt)), rttGoal(p)])
  console.log('\nThroughput, one TCP connection (MB/s = 10^6 bytes/s, median of runs)\n\n' + table(['mode', 'path', 'runs', 'MB/s', 'vs loopback', 'issue'], tput))
  if (mtus) console.log(`\n  ${mtus}`)
  console.log('\nRound trip, one byte each way (µs; all ping-pongs of all runs)\n\n' + table(['mode', 'path', 'n', 'median µs', 'p90 µs', 'vs loopback', 'issue'], rtt))
  const udpBase = udpPaths[0]
  if (udpBase?.rtt.length) {
    const udp = udpPaths.map((p) => [MODE, p.name, p.rtt.length, fmt(median(p.rtt)), fmt(p90(p.rtt)), p === udpBase ? '1.00×' : ratio(median(p.rtt), median(udpBase.rtt))])
    console.log('\nUDP round trip, one-byte datagrams (µs; all ping-pongs of all runs)\n\n' + table(['mode', 'path', 'n', 'median µs', 'p90 µs', 'vs loopback'], udp))
    summary.push(...udpPaths.map(({ name, rtt: samples }) => ({ name, mbps: [], rttMedianUs: median(samples), rttP90Us: p90(samples), rttCount: samples.length })))
  }
  return summary
}

// ---------------------------------------------------------------- main

async function main() {
  const args = parse(process.argv.slice(2))
  for (const needed of ['dist/uplink-host.js', 'build/netns-launch']) {
    if (!existsSync(join(repoRoot, needed))) throw new Error(`${needed} is missing: run \`npm run build\` first (\`npm run bench\` does)`)
  }
  const uid = process.getuid()
  console.log('vitest-environment-netns uplink benchmark')
  console.log(
    `  machine: ${os.availableParallelism()} CPUs (${os.cpus()[0]?.model ?? '?'}), kernel ${os.release()}, node ${process.version}\n` +
      `  user: uid ${uid} (${MODE}), pool ${args.pool}, load average at start: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`,
  )
  const started = performance.now()
  const deadline = started + args.budget * 1000
  // The whole run is bounded: past the budget (plus a minute for the part under way), clean up and fail.
  const watchdog = setTimeout(() => {
    console.log(`\n  time budget (--budget ${args.budget} s) exceeded: stopping`)
    killAll()
    process.exit(1)
  }, args.budget * 1000 + 60_000)
  watchdog.unref()

  const out = { args, mode: MODE, machine: { cpus: os.availableParallelism(), kernel: os.release(), node: process.version, uid } }
  let ctx
  try {
    ctx = await setUp(args)
    console.log(`  uplink helper: ${MODE === 'root' ? 'root (host namespace)' : `hub pid ${ctx.hubPid}`}`)
    if (!args['skip-attach']) out.attach = await benchAttach(ctx, args)
    if (!args['skip-net']) out.net = await benchNet(ctx, args)
  } catch (error) {
    fail('set-up', error)
  } finally {
    // The helper restores what it changed (forwarding) when it exits; the Vitest runs start their own.
    daemon?.stop()
  }
  if (args.vitest) out.vitest = await benchVitest(args, deadline)
  if (ctx?.warnings.length) console.log(`\n  warnings from the uplink session: ${[...new Set(ctx.warnings)].join('; ')}`)
  console.log(`\n  total ${((performance.now() - started) / 1000).toFixed(0)} s, load average at end: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`)
  out.failures = failures
  if (args.json) writeFileSync(args.json, JSON.stringify(out, null, 2) + '\n')
  if (failures.length) {
    console.log(`\n  ${failures.length} run(s) FAILED (see above): their rows are missing or thin.`)
    process.exitCode = 1
  }
  killAll()
}

main().catch((error) => {
  console.error(`bench/uplink.mjs: ${error.message}`)
  killAll()
  process.exitCode = 1
})
