// The Vite/Vitest plugin users add once: netns(options). When Vitest has
// resolved each project's config (CLI flags included), it checks once that
// namespaces can be created here, then routes the project's files through the
// netns pool and prints one line saying what runs where.
import { readFileSync } from 'node:fs'
import { join, relative } from 'node:path'
import type { Plugin } from 'vite'
import type { TestProject, TestSpecification, Vitest } from 'vitest/node'
import { NetnsConfigError, resolveOptions, type NetnsOptions, type ResolvedNetnsOptions } from './config.js'
import { unsupportedMessage } from './diagnostics.js'
import { pruneRuns } from './keep-tmp.js'
import { COMPILER_FIX, SHELL_COST } from './launcher-binary.js'
import { findTool, LauncherUnavailableError, nodePrefix, packageRoot, pathsToKeep, planLauncher, probe, type LaunchPlan, type ProbeResult } from './launcher.js'
import { cidrSize, formatCidr, overlaps, parseCidr } from './ipv4.js'
import { createNetnsPool, ENVIRONMENT_NAME, POOL_NAME, type ProjectPlan } from './pool.js'
import { hostNetworks } from './routes.js'
import { tunProblem } from './uplink-egress.js'
import { unsupportedRuntime } from './requirements.js'
import { registerSharing } from './shared-ports.js'
import { registerUplinkHost, uplinkDaemon } from './uplink-host.js'

export type { NetnsOptions } from './config.js'

const KEPT_RUNS = 5

// One probe per launcher command and Vitest process: projects and watch-mode restarts share it.
const probes = new Map<string, Promise<ProbeResult>>()
function probeOnce(plan: LaunchPlan): Promise<ProbeResult> {
  const key = [plan.file, ...plan.prefix].join('\0')
  let result = probes.get(key)
  if (!result) probes.set(key, (result = probe(plan)))
  return result
}

const ownDist = new RegExp(`^${join(packageRoot, 'dist').replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/`)
const runId = `${new Date().toISOString().replace(/[:.]/g, '-')}-${process.pid}`

interface ProjectState {
  plan: ProjectPlan
  summary: string
}
const projects = new WeakMap<TestProject, ProjectState>()
/** Files of a project the netns plugin routes (not the browser's, not typecheck's). */
function isRouted(spec: TestSpecification): boolean {
  return projects.has(spec.project) && spec.pool === POOL_NAME
}

