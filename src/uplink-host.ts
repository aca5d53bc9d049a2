// The host side of per-test uplinks, in the Vitest process. One helper
// process per run, `netns-launch uplink` (native/uplink.c), does the kernel
// work through netlink:
//   - root: in the host's namespaces; rules live in an nf_tables table of its
//     own that the kernel deletes when the helper exits, even on SIGKILL;
//   - rootless: it creates the "hub", a user + network namespace owned by the
//     user. Every sandbox's user namespace is made a child of the hub's (the
//     launcher's --hub), so the hub's root may configure it. The hub relays
//     forwards and host services to the host's loopback itself (no
//     /dev/net/tun needed); only egress beyond the machine goes through pasta.
// Each netns worker gets an UplinkSession that turns its requests (already
// checked by parseUplinkRequest, src/uplink-protocol.ts) into helper
// commands, built from numbers and fixed words only. The pool registers each
// sandbox with the helper under a number of its own ("register <sandbox>
// <pid>", the pid of the launcher it spawned); every later command names that
// number, never a pid. Replies carry the command's request number, so they
// are matched by number, not by order. Interface names (vn<id>, id = the
// /30's index in the IPv4 space) and host ports (bound sockets) are unique by
// kernel rules, which is the lock between two runs at once.
import { spawn, type ChildProcess } from 'node:child_process'
import { readlinkSync, realpathSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { COMPILER_FIX, nativeLauncher } from './launcher-binary.js'
import { findTool } from './launcher.js'
import { HandoverRefused, type HandoverChannel } from './handover.js'
import { formatAddress, formatCidr, parseCidr, type Cidr } from './ipv4.js'
import { routedInHub } from './routes.js'
import { startEgressHelper } from './uplink-egress.js'
import type { ResolvedUplinkOptions } from './config.js'
import type { EgressRule, UplinkReply, UplinkRequest } from './uplink-protocol.js'

export type UplinkMode = 'root' | 'rootless'

export class UplinkError extends Error {
  constructor(message: string) {
    super(`vitest-environment-netns: ${message}`)
    this.name = 'UplinkError'
  }
}

interface Pending {
  resolve: (value: string) => void
  reject: (error: Error) => void
  command: HelperCommand
}

type HelperCommand = 'register' | 'attach' | 'detach' | 'release' | 'hostservice' | 'forward' | 'egress'
/** What a helper command is made of: whole numbers, the two protocol names, CIDR blocks (written here). */
type HelperArg = number | 'tcp' | 'udp' | Cidr

function helperArg(arg: HelperArg): string {
  if (typeof arg === 'number') {
    if (!Number.isSafeInteger(arg) || arg < 0) throw new UplinkError(`internal error: ${arg} in an uplink helper command`)
    return String(arg)
  }
  if (arg === 'tcp' || arg === 'udp') return arg
  if (typeof arg === 'object' && arg !== null) return formatCidr(arg)
  throw new UplinkError(`internal error: ${JSON.stringify(arg)} in an uplink helper command`)
}

/** The `netns-launch uplink` helper: one command per line in, one reply per line out, matched by request number. */
export class UplinkDaemon {
  readonly hubPid: number
  private readonly pending = new Map<number, Pending>()
  private lastRequest = 0
  private lastSandbox = 0
  private closed: Error | undefined
  /** Indexes (/30 blocks of the pool) in use by this run. */
  private readonly used = new Set<number>()
  private egressPath: Promise<string | undefined> | undefined

  private constructor(
    private readonly child: ChildProcess,
    hubPid: number,
    readonly mode: UplinkMode,
    readonly options: ResolvedUplinkOptions,
    lines: AsyncIterableIterator<string>,
    private readonly stderrTail: () => string,
  ) {
    this.hubPid = hubPid
    void this.readReplies(lines)
  }

  static async start(mode: UplinkMode, options: ResolvedUplinkOptions): Promise<UplinkDaemon> {
    const launcher = nativeLauncher().path
    if (!launcher) throw new UplinkError(`uplinks need the native launcher, and ${nativeLauncher().why}. To fix: ${COMPILER_FIX}.`)
    const child = spawn(launcher, ['uplink', mode === 'root' ? '--root' : '--hub', '--pool', options.pool], {
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    let stderr = ''
    // Kept for the whole run: if the helper dies later, what it said is the reason.
    child.stderr!.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-2000)))
    const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]()
    const spawnError = new Promise<never>((_, reject) => child.once('error', reject))
    const first = await Promise.race([lines.next(), spawnError]).catch((error: Error) => {
      throw new UplinkError(`cannot start the uplink helper ${launcher}: ${error.message}`)
    })
    const line = first.done ? '' : first.value
    const ready = /^ready (\d+)$/.exec(line)
    if (!ready) {
      child.kill('SIGKILL')
      const why = line.startsWith('error ') ? line.slice(6) : stderr.trim() || `it exited (${child.exitCode ?? child.signalCode ?? 'no answer'})`
      throw new UplinkError(`cannot set up the ${mode === 'root' ? 'host side of uplinks' : 'uplink hub namespace'}: ${why}`)
    }
    child.stderr!.resume()
    // Writing to a helper that died fails with EPIPE; its death is reported through its output closing.
    child.stdin!.on('error', () => {})
    // Not a reason to keep Vitest alive; it also dies with Vitest (PR_SET_PDEATHSIG).
    child.unref()
    ;(child.stdin as unknown as { unref?: () => void }).unref?.()
    ;(child.stdout as unknown as { unref?: () => void }).unref?.()
    ;(child.stderr as unknown as { unref?: () => void }).unref?.()
    return new UplinkDaemon(child, Number(ready[1]), mode, options, lines, () => stderr.trim())
  }

  private async readReplies(lines: AsyncIterableIterator<string>) {
    try {
      for await (const line of lines) {
        // "<request> ok[ value]" or "<request> error <step>: <ERRNO>: <message>"
        const match = /^([1-9][0-9]{0,9}) (ok|error)(?: (.*))?$/.exec(line)
        const waiting = match && this.pending.get(Number(match[1]))
        if (!match || !waiting) continue // request 0: a line the helper could not read, which this side never writes
        this.pending.delete(Number(match[1]))
        if (match[2] === 'ok') waiting.resolve(match[3] ?? '')
        else {
          // Named after the command unless the step already says it.
          const what = waiting.command
          const detail = match[3] ?? 'no detail'
          waiting.reject(new UplinkError(detail.startsWith(`${what}:`) ? detail : `${what}: ${detail}`))
        }
      }
    } catch {
      // the stream broke: treated as the helper exiting
    }
    this.closed ??= new UplinkError(`the uplink helper exited unexpectedly: ${await this.exitReason()}`)
    for (const waiting of this.pending.values()) waiting.reject(this.closed)
    this.pending.clear()
  }

  /** How the helper ended and its last words, waiting briefly for the exit status after stdout closed. */
  private async exitReason(): Promise<string> {
    const child = this.child
    if (child.exitCode === null && child.signalCode === null) {
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, 1000)
        child.once('exit', () => (clearTimeout(timer), resolve(undefined)))
      })
    }
    const status =
      child.signalCode !== null ? `killed by ${child.signalCode}` : child.exitCode !== null ? `exit code ${child.exitCode}` : 'still running, its output closed'
    const said = this.stderrTail()
    return `${status}${said ? `; it said: ${said}` : ''}. Please report this with the output above.`
  }

  /** Sends one command; resolves with what follows "ok" in its reply. */
  command(command: HelperCommand, ...args: HelperArg[]): Promise<string> {
    if (this.closed) return Promise.reject(this.closed)
    let line: string
    try {
      line = [command, ...args.map(helperArg)].join(' ')
    } catch (error) {
      return Promise.reject(error)
    }
    this.lastRequest = this.lastRequest >= 0x7fffffff ? 1 : this.lastRequest + 1
    const request = this.lastRequest
    return new Promise((resolve, reject) => {
      this.pending.set(request, { resolve, reject, command })
      this.child.stdin!.write(`${request} ${line}\n`)
    })
  }

  /** A new number for a sandbox (see UplinkSession.register). */
  sandboxId(): number {
    this.lastSandbox = this.lastSandbox >= 0x7fffffff ? 1 : this.lastSandbox + 1
    return this.lastSandbox
  }

  /** A free /30 of the pool: its index, the helper's id (the /30's index in the IPv4 space), gateway and address. */
  allocate(start: number): { index: number; id: number; base: number } | undefined {
    const pool = parseCidr(this.options.pool)!
    const blocks = 2 ** (32 - pool.prefix) / 4
    for (let i = 0; i < blocks; i++) {
      const index = (start + i) % blocks
      if (this.used.has(index)) continue
      this.used.add(index)
      const base = pool.base + index * 4
      return { index, id: base / 4, base }
    }
    return undefined
  }

  free(index: number) {
    this.used.delete(index)
  }

  /**
   * Rootless only: the hub's way past this machine, started at the first
   * egress uplink (pasta, ~100 ms). Undefined when it runs, else why not.
   */
  ensureEgressPath(): Promise<string | undefined> {
    if (this.mode === 'root') return Promise.resolve(undefined)
    this.egressPath ??= startEgressHelper(this.hubPid, this.options.egressVia, this.child)
    return this.egressPath
  }

  stop() {
    this.closed ??= new UplinkError('the uplink helper was stopped')
    this.child.kill('SIGTERM')
  }
}

