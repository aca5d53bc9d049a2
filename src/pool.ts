// The netns pool: one custom Vitest pool that starts every `netns` test file
// (with sandbox: 'all', every test file, in its own environment) in its own
// namespaced worker process and hands every other file to the worker the
// project had configured (forks, threads, vmForks, vmThreads or a custom
// pool), unchanged.
import { spawn, type ChildProcess } from 'node:child_process'
import { EventEmitter } from 'node:events'
import { relative, resolve } from 'node:path'
import type { Duplex } from 'node:stream'
import { fileURLToPath } from 'node:url'
import {
  ForksPoolWorker,
  ThreadsPoolWorker,
  VmForksPoolWorker,
  VmThreadsPoolWorker,
  type PoolOptions,
  type PoolRunnerInitializer,
  type PoolWorker,
  type WorkerRequest,
} from 'vitest/node'
import { formatAttempts, queryAttempts } from './attempts.js'
import type { ResolvedUplinkOptions } from './config.js'
import { hostPathsToBind, type HostPath } from './host-paths.js'
import { HANDOVER_FD, HandoverChannel } from './handover.js'
import { launchCommand, withSupervision, type LaunchPlan } from './launcher.js'
import { ModuleGuard } from './module-guard.js'
import { SandboxPaths } from './sandbox-paths.js'
import { annotateSharedPortHints, sharedPorts } from './shared-ports.js'
import { HostListeners } from './listen-host.js'
import { isListenMessage } from './listen-protocol.js'
import { annotateHostTmpErrors } from './tmp-hint.js'
import { uplinkDaemon, UplinkSession, type UplinkMode } from './uplink-host.js'
import { MAX_REQUEST_LINE, parseUplinkRequest, splitLines, type UplinkEnvelope } from './uplink-protocol.js'

export const POOL_NAME = 'netns'
export const ENVIRONMENT_NAME = 'netns'
const SIGKILL_TIMEOUT = 500
/** stdio index of the uplink channel (after the attempts control socket, index 4). */
const UPLINK_FD = 5
/** Bytes of uplink answers a worker may leave unread before its channel is closed. */
const MAX_UNREAD_ANSWERS = 1 << 20
const workerSetupFile = fileURLToPath(new URL('./worker-setup.js', import.meta.url))
const workerPreload = new URL('./worker-preload.js', import.meta.url).href
// `node --import` exists from Node 20.6 on; before that the setup file adds the hints.
const [nodeMajor = 0, nodeMinor = 0] = process.versions.node.split('.').map(Number)
const canPreload = nodeMajor > 20 || (nodeMajor === 20 && nodeMinor >= 6)

type StartRequest = WorkerRequest & { type: 'start' }

/**
 * What a netns worker is told at start: for `netns` files, Vitest's built-in
 * `node` environment (the sandbox is already made by the launcher; loading this
 * package as an environment would cost a module runner of its own, ~50 ms per
 * file); any other environment (sandbox: 'all') unchanged, name and options, so
 * the worker sets it up itself inside the sandbox. And, when needed,
 * worker-setup.ts as one more setup file (strict, keepTmp, skip).
 */
function netnsStart(message: StartRequest, withSetupFile: boolean): StartRequest {
  const { context } = message
  const setupFiles = withSetupFile ? [...context.config.setupFiles, workerSetupFile] : context.config.setupFiles
  const environment = context.environment.name === ENVIRONMENT_NAME ? { ...context.environment, name: 'node' } : context.environment
  return {
    ...message,
    context: {
      ...context,
      environment,
      config: { ...context.config, setupFiles },
    },
  }
}

