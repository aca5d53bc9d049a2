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
// Each netns worker gets an UplinkSession that turns its requests into
// helper commands. Interface names (vn<id>, id = the /30's index in the IPv4
// space) and host ports (bound sockets) are unique by kernel rules, which is
// the lock between two runs at once.
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, readlinkSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { nativeLauncherPath } from './launcher.js'
import { formatAddress, parseCidr } from './ipv4.js'
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
  command: string
}

/** The `netns-launch uplink` helper: one command per line in, one reply per line out, in order. */
export class UplinkDaemon {
  readonly hubPid: number
  private readonly pending: Pending[] = []
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
    if (!existsSync(nativeLauncherPath)) {
      throw new UplinkError(
        `uplinks need the native helper ${nativeLauncherPath}, which was not built. Install a C compiler ` +
          '(Debian/Ubuntu: apt-get install gcc libc6-dev) and run npm rebuild vitest-environment-netns.',
      )
    }
    const child = spawn(nativeLauncherPath, ['uplink', mode === 'root' ? '--root' : '--hub', '--pool', options.pool], {
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    let stderr = ''
    // Kept for the whole run: if the helper dies later, what it said is the reason.
    child.stderr!.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-2000)))
    const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]()
    const spawnError = new Promise<never>((_, reject) => child.once('error', reject))
    const first = await Promise.race([lines.next(), spawnError]).catch((error: Error) => {
      throw new UplinkError(`cannot start the uplink helper ${nativeLauncherPath}: ${error.message}`)
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
        const waiting = this.pending.shift()
        if (!waiting) continue
        if (line === 'ok' || line.startsWith('ok ')) waiting.resolve(line.slice(3))
        else {
          // "error <step>: <ERRNO>: <message>", named after the command unless the step already says it.
          const what = waiting.command.split(' ')[0]!
          const detail = line.replace(/^error /, '')
          waiting.reject(new UplinkError(detail.startsWith(`${what}:`) ? detail : `${what}: ${detail}`))
        }
      }
    } catch {
      // the stream broke: treated as the helper exiting
    }
    this.closed ??= new UplinkError(`the uplink helper exited unexpectedly: ${await this.exitReason()}`)
    for (const waiting of this.pending.splice(0)) waiting.reject(this.closed)
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

  command(line: string): Promise<string> {
    if (this.closed) return Promise.reject(this.closed)
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject, command: line })
      this.child.stdin!.write(`${line}\n`)
    })
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
 * One worker process's uplink: created on its first request, released when
 * the process ends (its namespace, and with it the veth, goes away).
 * Several tests of one file using the uplink at once share it.
 */
export class UplinkSession {
  private block: { index: number; id: number; base: number } | undefined
  private users = 0
  private warned = false
  private released = false
  private queue: Promise<unknown> = Promise.resolve()

  constructor(
    private readonly daemon: () => Promise<UplinkDaemon>,
    private readonly pid: number,
    private readonly warn: (message: string) => void,
  ) {}

  /** One request at a time per worker: two tests attaching at once must share one uplink, not race for two. */
  handle(request: UplinkRequest): Promise<UplinkReply> {
    const result = this.queue.then(() => this.handleNow(request))
    this.queue = result.catch(() => undefined)
    return result
  }

  private async handleNow(request: UplinkRequest): Promise<UplinkReply> {
    const daemon = await this.daemon()
    switch (request.op) {
      case 'attach':
        return this.attach(daemon, request.egress)
      case 'detach':
        if (this.block && this.users > 0 && --this.users === 0) await daemon.command(`detach ${this.block.id}`)
        return {}
      case 'forward': {
        const { id } = this.attached()
        const port = await daemon.command(`forward ${id} ${request.protocol} ${request.hostPort ?? 0} ${request.port}`)
        return { host: '127.0.0.1', port: Number(port) }
      }
      case 'hostService': {
        const { id, base } = this.attached()
        const inside = request.as ?? request.port
        await daemon.command(`hostservice ${id} ${request.protocol} ${inside} ${request.port}`)
        return { host: formatAddress(base + 1), port: inside }
      }
    }
  }

  private attached() {
    if (!this.block || this.users === 0) throw new UplinkError('this test has no uplink attached (use the uplink fixture)')
    return this.block
  }

  private async attach(daemon: UplinkDaemon, egress: EgressRule[] | undefined): Promise<UplinkReply> {
    if (!this.block) {
      // Random start: two root runs at once rarely try the same /30; if they do, the name clash (EEXIST) moves one on.
      let start = Math.floor(Math.random() * 1024)
      for (let tries = 0; ; tries++) {
        const block = daemon.allocate(start)
        if (!block) throw new UplinkError(`the uplink pool ${daemon.options.pool} is exhausted; give a larger one (uplink.pool)`)
        try {
          await daemon.command(`attach ${block.id} ${this.pid} ${formatAddress(block.base)}`)
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
      await daemon.command(`attach ${this.block.id} ${this.pid} ${formatAddress(this.block.base)}`)
    }
    this.users++
    const { id, base } = this.block
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
      await daemon.command(`egress ${id} ${rule.cidr}${rule.protocol ? ` ${rule.protocol} ${rule.port}` : ''}`)
    }
    return { address: formatAddress(base + 2), gateway: formatAddress(base + 1), interface: 'eth0', notice }
  }

  /** The worker process ended: its namespace takes the veth with it. */
  async release() {
    this.released = true
    if (!this.block) return
    const { id, index } = this.block
    this.block = undefined
    const daemon = await this.daemon()
    await daemon.command(`release ${id}`).catch(() => undefined)
    daemon.free(index)
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
  const args = mode === 'rootless' ? ['--hub', String(daemon.hubPid), '--', 'sleep', '10'] : ['--', 'sleep', '10']
  const sandbox = spawn(nativeLauncherPath, args, { stdio: 'ignore' })
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
