// Recognises failures caused by the missing network, so the report can say
// why at once instead of leaving the user to guess. In a test whose uplink
// was up, the network was not missing: the hint says what the uplink did
// instead (a host service that is down, a port not asked for, an address its
// rules refuse), from what the uplink fixture noted of that test here.
// The preload loads this module in every netns worker: it imports nothing
// (each module more costs a worker start about half a millisecond).
import type { EgressRule } from './uplink-protocol.js'

export interface HostServiceFact {
  /** The host port (what `uplink.hostService(port)` was given). */
  port: number
  /** The port the test connects to on the gateway (`as`, or the same). */
  inside: number
  protocol: 'tcp' | 'udp'
}

/** What a test asked of its uplink; the fixture adds host services as the test asks for them. */
export interface UplinkFacts {
  gateway: string
  egress: EgressRule[]
  /** Whether the egress rules let this address (and TCP port) through. */
  allows: (address: string, port: number | undefined) => boolean
  hostServices: HostServiceFact[]
}

// By test id, on globalThis: the preload and the test's copy of this module may be two module instances.
const FACTS = Symbol.for('vitest-environment-netns.uplink-facts')
// A worker may run many files (isolate: false): keep the last ones only; a hint is made as its test ends.
const KEEP = 1000

function registry(): Map<string, UplinkFacts> {
  const holder = globalThis as { [FACTS]?: Map<string, UplinkFacts> }
  return (holder[FACTS] ??= new Map())
}

/** Notes the uplink of test `taskId`, for the hints on its errors. */
export function noteUplink(taskId: string, facts: UplinkFacts): UplinkFacts {
  const all = registry()
  all.delete(taskId)
  all.set(taskId, facts)
  for (const oldest of all.keys()) {
    if (all.size <= KEEP) break
    all.delete(oldest)
  }
  return facts
}

const ALWAYS = new Set(['ENETUNREACH', 'EHOSTUNREACH', 'EAI_AGAIN', 'ENOTFOUND'])
const LOOPBACK = /^(127\.|::1$|::ffff:127\.|localhost$)/

interface ErrorLike {
  code?: unknown
  address?: unknown
  syscall?: unknown
  hostname?: unknown
  port?: unknown
  cause?: unknown
  errors?: unknown
  message?: unknown
  stack?: unknown
}

function reason(error: ErrorLike | undefined, depth = 0): string | undefined {
  if (!error || typeof error !== 'object' || depth > 4) return undefined
  const code = typeof error.code === 'string' ? error.code : undefined
  const address = typeof error.address === 'string' ? error.address : undefined
  if (code && ALWAYS.has(code)) return `${code}${address ? ` ${address}` : typeof error.hostname === 'string' ? ` ${error.hostname}` : ''}`
  // With attempt recording, an outside TCP connect gets EHOSTUNREACH (above), or a reset (ECONNREFUSED)
  // on a kernel without veth; a UDP send is refused (EPERM). A refused loopback connect is no hint.
  if (code === 'ECONNREFUSED' && address && !LOOPBACK.test(address)) return `${code} ${address}`
  if (code === 'EPERM' && (error.syscall === 'send' || error.syscall === 'connect')) return `${code} ${error.syscall}`
  const nested = [error.cause, ...(Array.isArray(error.errors) ? error.errors : [])]
  for (const inner of nested) {
    const found = reason(inner as ErrorLike, depth + 1)
    if (found) return found
  }
  return undefined
}

export const HINT =
  'vitest-environment-netns: this file runs without network access (a network namespace with only loopback). ' +
  'Mock the request (nock, msw), serve it on 127.0.0.1 inside the test, or run this file in another environment.'

const PREFIX = "vitest-environment-netns: this test's uplink is up"

/** The first error of the chain (itself, its cause, an AggregateError's errors) that `match` accepts. */
function find(error: ErrorLike | undefined, match: (error: ErrorLike) => boolean, depth = 0): ErrorLike | undefined {
  if (!error || typeof error !== 'object' || depth > 4) return undefined
  if (match(error)) return error
  for (const inner of [error.cause, ...(Array.isArray(error.errors) ? error.errors : [])]) {
    const found = find(inner as ErrorLike, match, depth + 1)
    if (found) return found
  }
  return undefined
}