/** What the plugin decided for one project when Vitest started. */
export interface ProjectPlan {
  /** How to start a namespaced worker; absent when namespaces are unsupported and skipped. */
  launch?: LaunchPlan
  /** Paths under /tmp bound back into every sandbox (pathsToKeep): the rest of /tmp is private. */
  keep?: string[]
  /** Host paths shared by configuration (hostPaths); shareHostPath() adds more while the run starts. */
  hostPaths?: HostPath[]
  /** Why netns files are skipped (onUnsupported: 'skip'). */
  skipReason?: string
  /** The pool the user configured, for files of other environments. */
  userPool: string
  userPoolRunner?: PoolRunnerInitializer
  /** Extra environment of netns workers (mode, strict, keepTmp…), read by worker-setup.ts. */
  workerEnv: Record<string, string>
  /** Whether netns workers need worker-setup.ts (strict, keepTmp): it costs each file ~15 ms. */
  setupFile: boolean
  /** Per-test uplinks, unless turned off. */
  uplink?: { mode: UplinkMode; options: ResolvedUplinkOptions }
  /** Which files get namespaces: those of environment `netns`, or all of them (each in its own environment). */
  sandbox: 'netns' | 'all'
  /** Why netns.listen() requests are refused here: all of them (listen: false), or TCP ones (no connect filter). */
  listenRefusal?: { all?: string; tcp?: string }
  /**
   * Every worker's init answers its connects (the launcher's --guard): host sockets handed in by netns.listen()
   * can then never be connected anew. Set when TCP listeners are served: the native launcher, seccomp user notification.
   */
  guard?: boolean
  /** Rootless uplinks: TCP host services are handed over as host sockets by init (--handover-fd), not relayed. */
  handover?: boolean
}

type Task = Parameters<NonNullable<PoolWorker['canReuse']>>[0]

export function createNetnsPool(plan: ProjectPlan): PoolRunnerInitializer {
  return {
    name: POOL_NAME,
    createPoolWorker(options: PoolOptions): PoolWorker {
      if (options.environment.name === ENVIRONMENT_NAME || plan.sandbox === 'all') {
        if (plan.launch) return new NetnsPoolWorker(options, plan, plan.launch)
        return new DelegatingPoolWorker(new ForksPoolWorker(skipOptions(options, plan)), options.environment, (m) => netnsStart(m, true))
      }
      return new DelegatingPoolWorker(userWorker(options, plan), options.environment)
    },
  }
}

function userWorker(options: PoolOptions, plan: ProjectPlan): PoolWorker {
  switch (plan.userPool) {
    case 'threads': return new ThreadsPoolWorker(options)
    case 'vmThreads': return new VmThreadsPoolWorker(options)
    case 'vmForks': return new VmForksPoolWorker(options)
    case 'forks': return new ForksPoolWorker(options)
  }
  if (plan.userPoolRunner) return plan.userPoolRunner.createPoolWorker(options)
  throw new Error(`vitest-environment-netns: the project's pool '${plan.userPool}' is not one this plugin can hand files to.`)
}

/** Unsupported machine, onUnsupported 'skip': a plain worker whose tests skip themselves (see worker-setup.ts). */
function skipOptions(options: PoolOptions, plan: ProjectPlan): PoolOptions {
  return { ...options, env: { ...options.env, VITEST_NETNS_SKIP: plan.skipReason ?? 'netns is not supported here' } }
}

/** Environments equal as Vitest compares them: by name and options. */
function sameEnvironment(a: PoolOptions['environment'], b: PoolOptions['environment']): boolean {
  return a.name === b.name && JSON.stringify(a.options ?? null) === JSON.stringify(b.options ?? null)
}

/**
 * A worker of the user's pool under the netns pool's name, so Vitest can keep
 * reusing it (isolate: false) exactly as before. The worker itself is told its
 * real pool name, which the runtime uses (vmThreads/vmForks behave differently).
 */
class DelegatingPoolWorker implements PoolWorker {
  readonly name = POOL_NAME
  constructor(
    private readonly inner: PoolWorker,
    private readonly environment: PoolOptions['environment'],
    private readonly rewriteStart: (message: StartRequest) => StartRequest = (message) => message,
  ) {}
  get cacheFs() { return this.inner.cacheFs }
  get reportMemory() { return this.inner.reportMemory }
  on(event: string, callback: (...args: any[]) => void) { this.inner.on(event, callback) }
  off(event: string, callback: (...args: any[]) => void) { this.inner.off(event, callback) }
  send(message: WorkerRequest) {
    if (message.type === 'start') {
      const start = this.rewriteStart(message)
      message = { ...start, context: { ...start.context, pool: this.inner.name } }
    }
    this.inner.send(message)
  }
  deserialize(data: unknown) { return this.inner.deserialize(data) }
  start() { return this.inner.start() }
  stop() { return this.inner.stop() }
  canReuse(task: Task): boolean {
    if (task.context.environment.name === ENVIRONMENT_NAME) return false
    if (this.inner.canReuse) return this.inner.canReuse(task)
    return sameEnvironment(this.environment, task.context.environment)
  }
}

