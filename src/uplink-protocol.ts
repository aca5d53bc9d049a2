// Messages between a netns worker (src/uplink.ts) and the pool's UplinkSession
// (src/uplink-host.ts): one JSON object per line over a socket the worker
// inherits (fd in VITEST_NETNS_UPLINK_FD), each carrying the request's `seq`.
//
// The worker is the test's process: anything may arrive on that socket. The
// pool reads it with splitLines (bounded lines) and parseUplinkRequest (every
// field of every request checked, nothing unknown let through); a bad request
// is answered with an error carrying its seq (-1 when the seq itself is bad)
// and never reaches the helper.
import { parseCidr } from './ipv4.js'

export interface EgressRule {
  /** Destination block, `a.b.c.d/n`; `0.0.0.0/0` is everything. */
  cidr: string
  protocol?: 'tcp' | 'udp'
  port?: number
}

export type UplinkRequest =
  | { op: 'attach'; egress?: EgressRule[] }
  | { op: 'detach' }
  | { op: 'forward'; port: number; hostPort?: number; protocol: 'tcp' | 'udp' }
  | { op: 'hostService'; port: number; as?: number; protocol: 'tcp' | 'udp' }

export interface UplinkReply {
  address?: string
  gateway?: string
  interface?: string
  host?: string
  port?: number
  /** Something the test should know but that does not fail it (egress past the machine unavailable). */
  notice?: string
}

export type UplinkEnvelope = { seq: number; error?: string } & UplinkReply

/** Longest request line, in bytes: an attach with every egress rule it may have fits well within. */
export const MAX_REQUEST_LINE = 8192
/** Most egress rules one attach may carry (each is an nf_tables rule of the test's uplink). */
export const MAX_EGRESS_RULES = 32

export type ParsedRequest = { seq: number; request: UplinkRequest; error?: undefined } | { seq: number; error: string; request?: undefined }

const KEYS: Record<UplinkRequest['op'], readonly string[]> = {
  attach: ['seq', 'op', 'egress'],
  detach: ['seq', 'op'],
  forward: ['seq', 'op', 'port', 'hostPort', 'protocol'],
  hostService: ['seq', 'op', 'port', 'as', 'protocol'],
}

class Bad extends Error {}

/** A value for an error message: short, and with control characters escaped (JSON does that). */
function show(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value)
  return text.length > 60 ? `${text.slice(0, 60)}…` : text
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && Object.getPrototypeOf(value) === Object.prototype
}

function onlyKeys(what: string, value: Record<string, unknown>, known: readonly string[]) {
  for (const key of Object.keys(value)) {
    if (!known.includes(key)) throw new Bad(`${what} has an unknown field ${show(key)} (known: ${known.join(', ')})`)
  }
}

function port(what: string, value: unknown, optional: boolean): number | undefined {
  if (value === undefined && optional) return undefined
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > 65535) {
    throw new Bad(`${what} must be a whole number from 1 to 65535; got ${show(value)}`)
  }
  return value
}

function protocol(what: string, value: unknown): 'tcp' | 'udp' {
  if (value === 'tcp' || value === 'udp') return value
  throw new Bad(`${what} must be 'tcp' or 'udp'; got ${show(value)}`)
}

function egressRule(index: number, value: unknown): EgressRule {
  const what = `egress[${index}]`
  if (!isObject(value)) throw new Bad(`${what} must be an object { cidr, protocol?, port? }; got ${show(value)}`)
  onlyKeys(what, value, ['cidr', 'protocol', 'port'])
  const cidr = typeof value.cidr === 'string' && value.cidr.includes('/') ? parseCidr(value.cidr) : undefined
  if (!cidr) throw new Bad(`${what}.cidr must be an IPv4 block a.b.c.d/n with no host bits set; got ${show(value.cidr)}`)
  const rule: EgressRule = { cidr: value.cidr as string }
  if (value.protocol !== undefined || value.port !== undefined) {
    rule.protocol = protocol(`${what}.protocol`, value.protocol)
    rule.port = port(`${what}.port`, value.port, false)
  }
  return rule
}