/** Requests one worker may have waiting at once. */
const MAX_QUEUED = 16

const daemons = new Map<string, Promise<UplinkDaemon>>()
const HOST_KEY = Symbol.for('vitest-environment-netns:uplink-host')

/** The run's helper for these options, started once. */
export function uplinkDaemon(mode: UplinkMode, options: ResolvedUplinkOptions): Promise<UplinkDaemon> {
  const key = `${mode} ${options.pool} ${options.egressVia}`
  let daemon = daemons.get(key)
  if (!daemon) {
    daemon = UplinkDaemon.start(mode, options)
    daemons.set(key, daemon)
    daemon.then(
      (d) => process.once('exit', () => d.stop()),
      () => daemons.delete(key), // a later run (watch mode) may try again
    )
  }
  return daemon
}

type Starter = () => Promise<UplinkDaemon>
const registry = globalThis as unknown as Record<symbol, Starter | undefined>

/** Lets global setups (maybe another instance of this module) reach the run's helper: see host.ts. */
export function registerUplinkHost(mode: UplinkMode, options: ResolvedUplinkOptions) {
  registry[HOST_KEY] ??= () => uplinkDaemon(mode, options)
}

export function registeredUplinkHost(): Starter | undefined {
  return registry[HOST_KEY]
}

/**
 * One worker process's uplink: its sandbox is registered with the helper once
 * the worker runs (register), the uplink is made on its first attach, and
 * both are released when the process ends (its namespace, and with it the
 * veth, goes away). Several tests of one file using the uplink at once share it.
 */
