// `test` with this package's fixtures. Use it in netns files:
//   import { test, expect } from 'vitest-environment-netns/test'
//   test('offline', ({ netns }) => { ... })
import { test as base } from 'vitest'
import { readAttempts, recordingState, type Attempt } from './attempts.js'
import { sandboxFromEnv, type NetnsSandbox } from './sandbox.js'
import { noteUplink, type UplinkFacts } from './hints.js'
import { mask, parseAddress, parseCidr } from './ipv4.js'
import { attachUplink, egressRules, type Uplink, type UplinkOptions } from './uplink.js'
import { listen, type Listener, type ListenOptions, type TcpListener, type UdpListener } from './listen.js'
import type { EgressRule } from './uplink-protocol.js'

export interface NetnsFixture extends NetnsSandbox {
  /** 'on' when outside attempts are recorded in the kernel, else why not. */
  recording: string
  /** Outside destinations this file's processes tried so far (blocked), with packet counts. */
  attempts(): Promise<Attempt[]>
  /**
   * A socket listening on the host's loopback (made outside the sandbox and
   * handed in): `server.listen(listener)` serves the host's clients at
   * `listener.host:listener.port`, while this file stays offline. Closed when
   * the test ends. `{ protocol: 'udp' }` gives a datagram socket bound in the
   * sandbox, to which the pool relays the host's peers (no host socket enters).
   */
  listen(options: ListenOptions & { protocol: 'udp' }): Promise<UdpListener>
  listen(options?: ListenOptions & { protocol?: 'tcp' }): Promise<TcpListener>
  listen(options?: ListenOptions): Promise<Listener>
}

export interface NetnsFixtures {
  /** The sandbox this file runs in. */
  netns: NetnsFixture
  /**
   * A network link for this test only: up before the test body, down after
   * it, pass or fail. Tests that don't use it stay offline.
   */
  uplink: Uplink
  /** How the `uplink` fixture is set up; change it with `test.override({ uplinkOptions: { egress: 'nat' } })`. */
  uplinkOptions: UplinkOptions
}

/** Whether `rules` let `address` (and TCP `port`) through. */
function allows(rules: EgressRule[], address: string, port: number | undefined): boolean {
  const value = parseAddress(address)
  return value !== undefined && rules.some((rule) => {
    const cidr = parseCidr(rule.cidr)
    return cidr !== undefined && (value & mask(cidr.prefix)) >>> 0 === cidr.base && (rule.port === undefined || rule.port === port)
  })
}

/** `uplink`, noting the host services the test asks for: a hint on its errors can name them (hints.ts). */
function remembering(uplink: Uplink, facts: UplinkFacts): Uplink {
  return {
    address: uplink.address,
    gateway: uplink.gateway,
    interface: uplink.interface,
    forward: (port, options) => uplink.forward(port, options),
    async hostService(port, options) {
      const endpoint = await uplink.hostService(port, options)
      facts.hostServices.push({ port, inside: endpoint.port, protocol: options?.protocol ?? 'tcp' })
      return endpoint
    },
  }
}

export const test = base.extend<NetnsFixtures>({
  // eslint-disable-next-line no-empty-pattern
  netns: async ({}, use) => {
    const sandbox = sandboxFromEnv()
    if (!sandbox) {
      throw new Error(
        "vitest-environment-netns: the 'netns' fixture only works in files whose environment is 'netns' " +
          "(add '// @vitest-environment netns' at the top of the file, or test.environment: 'netns'), with the netns() plugin enabled; " +
          "with netns({ sandbox: 'all' }), in any file.",
      )
    }
    // This test's own (concurrent tests have theirs): closed when it ends, pass or fail, so the host ports are free again.
    const listeners = new Set<Listener>()
    const listenHere = (async (options?: ListenOptions) => {
      const listener = await listen(options)
      listeners.add(listener)
      return listener
    }) as NetnsFixture['listen']
    try {
      await use({ ...sandbox, recording: recordingState(), attempts: async () => (await readAttempts()) ?? [], listen: listenHere })
    } finally {
      for (const listener of listeners) listener.close()
    }
  },
  // eslint-disable-next-line no-empty-pattern
  uplinkOptions: async ({}, use) => {
    await use({})
  },
  uplink: async ({ uplinkOptions, task }, use) => {
    const { uplink, notice, detach } = await attachUplink(uplinkOptions)
    if (notice) console.warn(`vitest-environment-netns: uplink: ${notice}`)
    const egress = egressRules(uplinkOptions)
    const facts = noteUplink(task.id, { gateway: uplink.gateway, egress, allows: (address, port) => allows(egress, address, port), hostServices: [] })
    try {
      await use(remembering(uplink, facts))
    } finally {
      await detach()
    }
  },
})

export const it = test
export { describe, expect, vi, beforeAll, afterAll, beforeEach, afterEach } from 'vitest'
export type { NetnsSandbox } from './sandbox.js'
export type { Attempt } from './attempts.js'
export type { Listener, ListenOptions, TcpListener, UdpListener } from './listen.js'
export type { Uplink, UplinkOptions, Endpoint, ForwardOptions, HostServiceOptions } from './uplink.js'
