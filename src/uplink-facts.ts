// What a worker remembers of each test's uplink (its gateway, the host
// services it asked for, its egress rules), by test id: a network error's
// hint can then say what happened while that test's uplink was up, instead of
// "no network". Kept on globalThis: the preload (worker-preload.ts) and the
// copy of this module the test loads may be two module instances.
import type { EgressRule } from './uplink-protocol.js'

export interface HostServiceFact {
  /** The host port (what `uplink.hostService(port)` was given). */
  port: number
  /** The port the test connects to on the gateway (`as`, or the same). */
  inside: number
  protocol: 'tcp' | 'udp'
}

export interface UplinkFacts {
  gateway: string
  address: string
  egress: EgressRule[]
  hostServices: HostServiceFact[]
}

const KEY = Symbol.for('vitest-environment-netns.uplink-facts')
// A worker may run many files (isolate: false): keep the last ones only; a hint is made as its test ends.
const KEEP = 1000

function registry(): Map<string, UplinkFacts> {
  const holder = globalThis as { [KEY]?: Map<string, UplinkFacts> }
  return (holder[KEY] ??= new Map())
}

/** Starts the facts of `taskId`'s uplink; the caller adds host services as the test asks for them. */
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

export function uplinkFactsOf(taskId: string | undefined): UplinkFacts | undefined {
  return taskId === undefined ? undefined : registry().get(taskId)
}