type Request = WorkerRequest & { type: 'run' | 'collect' }
interface Response { __vitest_worker_response__: true; type: string; error?: unknown }

function isResponse(message: unknown, type?: string): message is Response {
  const m = message as Response | null
  return typeof m === 'object' && m !== null && m.__vitest_worker_response__ === true && (type === undefined || m.type === type)
}

/**
 * A worker process started inside fresh namespaces. Vitest talks to it as to
 * its own forks worker (same entry point, same IPC). A task may carry several
 * files (isolate: false with one worker): then each file still gets a fresh
 * process, and so fresh namespaces, one after the other, under this object.
 */
export class NetnsPoolWorker implements PoolWorker {
  readonly name = POOL_NAME
  // Forks workers pass transformed modules as files in Vitest's temp dir under /tmp, which the private /tmp hides.
  readonly cacheFs = false
  private readonly events = new EventEmitter()
  private child: ChildProcess | undefined
  private startRequest: WorkerRequest | undefined
  private readonly entrypoint: string
  private readonly stdout: NodeJS.WritableStream
  private readonly stderr: NodeJS.WritableStream
  private readonly env: NodeJS.ProcessEnv
  private readonly execArgv: string[]
  private readonly setupFile: boolean
  /** Files of the request the current process runs: the attempts report names them. */
  private files: string[] = []
  /** The attempts report of the last finished file, until it is printed. */
  private reporting: Promise<void> | undefined
  /** Rootless uplinks: the hub every sandbox's user namespace is made a child of. */
  private hubPid: number | undefined
  private uplinkOff: string | undefined
  /** Keeps Vitest's main process from reading the sandbox's private places for the worker (module-guard.ts). */
  private readonly guard: ModuleGuard

  constructor(private readonly options: PoolOptions, private readonly plan: ProjectPlan, private readonly launch: LaunchPlan) {
    this.guard = new ModuleGuard(new SandboxPaths(plan.keep ?? []), options.project.config.root)
    this.entrypoint = resolve(options.distPath, 'workers/forks.js')
    this.stdout = options.project.vitest.logger.outputStream
    this.stderr = options.project.vitest.logger.errorStream
    this.env = {
      ...options.env,
      TMPDIR: '/tmp',
      TMP: '/tmp',
      TEMP: '/tmp',
      ...plan.workerEnv,
      VITEST_NETNS: '1',
    }
    this.execArgv = canPreload ? ['--import', workerPreload, ...options.execArgv] : options.execArgv
    this.setupFile = plan.setupFile || !canPreload
  }

  on(event: string, callback: (...args: any[]) => void) { this.events.on(event, callback) }
  off(event: string, callback: (...args: any[]) => void) { this.events.off(event, callback) }
  deserialize(data: unknown) { return data }
  canReuse() { return false } // a namespaced worker never serves a second task

  async start() {
    const uplink = this.plan.uplink
    if (uplink?.mode === 'rootless' && this.hubPid === undefined && this.uplinkOff === undefined) {
      try {
        this.hubPid = (await uplinkDaemon(uplink.mode, uplink.options)).hubPid
      } catch (error) {
        // Files without uplinks run as before; tests asking for one fail with this reason.
        this.uplinkOff = (error as Error).message.replace(/^vitest-environment-netns: /, '')
        warnOnce(this.options.project.vitest.logger, `vitest-environment-netns: uplinks are unavailable in this run: ${this.uplinkOff}`)
      }
    }
    this.child ??= this.spawnChild()
  }