function service(s: HostServiceFact): string {
  return `port ${s.port} (uplink.hostService(${s.port}${s.inside === s.port ? '' : `, { as: ${s.inside} }`}))`
}

/** The hint for a network error in a test whose uplink was up, and what it was recognised by; undefined if none fits. */
function uplinkHint(error: ErrorLike, facts: UplinkFacts): { text: string; why: string } | undefined {
  const refused = find(error, (e) => ['ECONNREFUSED', 'ECONNRESET', 'ENETUNREACH', 'EHOSTUNREACH'].includes(e.code as string) && typeof e.address === 'string')
  if (refused) {
    const address = refused.address as string
    const port = typeof refused.port === 'number' ? refused.port : undefined
    const why = `${refused.code as string} ${address}${port === undefined ? '' : `:${port}`}`
    if (address === facts.gateway) {
      const asked = facts.hostServices.find((s) => s.inside === port && s.protocol === 'tcp')
      if (asked) return { text: `${PREFIX}, but nothing listens on the host at ${service(asked)}: start that service before the tests (a globalSetup), or check its port.`, why }
      return { text: `${PREFIX}, but port ${port ?? '?'} of its gateway ${address} is not a host service it asked for: call uplink.hostService(${port ?? 'port'}) and connect to the endpoint it returns.`, why }
    }
    if (LOOPBACK.test(address) || !/^\d+\.\d+\.\d+\.\d+$/.test(address) || facts.allows(address, port)) return undefined
    const egress = facts.egress.length
      ? `egress goes only to ${facts.egress.map((r) => `${r.cidr}${r.port ? `:${r.port}/${r.protocol ?? 'tcp'}` : ''}`).join(', ')}`
      : "it reaches only the host services and forwards the test asked for (egress: 'none')"
    const entry = `${address}${port === undefined ? '' : `:${port}`}`
    return { text: `${PREFIX}, but its rules do not let ${entry} through: ${egress}. Allow it with test.override({ uplinkOptions: { allow: ['${entry}'] } }), or mock it.`, why }
  }
  // Rootless, the hub accepts a host service's connection first, and resets it if the service refuses: the error may come from a read, without an address.
  const reset = find(error, (e) => e.code === 'ECONNRESET')
  const services = facts.hostServices.filter((s) => s.protocol === 'tcp')
  if (reset && services.length) {
    return {
      text: `${PREFIX}; if this reset came from a host service, nothing listens on the host at ${services.map(service).join(' or ')} ` +
        '(rootless, the hub accepts the connection first and resets it when the host service refuses): start that service before the tests (a globalSetup), or check its port.',
      why: `ECONNRESET${typeof reset.syscall === 'string' ? ` ${reset.syscall}` : ''}`,
    }
  }
  const lookup = find(error, (e) => e.code === 'ENOTFOUND' || e.code === 'EAI_AGAIN')
  if (lookup) {
    return {
      text: `${PREFIX}, but the sandbox has no DNS: connect to addresses (uplink.hostService() for services on the host, allowed egress destinations by address).`,
      why: `${lookup.code as string}${typeof lookup.hostname === 'string' ? ` ${lookup.hostname}` : ''}`,
    }
  }
  return undefined
}

/**
 * Appends the hint to a (serialized) test error that a blocked network caused, or, when the test
 * `taskId` had an uplink, the hint about that uplink. Returns whether it did.
 */
export function annotateNetworkError(error: ErrorLike, taskId?: string): boolean {
  if (!error || typeof error !== 'object' || typeof error.message !== 'string') return false
  const facts = taskId === undefined ? undefined : registry().get(taskId)
  const hint = facts ? uplinkHint(error, facts) : (() => {
    const why = reason(error)
    return why ? { text: HINT, why } : undefined
  })()
  if (!hint || error.message.includes(hint.text)) return false
  const before = error.message
  error.message += `\n\n${hint.text} (${hint.why})`
  // Some reporters (json, junit) print the stack, which starts with the message.
  if (typeof error.stack === 'string') error.stack = error.stack.replace(before, error.message)
  return true
}