export class UplinkSession {
  private block: { index: number; id: number; base: number } | undefined
  private users = 0
  private warned = false
  private released = false
  private queue: Promise<unknown> = Promise.resolve()
  private waiting = 0
  private registration: Promise<{ daemon: UplinkDaemon; sandbox: number }> | undefined

  constructor(
    private readonly daemon: () => Promise<UplinkDaemon>,
    /** The launcher the pool spawned: in the sandbox's namespaces once the worker runs. */
    private readonly pid: number,
    private readonly warn: (message: string) => void,
    /**
     * Rootless with the native launcher and seccomp user notification: the channel to the sandbox's init,
     * which hands TCP connects to a host service a host socket (native/share.c). Without it, or when it
     * fails, the hub's relay (set up for every host service either way) carries them.
     */
    private readonly handover?: HandoverChannel,
  ) {}

  /**
   * Registers the sandbox with the helper under a new number, which every
   * later command names: the helper opens the namespace of the pid given here,
   * once, and checks it is a sandbox's. Call it once the launcher has made the
   * namespaces (the worker's first message); the first request also does.
   */
  register(): Promise<{ daemon: UplinkDaemon; sandbox: number }> {
    this.registration ??= (async () => {
      const daemon = await this.daemon()
      const sandbox = daemon.sandboxId()
      await daemon.command('register', sandbox, this.pid)
      return { daemon, sandbox }
    })()
    return this.registration
  }