  private spawnChild(): ChildProcess {
    const uplink = this.plan.uplink && this.uplinkOff === undefined ? this.plan.uplink : undefined
    // Read at each start: a global setup's shareHostPort()/shareHostPath() calls come after the plan was made;
    // shares made before a file starts hold for it.
    const shares = hostPathsToBind(this.plan.hostPaths ?? [])
    const native = this.launch.kind === 'native'
    const handover = native && uplink?.mode === 'rootless' && this.plan.handover === true
    const { file, args } = withSupervision(launchCommand(this.launch, this.hubPid, shares), {
      ports: native ? sharedPorts() : [],
      guard: native && this.plan.guard === true,
      handoverFd: handover ? HANDOVER_FD : undefined,
    })
    const sameInBoth = [...(this.plan.keep ?? []), ...shares.map((share) => share.path)]
    const stdio: ('pipe' | 'ipc' | 'ignore')[] = ['pipe', 'pipe', 'pipe', 'ipc']
    if (this.launch.controlFd || uplink) stdio.push(this.launch.controlFd ? 'pipe' : 'ignore')
    if (uplink) stdio.push('pipe')
    if (handover) stdio.push('pipe')
    const off = this.uplinkOff ?? (this.plan.uplink ? undefined : 'the netns() plugin has uplink: false')
    const env = uplink ? { ...this.env, VITEST_NETNS_UPLINK_FD: String(UPLINK_FD) } : { ...this.env, VITEST_NETNS_UPLINK_OFF: off }
    const child = spawn(file, [...args, process.execPath, ...this.execArgv, this.entrypoint], { env, stdio, serialization: 'advanced' })
    const handoverChannel = handover ? new HandoverChannel((child.stdio as unknown as Duplex[])[HANDOVER_FD]!) : undefined
    if (uplink && child.pid) this.serveUplink(child, uplink, (child.stdio as unknown as Duplex[])[UPLINK_FD]!, handoverChannel)
    const control = this.launch.controlFd ? (child.stdio[this.launch.controlFd] as Duplex) : undefined
    const listeners = new HostListeners(child, this.plan.listenRefusal)
    // netns.listen({ protocol: 'udp' }): the host sockets relayed for this worker go with it.
    child.once('disconnect', () => listeners.closeAll())
    child.once('exit', () => listeners.closeAll())
    child.on('message', (received) => {
      // netns.listen(): answered here, never seen by Vitest.
      if (isListenMessage(received)) return listeners.handle(received)
      const verdict = this.guard.fromWorker(received)
      if ('answer' in verdict) {
        if (verdict.answer && child.connected) child.send(verdict.answer)
        return
      }
      const message = verdict.pass
      annotateSharedPortHints(message)
      annotateHostTmpErrors(message, sameInBoth)
      // At the end of each file: what it tried to reach. Asked while Vitest goes on (stop() waits for the
      // answer before the launcher, which answers, is stopped), so no round trip is added to a file.
      if (control && isResponse(message, 'testfileFinished')) this.reporting = this.reportAttempts(control, [...this.files])
      this.onChildMessage(message)
    })
    child.on('error', (error) => this.events.emit('error', error))
    child.on('exit', (code, signal) => {
      if (this.child === child) this.events.emit('exit', code, signal)
    })
    child.stdout?.pipe(this.stdout, { end: false })
    child.stderr?.pipe(this.stderr, { end: false })
    return child
  }

  send(message: WorkerRequest) {
    if (message.type === 'start') message = this.startRequest = netnsStart(message, this.setupFile)
    if (message.type === 'run' || message.type === 'collect') {
      if (message.context.files.length > 1) {
        void this.runEachFileAlone(message as Request)
        return
      }
      this.files = message.context.files.map((file) => file.filepath)
    }
    this.child?.send(this.guard.toWorker(message) as WorkerRequest)
  }

  /**
   * Answers the worker's uplink requests (src/uplink.ts) until it exits; then its uplink is released.
   * The worker runs the test's code: every line is checked (parseUplinkRequest) before anything is
   * done for it, and only the pool's own facts (the pid it spawned) name the sandbox to the helper.
   */
  private serveUplink(child: ChildProcess, uplink: NonNullable<ProjectPlan['uplink']>, channel: Duplex, handover?: HandoverChannel) {
    const logger = this.options.project.vitest.logger
    // The run's helper: started with the run (plugin.ts), the same one for every worker (uplinkDaemon caches it).
    const session = new UplinkSession(() => uplinkDaemon(uplink.mode, uplink.options), child.pid!, (message) => warnOnce(logger, message), handover)
    // The worker's first message: the launcher has made the namespaces, so the pid is the sandbox's now.
    child.once('message', () => void session.register().catch(() => undefined))
    const answer = (envelope: UplinkEnvelope) => {
      if (channel.destroyed) return
      // A worker that writes requests but never reads the answers: the pool does not buffer them for ever.
      if (channel.writableLength > MAX_UNREAD_ANSWERS) return void channel.destroy()
      channel.write(`${JSON.stringify(envelope)}\n`)
    }
    channel.on(
      'data',
      splitLines(MAX_REQUEST_LINE, (line) => {
        const parsed = line instanceof Error ? { seq: -1, error: `vitest-environment-netns: bad uplink request: ${line.message}.` } : parseUplinkRequest(line)
        if (parsed.error !== undefined) return answer({ seq: parsed.seq, error: parsed.error })
        void session
          .handle(parsed.request)
          .catch((error: Error) => ({ error: error.message }))
          .then((reply) => answer({ seq: parsed.seq, ...reply }))
      }),
    )
    channel.on('error', () => {}) // the worker went away: its exit releases the uplink
    child.once('exit', () => void session.release())
  }