async function planProject(project: TestProject, options: ResolvedNetnsOptions): Promise<ProjectState> {
  const config = project.config as typeof project.config & { poolRunner?: ProjectPlan['userPoolRunner'] }
  const userPool = config.pool === POOL_NAME ? 'forks' : config.pool
  const userPoolRunner = config.poolRunner?.name === POOL_NAME ? undefined : config.poolRunner
  const mode = process.getuid?.() === 0 ? 'root' : 'rootless'
  const keepTmpBase = options.keepTmpDir ?? join(config.root, 'node_modules', '.vitest-netns', 'kept-tmp')
  // Vite's server.fs.allow: the project's workspace (a monorepo's root) and what the user added. Modules under
  // the host's /tmp outside these are not the sandbox's, and are not loaded for it (module-guard.ts).
  const allowed = (project.vite.config.server?.fs?.allow ?? []).filter((path): path is string => typeof path === 'string')
  const keep = pathsToKeep([config.root, project.vitest.config.root, process.cwd(), nodePrefix(), project.vitest.distPath, packageRoot, ...allowed])
  const workerEnv: Record<string, string> = {
    VITEST_NETNS_MODE: mode,
    VITEST_NETNS_ROOT: config.root,
    VITEST_NETNS_STRICT: options.strict ? '1' : '0',
    VITEST_NETNS_KEEP_TMP: options.keepTmp,
    VITEST_NETNS_KEEP_TMP_DIR: join(keepTmpBase, runId),
    // The paths under /tmp both views share (src/sandbox-paths.ts): attachments elsewhere in /tmp go as bodies.
    VITEST_NETNS_KEPT: JSON.stringify(keep),
  }
  if (options.keepTmp !== 'never') pruneRuns(keepTmpBase, KEPT_RUNS - 1)

  let failure: string
  try {
    const launch = planLauncher(options, keep)
    const result = await probeOnce(launch)
    if (result.ok) {
      planSharing(options, launch, result)
      const uplink = planUplink(options, mode, project.config.maxWorkers)
      // Init can answer the sandbox's connects (seccomp user notification): what makes handed-in host sockets safe.
      const supervisable = launch.kind === 'native' && result.sharing === 'on'
      const listenRefusal = listenRefusalFor(options, launch, result)
      if (launch.kind === 'shell' && options.recordAttempts) workerEnv.VITEST_NETNS_RECORDING = 'unavailable: the shell launcher does not record'
      // Not native by choice (launcher: 'shell') or because none fits here: then why, and what it costs.
      const launcher = launch.kind === 'native' ? 'native launcher' : launch.why ? `shell launcher (not native: ${launch.why}; ${SHELL_COST}; see npx vitest-environment-netns doctor)` : 'shell launcher'
      const uplinks = !uplink ? 'off' : launch.kind === 'shell' ? 'unavailable (they need the native launcher)' : uplinkMechanism(mode, options, supervisable ? undefined : handoverUnavailable(result))
      const recording = launch.kind === 'shell' ? 'not recorded (shell launcher)' : result.recording === 'on' ? 'recorded' : options.recordAttempts ? `not recorded (${result.recording})` : 'not recorded'
      return {
        plan: { launch, keep, userPool, userPoolRunner, workerEnv, setupFile: options.strict || options.keepTmp !== 'never', uplink, sandbox: options.sandbox, hostPaths: options.hostPaths, listenRefusal, guard: listenRefusal.all === undefined && listenRefusal.tcp === undefined, handover: supervisable && uplink?.mode === 'rootless' },
        summary: `${mode} mode, ${launcher}, outside attempts ${recording}, uplinks: ${uplinks}` +
          (options.hostPorts.length ? `, shared host ports: ${options.hostPorts.join(', ')}` : ''),
      }
    }
    failure = unsupportedMessage(result, options.onUnsupported)
  } catch (error) {
    if (!(error instanceof LauncherUnavailableError)) throw error
    failure = `vitest-environment-netns: cannot start namespaced workers: ${error.message}`
  }
  if (options.onUnsupported === 'error') throw new Error(failure)
  registerSharing(undefined, options.hostPorts) // netns files are skipped: a global setup's shares change nothing
  const skipped = options.sandbox === 'all' ? 'every test file' : 'netns test files'
  project.vitest.logger.warn(`${failure}\n  ${skipped} will be reported as skipped (onUnsupported: 'skip').`)
  return {
    plan: { skipReason: failure.split('\n')[0], userPool, userPoolRunner, workerEnv, setupFile: true, sandbox: options.sandbox },
    summary: `unsupported here: ${skipped} skipped`,
  }
}

/**
 * Shared host ports need the native launcher and a kernel with seccomp user
 * notification: with hostPorts set, a run without them stops here; without,
 * shareHostPort() says why when a global setup calls it.
 */
function planSharing(options: ResolvedNetnsOptions, launch: LaunchPlan, result: ProbeResult): void {
  const unavailable =
    launch.kind === 'shell'
      ? `shared host ports need the native launcher, and this run uses the shell launcher${launch.why ? ` (${launch.why})` : ''}: use launcher: 'auto' or 'native'${launch.why ? `, and ${COMPILER_FIX}` : ''}.`
      : result.sharing === 'on'
        ? undefined
        : `${result.sharing.replace(/^unavailable: /, '')} (shared host ports use seccomp user notification; see npx vitest-environment-netns doctor).`
  if (unavailable && options.hostPorts.length) {
    throw new NetnsConfigError(`cannot share host ports ${options.hostPorts.join(', ')} (hostPorts): ${unavailable}`)
  }
  registerSharing(unavailable, options.hostPorts)
}