function request(value: Record<string, unknown>): UplinkRequest {
  const op = value.op
  if (typeof op !== 'string' || !Object.hasOwn(KEYS, op)) throw new Bad(`unknown op ${show(op)} (known: ${Object.keys(KEYS).join(', ')})`)
  onlyKeys(`an uplink '${op}' request`, value, KEYS[op as UplinkRequest['op']])
  switch (op as UplinkRequest['op']) {
    case 'attach': {
      if (value.egress === undefined) return { op: 'attach' }
      if (!Array.isArray(value.egress) || value.egress.length > MAX_EGRESS_RULES) {
        throw new Bad(`egress must be an array of at most ${MAX_EGRESS_RULES} rules; got ${show(value.egress)}`)
      }
      return { op: 'attach', egress: value.egress.map((rule, index) => egressRule(index, rule)) }
    }
    case 'detach':
      return { op: 'detach' }
    case 'forward':
      return { op: 'forward', port: port('port', value.port, false)!, hostPort: port('hostPort', value.hostPort, true), protocol: protocol('protocol', value.protocol) }
    case 'hostService':
      return { op: 'hostService', port: port('port', value.port, false)!, as: port('as', value.as, true), protocol: protocol('protocol', value.protocol) }
  }
}

/**
 * One request line from a worker: a JSON object `{ seq, op, ... }` with exactly
 * the fields its op takes, each of the right type and range. The error names
 * the problem; its seq is the request's when that could be read, else -1.
 */
export function parseUplinkRequest(line: string): ParsedRequest {
  let seq = -1
  try {
    if (line.length > MAX_REQUEST_LINE) throw new Bad(`a request line is at most ${MAX_REQUEST_LINE} bytes`)
    // JSON.stringify never writes them raw; a control character here is not from the uplink fixture.
    if (/[\u0000-\u001f\u007f]/.test(line)) throw new Bad('a request line has no control characters')
    let value: unknown
    try {
      value = JSON.parse(line)
    } catch {
      throw new Bad(`a request is one JSON object per line; got ${show(line)}`)
    }
    if (!isObject(value)) throw new Bad(`a request is a JSON object; got ${show(value)}`)
    if (!Number.isSafeInteger(value.seq) || (value.seq as number) < 1) throw new Bad(`seq must be a whole number from 1 to ${Number.MAX_SAFE_INTEGER}; got ${show(value.seq)}`)
    seq = value.seq as number
    return { seq, request: request(value) }
  } catch (error) {
    if (!(error instanceof Bad)) throw error
    return { seq, error: `vitest-environment-netns: bad uplink request: ${error.message}.` }
  }
}

/**
 * Splits a byte stream into lines of at most `max` bytes (UTF-8, checked). A
 * longer line is refused whole: `onLine` gets an Error for it once its end
 * arrives, and reading goes on with the next line. Nothing longer than `max`
 * is ever held.
 */
export function splitLines(max: number, onLine: (line: string | Error) => void): (chunk: Buffer) => void {
  let held: Buffer[] = []
  let heldBytes = 0
  let skipping = false
  const decoder = new TextDecoder('utf-8', { fatal: true })
  const emit = (bytes: Buffer) => {
    let text: string
    try {
      text = decoder.decode(bytes)
    } catch {
      onLine(new Error('a request line is UTF-8 text'))
      return
    }
    onLine(text)
  }
  return (chunk) => {
    let start = 0
    for (let nl = chunk.indexOf(10, start); nl !== -1; nl = chunk.indexOf(10, start)) {
      const part = chunk.subarray(start, nl)
      if (skipping || heldBytes + part.length > max) onLine(new Error(`a request line is at most ${max} bytes`))
      else emit(Buffer.concat([...held, part]))
      held = []
      heldBytes = 0
      skipping = false
      start = nl + 1
    }
    const rest = chunk.subarray(start)
    if (skipping || !rest.length) return
    if (heldBytes + rest.length > max) {
      skipping = true
      held = []
      heldBytes = 0
      return
    }
    held.push(Buffer.from(rest))
    heldBytes += rest.length
  }
}