  private async reportAttempts(control: Duplex, finished: readonly string[]) {
    const attempts = await queryAttempts(control).catch(() => [])
    if (!attempts.length) return
    const root = this.options.project.config.root
    const files = finished.map((file) => relative(root, file)).join(', ') || 'a netns file'
    this.options.project.vitest.logger.warn(
      `vitest-environment-netns: ${files} tried to reach outside destinations (all blocked): ${formatAttempts(attempts)}`,
    )
  }

  // --- one process per file, when Vitest hands several files to one worker ---

  private swallow: ((message: unknown) => boolean) | undefined

  private onChildMessage(message: unknown) {
    if (this.swallow?.(message)) return
    this.events.emit('message', message)
  }

  /** Resolves with the first message of `type`, which is not passed on to Vitest. */
  private take(type: string): Promise<Response> {
    return new Promise((resolvePromise, reject) => {
      const child = this.child!
      const onExit = () => reject(new Error(`netns worker exited while waiting for '${type}'`))
      child.once('exit', onExit)
      this.swallow = (message) => {
        if (!isResponse(message, type)) return false
        this.swallow = undefined
        child.off('exit', onExit)
        resolvePromise(message)
        return true
      }
    })
  }

  private async runEachFileAlone(request: Request) {
    const files = request.context.files
    let firstError: unknown
    try {
      for (const [index, file] of files.entries()) {
        if (index > 0) {
          const started = this.take('started')
          this.child!.send(this.startRequest!)
          const { error } = await started
          if (error) throw error
        }
        const finished = this.take('testfileFinished')
        this.files = [file.filepath]
        this.child!.send({ ...request, context: { ...request.context, files: [file] } })
        const result = await finished
        firstError ??= result.error
        if (index === files.length - 1) {
          // Vitest expects one answer for the whole task: the last file's, carrying any earlier file's error.
          this.events.emit('message', { ...result, error: firstError })
          return
        }
        const stopped = this.take('stopped')
        this.child!.send({ type: 'stop', __vitest_worker_request__: true } as WorkerRequest)
        firstError ??= (await stopped).error
        await this.replaceChild()
      }
    } catch (error) {
      this.events.emit('message', { __vitest_worker_response__: true, type: 'testfileFinished', error: firstError ?? serialize(error) })
    }
  }

  private async replaceChild() {
    const old = this.child!
    this.child = undefined
    await this.terminate(old)
    this.child = this.spawnChild()
  }

  private async terminate(child: ChildProcess) {
    await this.reporting // the launcher answers the last attempts query: it stays until it has
    const exited = new Promise<void>((resolvePromise) => {
      if (child.exitCode !== null || child.signalCode !== null) resolvePromise()
      else child.once('exit', () => resolvePromise())
    })
    const killer = setTimeout(() => child.kill('SIGKILL'), SIGKILL_TIMEOUT)
    child.kill()
    await exited
    clearTimeout(killer)
    child.stdout?.unpipe(this.stdout)
    child.stderr?.unpipe(this.stderr)
  }

  async stop() {
    const child = this.child
    if (!child) return
    await this.terminate(child)
    this.child = undefined
  }
}

const warned = new Set<string>()
function warnOnce(logger: { warn: (message: string) => void }, message: string) {
  if (warned.has(message)) return
  warned.add(message)
  logger.warn(message)
}

function serialize(error: unknown) {
  return error instanceof Error ? { name: error.name, message: error.message, stack: error.stack } : error
}