  /** One request at a time per worker: two tests attaching at once must share one uplink, not race for two. */
  handle(request: UplinkRequest): Promise<UplinkReply> {
    // A worker has no reason to queue many: more is a test flooding the channel.
    if (this.waiting >= MAX_QUEUED) return Promise.reject(new UplinkError(`more than ${MAX_QUEUED} uplink requests at once from one test file`))
    this.waiting++
    const result = this.queue.then(() => this.handleNow(request)).finally(() => this.waiting--)
    this.queue = result.catch(() => undefined)
    return result
  }

  private async handleNow(request: UplinkRequest): Promise<UplinkReply> {
    const { daemon, sandbox } = await this.register()
    switch (request.op) {
      case 'attach':
        return this.attach(daemon, sandbox, request.egress)
      case 'detach':
        if (this.block && this.users > 0 && --this.users === 0) {
          await daemon.command('detach', sandbox)
          // The uplink is down: its host services are no longer handed over either (the relay's are gone too).
          await this.handover?.clear().catch(() => undefined)
        }
        return {}
      case 'forward': {
        const { base } = this.attached()
        // Rootless TCP, before the server binds: init hands the server a host socket at its bind (no relay).
        if (daemon.mode === 'rootless' && request.protocol === 'tcp' && this.handover) {
          const taken = await this.handover.forward(request.port, request.hostPort ?? 0, formatAddress(base + 2)).catch((error: Error) => error)
          if (taken instanceof HandoverRefused && taken.errno === 'EADDRINUSE') {
            throw new UplinkError(`forward: bind: EADDRINUSE: host port ${request.hostPort} is in use`)
          }
          if (taken instanceof HandoverRefused && taken.errno === 'EBUSY') {
            throw new UplinkError(
              `forward(${request.port}, { hostPort: ${request.hostPort} }): the server on port ${request.port} listens on the host's 127.0.0.1:${taken.hostPort} already ` +
                `(an earlier forward took its socket over when it bound): use that port, or forward before the server starts.`,
            )
          }
          if (taken instanceof HandoverRefused && taken.errno === 'EACCES') {
            throw new UplinkError(`forward: bind: EACCES: cannot bind 127.0.0.1:${request.hostPort}`)
          }
          if (!(taken instanceof Error) && taken !== 'listening') return { host: '127.0.0.1', port: taken.hostPort }
          // The server listens already (or init could not hold the port): the hub's relay carries it.
        }
        const port = await daemon.command('forward', sandbox, request.protocol, request.hostPort ?? 0, request.port)
        return { host: '127.0.0.1', port: Number(port) }
      }
      case 'hostService': {
        const { base } = this.attached()
        const inside = request.as ?? request.port
        await daemon.command('hostservice', sandbox, request.protocol, inside, request.port)
        // Before the test hears back, so its first connect is already handed over. If init cannot take it, the relay serves.
        if (daemon.mode === 'rootless' && request.protocol === 'tcp') {
          await this.handover?.service(formatAddress(base + 1), inside, request.port).catch(() => undefined)
        }
        return { host: formatAddress(base + 1), port: inside }
      }
    }
  }

  private attached() {
    if (!this.block || this.users === 0) throw new UplinkError('this test has no uplink attached (use the uplink fixture)')
    return this.block
  }

