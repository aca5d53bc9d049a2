// Shared host ports: which TCP ports of the host's loopback every sandbox
// reaches at the same address (the hostPorts option and shareHostPort() from
// a global setup), and the hint for a loopback connect refused in a sandbox
// while the host listens on that port. The launcher does the sharing
// (native/share.c); this module only keeps the list and passes it on.
import { readFileSync } from 'node:fs'
import { MAX_SHARED_PORTS } from './config.js'

// On globalThis: a global setup may load another instance of this module than the plugin's.
const REGISTRY = Symbol.for('vitest-environment-netns.shared-ports')

interface Registry {
  /** Why sharing cannot work in this run (shell launcher, kernel); undefined when it can. */
  unavailable: string | undefined
  ports: Set<number>
}

function registry(): Registry | undefined {
  return (globalThis as { [REGISTRY]?: Registry })[REGISTRY]
}

/** Called by the plugin for each project: sharing is possible here (or why not). */
export function registerSharing(unavailable: string | undefined, ports: readonly number[]): void {
  const holder = globalThis as { [REGISTRY]?: Registry }
  const current = (holder[REGISTRY] ??= { unavailable: undefined, ports: new Set() })
  current.unavailable ??= unavailable
  for (const port of ports) current.ports.add(port)
}

export function isPort(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 1 && value <= 65535
}

/** The ports shared now: a worker started later sees shares made since. */
export function sharedPorts(): number[] {
  return [...(registry()?.ports ?? [])].sort((a, b) => a - b)
}

/**
 * Shares TCP port `port` of the host's loopback with every netns sandbox that
 * starts from now on: inside, 127.0.0.1:port, localhost:port and [::1]:port
 * reach the host's service (on 127.0.0.1 or ::1). Call it in a global setup,
 * before the files start, e.g. for a server it started on port 0.
 */
export async function shareHostPort(port: number): Promise<void> {
  if (!isPort(port)) {
    throw new TypeError(`vitest-environment-netns: shareHostPort() takes a TCP port, a whole number from 1 to 65535; got ${JSON.stringify(port)}.`)
  }
  const current = registry()
  if (!current) {
    throw new Error('vitest-environment-netns: shareHostPort() found no netns() plugin in this process: add netns() to the plugins of the Vitest config, and call it from a global setup.')
  }
  if (current.unavailable) throw new Error(`vitest-environment-netns: cannot share host port ${port}: ${current.unavailable}`)
  if (!current.ports.has(port) && current.ports.size >= MAX_SHARED_PORTS) {
    throw new Error(`vitest-environment-netns: cannot share host port ${port}: ${MAX_SHARED_PORTS} ports are shared already, the most a run can share.`)
  }
  current.ports.add(port)
}

/** TCP ports in LISTEN state on the host's loopback or wildcard addresses (Vitest's process is in the host's namespace). */
export function hostLoopbackListeners(): Set<number> {
  const ports = new Set<number>()
  const loopbackOrAny = /^(0100007F|00000000|00000000000000000000000001000000|00000000000000000000000000000000|0000000000000000FFFF00000100007F)$/
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string
    try {
      text = readFileSync(file, 'utf8')
    } catch {
      continue
    }
    for (const line of text.split('\n').slice(1)) {
      const fields = line.trim().split(/\s+/)
      const [address, port] = (fields[1] ?? '').split(':')
      if (fields[3] !== '0A' || !address || !port || !loopbackOrAny.test(address)) continue
      ports.add(parseInt(port, 16))
    }
  }
  return ports
}

interface ErrorLike {
  code?: unknown
  address?: unknown
  port?: unknown
  cause?: unknown
  errors?: unknown
  message?: unknown
  stack?: unknown
}

const LOOPBACK = /^(127\.0\.0\.1|::1|::ffff:127\.0\.0\.1)$/

function refusedLoopback(error: ErrorLike | undefined, depth = 0): number | undefined {
  if (!error || typeof error !== 'object' || depth > 4) return undefined
  if (error.code === 'ECONNREFUSED' && typeof error.address === 'string' && LOOPBACK.test(error.address) && isPort(error.port)) return error.port
  for (const inner of [error.cause, ...(Array.isArray(error.errors) ? error.errors : [])]) {
    const found = refusedLoopback(inner as ErrorLike, depth + 1)
    if (found !== undefined) return found
  }
  return undefined
}

export function sharedPortHint(port: number): string {
  return `vitest-environment-netns: port ${port} is open on the host's loopback, not in this sandbox; share it with hostPorts or shareHostPort`
}

/**
 * In Vitest's process, on a netns worker's task update: a test error that is a
 * loopback connect refused in the sandbox, on a port where the host listens,
 * gets the hint. /proc/net/tcp is read only when such an error is there.
 */
export function annotateSharedPortHints(message: unknown): void {
  const rpc = message as { m?: unknown; a?: unknown } | null
  if (typeof rpc !== 'object' || rpc === null || rpc.m !== 'onTaskUpdate' || !Array.isArray(rpc.a) || !Array.isArray(rpc.a[0])) return
  let listening: Set<number> | undefined
  for (const pack of rpc.a[0] as unknown[]) {
    const errors = Array.isArray(pack) ? (pack[1] as { errors?: unknown } | undefined)?.errors : undefined
    if (!Array.isArray(errors)) continue
    for (const error of errors as ErrorLike[]) {
      const port = refusedLoopback(error)
      if (port === undefined || typeof error.message !== 'string') continue
      listening ??= hostLoopbackListeners()
      const shared = registry()?.ports.has(port)
      if (!listening.has(port) || shared) continue
      const hint = sharedPortHint(port)
      if (error.message.includes(hint)) continue
      const before = error.message
      error.message += `\n\n${hint}.`
      if (typeof error.stack === 'string') error.stack = error.stack.replace(before, error.message)
    }
  }
}