/** Checks the uplink pool against this host and the worker count, before any test runs. */
function planUplink(options: ResolvedNetnsOptions, mode: 'root' | 'rootless', maxWorkers: number): ProjectPlan['uplink'] {
  if (!options.uplink) return undefined
  const pool = parseCidr(options.uplink.pool)!
  // Rootless uplinks live in the hub, a namespace of their own, but their traffic to the host's networks would still be ambiguous.
  const clash = hostNetworks().find((network) => overlaps(network, pool))
  if (clash) {
    throw new NetnsConfigError(
      `the uplink pool ${options.uplink.pool} overlaps this host's network ${formatCidr(clash)} (an interface address or route). ` +
        `Choose a free block: netns({ uplink: { pool: '10.201.0.0/16' } }), or turn uplinks off with uplink: false.`,
    )
  }
  const blocks = cidrSize(pool) / 4
  if (blocks < maxWorkers) {
    throw new NetnsConfigError(
      `the uplink pool ${options.uplink.pool} has room for ${blocks} uplink${blocks === 1 ? '' : 's'} (one /30 each), fewer than maxWorkers (${maxWorkers}). ` +
        `Give a larger pool (a /${Math.max(0, 32 - Math.ceil(Math.log2(maxWorkers * 4)))} or wider) or lower maxWorkers.`,
    )
  }
  registerUplinkHost(mode, options.uplink)
  // Started now, while Vitest starts up: rootless, every sandbox is made inside the hub; as root,
  // the first uplink test would otherwise wait for the helper to start (~20 ms).
  uplinkDaemon(mode, options.uplink).catch(() => undefined)
  return { mode, options: options.uplink }
}

/**
 * Why netns.listen() is refused in this project: every request (listen:
 * false), or TCP ones. A TCP listener is a socket of the host's network
 * namespace: only a sandbox whose init answers its connect() calls (the
 * connect filter) may hold one, or the test could disconnect it and connect
 * it anywhere the host reaches. UDP listeners stay with the pool (relayed).
 */
function listenRefusalFor(options: ResolvedNetnsOptions, launch: LaunchPlan, result: ProbeResult): { all?: string; tcp?: string } {
  if (!options.listen) return { all: 'vitest-environment-netns: netns.listen() is off in this project (netns({ listen: false })): the host has no socket for it. Remove that option to allow it.' }
  if (launch.kind === 'shell') {
    return { tcp: `vitest-environment-netns: netns.listen() of a TCP socket needs the native launcher, and this run uses the shell launcher${launch.why ? ` (${launch.why})` : ''}: a TCP listener is a host socket, and only the native launcher's connect filter keeps a test from connecting it anew (UDP listeners are relayed and work here). Use launcher: 'auto' or 'native'${launch.why ? `, and ${COMPILER_FIX}` : ''}.` }
  }
  if (result.sharing !== 'on') {
    return { tcp: `vitest-environment-netns: netns.listen() of a TCP socket needs the connect filter (seccomp user notification), which cannot run here: ${result.sharing.replace(/^unavailable: /, '')}. A TCP listener is a host socket, and only that filter keeps a test from connecting it anew (UDP listeners are relayed and work here). See npx vitest-environment-netns doctor.` }
  }
  return {}
}

/** Why rootless host services cannot be handed over here (the relay carries them). */
function handoverUnavailable(result: ProbeResult): string {
  return result.sharing.replace(/^unavailable: /, '')
}

/** What a per-test uplink goes through here. `noHandover`: why host sockets cannot be handed over (rootless). */
function uplinkMechanism(mode: 'root' | 'rootless', options: ResolvedNetnsOptions, noHandover?: string): string {
  if (mode === 'root') return 'veth in the host namespace, kernel NAT'
  const via = options.uplink ? options.uplink.egressVia : 'none'
  const helper = via === 'none' ? undefined : via !== 'slirp4netns' && findTool('pasta') ? 'pasta' : via !== 'pasta' && findTool('slirp4netns') ? 'slirp4netns' : undefined
  // When egress past the machine cannot work here, the first test that asks for it is told why (uplink-host.ts
  // attach) and doctor has a row for it: a run that never asks is not told to install anything.
  const egress = helper && !tunProblem() ? `; egress past this machine via ${helper}` : via === 'none' ? '; egress past this machine off' : ''
  const services = noHandover === undefined
    ? 'host sockets handed over for TCP host services and forwards (the hub relays the rest)'
    : `host services and forwards relayed by the hub (no socket hand-over: ${noHandover})`
  return `hub namespace, ${services}${egress}`
}