  private async attach(daemon: UplinkDaemon, sandbox: number, egress: EgressRule[] | undefined): Promise<UplinkReply> {
    if (!this.block) {
      // Random start: two root runs at once rarely try the same /30; if they do, the name clash (EEXIST) moves one on.
      let start = Math.floor(Math.random() * 1024)
      for (let tries = 0; ; tries++) {
        const block = daemon.allocate(start)
        if (!block) throw new UplinkError(`the uplink pool ${daemon.options.pool} is exhausted; give a larger one (uplink.pool)`)
        try {
          await daemon.command('attach', sandbox, block.id, { base: block.base, prefix: 32 })
          this.block = block
          if (this.released) {
            await this.release()
            throw new UplinkError('the worker ended while its uplink was being attached')
          }
          break
        } catch (error) {
          daemon.free(block.index)
          if (!/EEXIST/.test((error as Error).message) || tries > 64) throw error
          start = block.index + 1
        }
      }
    } else if (this.users === 0) {
      await daemon.command('attach', sandbox, this.block.id, { base: this.block.base, prefix: 32 })
    }
    this.users++
    const { base } = this.block
    let notice: string | undefined
    for (const rule of egress ?? []) {
      if (daemon.mode === 'rootless' && !routedInHub(daemon.hubPid, rule.cidr)) {
        const problem = await daemon.ensureEgressPath()
        if (problem && !this.warned) {
          this.warned = true
          notice = problem
          this.warn(`vitest-environment-netns: uplink: ${problem}. Addresses reachable from the hub namespace still work.`)
        }
      }
      const cidr = parseCidr(rule.cidr)
      if (!cidr) throw new UplinkError(`internal error: egress rule ${JSON.stringify(rule.cidr)} was not checked`)
      await daemon.command('egress', sandbox, cidr, ...(rule.protocol ? [rule.protocol, rule.port ?? 0] : []))
    }
    return { address: formatAddress(base + 2), gateway: formatAddress(base + 1), interface: 'eth0', notice }
  }

  /** The worker process ended: the helper forgets its sandbox; its namespace takes the veth with it. */
  async release() {
    this.released = true
    const block = this.block
    this.block = undefined
    const registered = await this.registration?.catch(() => undefined)
    if (!registered) return
    await registered.daemon.command('release', registered.sandbox).catch(() => undefined)
    if (block) registered.daemon.free(block.index)
  }
}

/**
 * For the doctor: starts a helper of its own and gives a throwaway sandbox an
 * uplink, as a test would. Undefined when it worked, else what failed.
 */
export async function tryUplink(mode: UplinkMode, options: ResolvedUplinkOptions): Promise<{ step: string; detail: string } | undefined> {
  let daemon: UplinkDaemon
  try {
    daemon = await UplinkDaemon.start(mode, options)
  } catch (error) {
    return { step: 'helper', detail: (error as Error).message.replace(/^vitest-environment-netns: /, '') }
  }
  // sleep by its real path: PATH may name directories under the host's /tmp, which the sandbox does not see.
  const sleep = realpathSync(findTool('sleep') ?? '/bin/sleep')
  const args = mode === 'rootless' ? ['--hub', String(daemon.hubPid), '--', sleep, '10'] : ['--', sleep, '10']
  const sandbox = spawn(nativeLauncher().path!, args, { stdio: 'ignore' }) // there: the helper started
  try {
    // The launcher unshares at once; the sandbox is ready when its network namespace is no longer ours.
    const own = readlinkSync('/proc/self/ns/net')
    const deadline = Date.now() + 3000
    while (Date.now() < deadline) {
      let net = own
      try {
        net = readlinkSync(`/proc/${sandbox.pid}/ns/net`)
      } catch {}
      if (net !== own) break
      await new Promise((resolve) => setTimeout(resolve, 5))
    }
    const session = new UplinkSession(() => Promise.resolve(daemon), sandbox.pid!, () => {})
    try {
      await session.register()
      await session.handle({ op: 'attach' })
      await session.handle({ op: 'detach' })
    } catch (error) {
      return { step: 'attach', detail: (error as Error).message.replace(/^vitest-environment-netns: /, '') }
    } finally {
      await session.release()
    }
    return undefined
  } finally {
    sandbox.kill('SIGKILL')
    daemon.stop()
  }
}
