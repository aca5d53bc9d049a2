// The worker side of a per-test uplink: what the `uplink` fixture gives a
// test. Requests go to the pool over an inherited socket; the pool and its
// helper do the kernel work outside the sandbox, where the test has no say.
import { Socket } from 'node:net'
import { createInterface } from 'node:readline'
import { parseCidr } from './ipv4.js'
import type { EgressRule, UplinkEnvelope, UplinkReply, UplinkRequest } from './uplink-protocol.js'

export interface UplinkOptions {
  /**
   * `'none'` (default): the test reaches only the host services and
   * forwards it asks for. `'nat'`: outbound NAT through the uplink, to
   * everything, or only to `allow` when given.
   */
  egress?: 'none' | 'nat'
  /**
   * Where egress may go: `'203.0.113.7'`, `'198.51.100.0/24'`,
   * `'203.0.113.7:443'` (TCP), `'203.0.113.7:53/udp'`. Addresses, not names:
   * the sandbox has no DNS. Implies `egress: 'nat'`.
   */
  allow?: string[]
}

export interface Endpoint {
  host: string
  port: number
}

export interface ForwardOptions {
  /** Host port to use; taken by another process → error. Default: a free one. */
  hostPort?: number
  /** Default `'tcp'`. Rootless, UDP is relayed by the hub datagram by datagram (docs/uplink.md). */
  protocol?: 'tcp' | 'udp'
}

export interface HostServiceOptions {
  /** Port the test connects to on the gateway. Default: the service's own port. */
  as?: number
  /** Default `'tcp'`. Rootless, UDP is relayed by the hub datagram by datagram (docs/uplink.md). */
  protocol?: 'tcp' | 'udp'
}

export interface Uplink {
  /** The test side's IPv4 address (on `interface`). */
  readonly address: string
  /** The outer side's address: the default route, and where host services are reached. */
  readonly gateway: string
  /** The interface's name inside the test's namespace. */
  readonly interface: string
  /** An address on the host (127.0.0.1 and a port) that reaches `port` inside this test's namespace. */
  forward(port: number, options?: ForwardOptions): Promise<Endpoint>
  /** What code in this test connects to, to reach a service on the host's loopback at `port`. */
  hostService(port: number, options?: HostServiceOptions): Promise<Endpoint>
}

export class UplinkUsageError extends Error {
  constructor(message: string) {
    super(`vitest-environment-netns: ${message}`)
    this.name = 'UplinkUsageError'
  }
}

export function checkPort(what: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > 65535) {
    throw new UplinkUsageError(`${what}: the port must be a whole number from 1 to 65535; got ${JSON.stringify(value)}.`)
  }
  return value
}

function checkProtocol(what: string, value: unknown): 'tcp' | 'udp' {
  if (value === undefined) return 'tcp'
  if (value === 'tcp' || value === 'udp') return value
  throw new UplinkUsageError(`${what}: protocol must be 'tcp' or 'udp'; got ${JSON.stringify(value)}.`)
}

/** One allow-list entry → an egress rule, or an error naming the entry and the accepted forms. */
export function parseAllowEntry(entry: unknown): EgressRule {
  const forms = "accepted forms: '203.0.113.7', '198.51.100.0/24', '203.0.113.7:443', '203.0.113.7:53/udp'"
  const match = typeof entry === 'string' ? /^([0-9./]+?)(?::([0-9]+)(?:\/(tcp|udp))?)?$/.exec(entry.trim()) : null
  const cidr = match ? parseCidr(match[1]!) : undefined
  if (!match || !cidr) {
    const hint = typeof entry === 'string' && /[a-z]/i.test(entry.split(':')[0]!) ? ' (host names cannot be resolved in the sandbox: give addresses)' : ''
    throw new UplinkUsageError(`uplink allow-list entry ${JSON.stringify(entry)} does not parse${hint}; ${forms}.`)
  }
  const rule: EgressRule = { cidr: `${match[1]!.includes('/') ? match[1] : `${match[1]}/32`}` }
  if (match[2] !== undefined) {
    rule.port = checkPort(`uplink allow-list entry ${JSON.stringify(entry)}`, Number(match[2]))
    rule.protocol = (match[3] as 'tcp' | 'udp' | undefined) ?? 'tcp'
  }
  return rule
}