/** The environment a file will run in, as Vitest decides it (getSpecificationsOptions): a docblock first, then the project's config. */
function environmentOf(spec: TestSpecification): string {
  try {
    const docblock = /@(?:vitest|jest)-environment\s+([\w-]+)\b/.exec(readFileSync(spec.moduleId, 'utf8'))
    if (docblock) return docblock[1]!
  } catch {
    // unreadable here: Vitest will report it
  }
  return spec.project.config.environment || 'node'
}

const plural = (count: number, noun: string) => `${count} ${noun}${count === 1 ? '' : 's'}`

/** The start line: how many files run in namespaces and how, and which files escaped by docblock. */
function startLine(vitest: Vitest, specifications: ReadonlyArray<TestSpecification>): string | undefined {
  const sandboxed: TestSpecification[] = []
  /** Files whose project says environment: 'netns' but whose docblock chose another one (sandbox: 'netns'): unsandboxed. */
  const escaped: Array<{ spec: TestSpecification; environment: string }> = []
  for (const spec of specifications.filter(isRouted)) {
    if (projects.get(spec.project)!.plan.sandbox === 'all') {
      sandboxed.push(spec)
      continue
    }
    const environment = environmentOf(spec)
    if (environment === ENVIRONMENT_NAME) sandboxed.push(spec)
    else if (spec.project.config.environment === ENVIRONMENT_NAME) escaped.push({ spec, environment })
  }
  if (!sandboxed.length && !escaped.length) return undefined
  const modes = [...new Set(sandboxed.map((spec) => projects.get(spec.project)!.summary))]
  const how = modes.length ? ` (${modes.join('; ')})` : ''
  const total = specifications.length
  const head =
    sandboxed.length === total && sandboxed.some((spec) => projects.get(spec.project)!.plan.sandbox === 'all')
      ? total === 1
        ? `the 1 test file runs in its own namespaces, in its own environment${how}`
        : `all ${total} test files run in their own namespaces, each in its own environment${how}`
      : total === 1 && sandboxed.length === 1
        ? `the 1 test file runs in its own namespaces${how}`
        : `${sandboxed.length} of ${plural(total, 'test file')} run in their own namespaces${how}`
  if (!escaped.length) return `vitest-environment-netns: ${head}`
  const example = escaped[0]!
  return (
    `vitest-environment-netns: ${head}; ${plural(escaped.length, 'file')} chose another environment by docblock ` +
    `(e.g. ${relative(vitest.config.root, example.spec.moduleId)}: ${example.environment}) and run unsandboxed — use sandbox: 'all'`
  )
}

const announced = new WeakSet<Vitest>()

/** One line at the start of every run: how many files run in namespaces, and how. */
function announce(vitest: Vitest): void {
  if (announced.has(vitest)) return
  announced.add(vitest)
  vitest.config.reporters.push({
    onTestRunStart(specifications: ReadonlyArray<TestSpecification>) {
      const line = startLine(vitest, specifications)
      if (line) vitest.logger.log(line)
    },
  } as never)
}

/**
 * Runs test files whose environment is `netns` (with sandbox: 'all', every
 * test file) in their own user, network, mount and PID namespaces. Add it
 * once: `plugins: [netns()]`.
 */
export function netns(options?: NetnsOptions): Plugin {
  const resolved = resolveOptions(options)
  return {
    name: 'vitest-environment-netns',
    // The worker setup file and its imports are plain ESM: Node loads them directly instead of
    // Vite transforming them for every worker, as it would from node_modules (also when linked).
    config: () => ({ test: { server: { deps: { external: [ownDist] } } } }) as never,
    async configureVitest({ project, vitest }: { project: TestProject; vitest: Vitest }) {
      const runtime = unsupportedRuntime(vitest.version, process.version)
      if (runtime) throw new NetnsConfigError(runtime)
      const state = await planProject(project, resolved)
      projects.set(project, state)
      const config = project.config as typeof project.config & { poolRunner?: unknown }
      config.pool = POOL_NAME
      config.poolRunner = createNetnsPool(state.plan)
      announce(vitest)
    },
  } as Plugin
}

export default netns