export function egressRules(options: UplinkOptions | undefined): EgressRule[] {
  if (options === undefined) return []
  if (typeof options !== 'object' || options === null) throw new UplinkUsageError(`uplink options must be an object, e.g. { egress: 'nat' }; got ${JSON.stringify(options)}.`)
  const known = ['egress', 'allow']
  for (const key of Object.keys(options)) {
    if (!known.includes(key)) throw new UplinkUsageError(`unknown uplink option '${key}'; known: ${known.join(', ')}.`)
  }
  const { egress, allow } = options
  if (egress !== undefined && egress !== 'none' && egress !== 'nat') {
    throw new UplinkUsageError(`uplink option 'egress' must be 'none' or 'nat'; got ${JSON.stringify(egress)}.`)
  }
  if (allow !== undefined && !Array.isArray(allow)) throw new UplinkUsageError(`uplink option 'allow' must be an array of strings; got ${JSON.stringify(allow)}.`)
  if (allow && egress === 'none') throw new UplinkUsageError("uplink option 'allow' lists egress destinations: it needs egress: 'nat' (or leave 'egress' out).")
  if (allow) return allow.map(parseAllowEntry)
  return egress === 'nat' ? [{ cidr: '0.0.0.0/0' }] : []
}

// --- the channel to the pool ---

let channel: { socket: Socket; waiting: Map<number, (reply: UplinkEnvelope) => void> } | undefined
let seq = 0

function connect() {
  if (channel) return channel
  const fd = Number(process.env.VITEST_NETNS_UPLINK_FD)
  if (!Number.isInteger(fd) || fd < 3) {
    const why = process.env.VITEST_NETNS_UPLINK_OFF
    throw new UplinkUsageError(
      why ? `uplinks are off in this run: ${why}` : "the 'uplink' fixture only works in netns files (environment 'netns', with the netns() plugin; with netns({ sandbox: 'all' }), any file).",
    )
  }
  const socket = new Socket({ fd, readable: true, writable: true })
  socket.unref() // never what keeps a worker alive
  const waiting = new Map<number, (reply: UplinkEnvelope) => void>()
  createInterface({ input: socket }).on('line', (line) => {
    const reply = JSON.parse(line) as UplinkEnvelope
    waiting.get(reply.seq)?.(reply)
    waiting.delete(reply.seq)
  })
  socket.on('close', () => {
    for (const resolve of waiting.values()) resolve({ seq: -1, error: 'the pool closed the uplink channel' })
    waiting.clear()
  })
  channel = { socket, waiting }
  return channel
}

async function ask(request: UplinkRequest): Promise<UplinkReply> {
  const { socket, waiting } = connect()
  const id = ++seq
  const reply = await new Promise<UplinkEnvelope>((resolve) => {
    waiting.set(id, resolve)
    socket.write(`${JSON.stringify({ seq: id, ...request })}\n`)
  })
  if (reply.error) throw new UplinkUsageError(reply.error.replace(/^vitest-environment-netns: /, ''))
  return reply
}

/** Brings this file's uplink up (or joins it, when another test of the file holds it). */
export async function attachUplink(options?: UplinkOptions): Promise<{ uplink: Uplink; notice?: string; detach: () => Promise<void> }> {
  const egress = egressRules(options)
  const reply = await ask({ op: 'attach', egress })
  let attached = true
  const uplink: Uplink = {
    address: reply.address!,
    gateway: reply.gateway!,
    interface: reply.interface!,
    async forward(port, forwardOptions = {}) {
      checkPort(`uplink.forward(${JSON.stringify(port)})`, port)
      const protocol = checkProtocol(`uplink.forward(${port})`, forwardOptions.protocol)
      const hostPort = forwardOptions.hostPort === undefined ? undefined : checkPort(`uplink.forward(${port}, { hostPort })`, forwardOptions.hostPort)
      if (!attached) throw new UplinkUsageError('uplink.forward() after the test ended')
      const { host, port: outside } = await ask({ op: 'forward', port, hostPort, protocol })
      return { host: host!, port: outside! }
    },
    async hostService(port, serviceOptions = {}) {
      checkPort(`uplink.hostService(${JSON.stringify(port)})`, port)
      const protocol = checkProtocol(`uplink.hostService(${port})`, serviceOptions.protocol)
      const as = serviceOptions.as === undefined ? undefined : checkPort(`uplink.hostService(${port}, { as })`, serviceOptions.as)
      if (!attached) throw new UplinkUsageError('uplink.hostService() after the test ended')
      const { host, port: inside } = await ask({ op: 'hostService', port, as, protocol })
      return { host: host!, port: inside! }
    },
  }
  return {
    uplink,
    notice: reply.notice,
    detach: async () => {
      if (!attached) return
      attached = false
      await ask({ op: 'detach' })
    },
  }
}
