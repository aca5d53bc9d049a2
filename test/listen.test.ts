// netns.listen(): a socket listening on the host's loopback, made outside and
// handed to a sandboxed file (TCP), or a host UDP socket the pool relays for it
// (UDP), serves the host's clients (Vitest's process and curl) while the file
// stays offline; its port is free again when the test ends; bad input names
// the fix; the pool checks what it is sent.
import { createServer, type AddressInfo, type Server } from 'node:net'
import { createSocket } from 'node:dgram'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { failures, runFixture } from './helpers.js'

const root = process.getuid?.() === 0

function listenOn(port: number): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen({ port, host: '127.0.0.1' }, () => resolve(server))
  })
}

async function freePort(): Promise<number> {
  const server = await listenOn(0)
  const { port } = server.address() as AddressInfo
  await new Promise((resolve) => server.close(resolve))
  return port
}

/** Binds UDP `port` on the host's 127.0.0.1 and lets go: throws when something holds it. */
async function bindUdp(port: number): Promise<number> {
  const udp = createSocket('udp4')
  await new Promise<void>((resolve, reject) => (udp.once('error', reject), udp.bind(port, '127.0.0.1', resolve)))
  const bound = udp.address().port
  udp.close()
  return bound
}

// Only the native launcher: a listener is a host socket, safe only under its connect filter (test/host-sockets.test.ts).
describe.each(['native'] as const)('netns.listen with the %s launcher', (launcher) => {
  let busy: Server
  beforeAll(async () => {
    busy = await listenOn(0)
  })
  afterAll(() => new Promise((resolve) => busy.close(resolve)))

  test('serves the host, stays offline, frees its ports, refuses bad input', async () => {
    const fixed = await freePort()
    const fixedUdp = await bindUdp(0)
    const leftOpen = await bindUdp(0)
    const result = await runFixture('listen', {
      env: {
        NETNS_LAUNCHER: launcher,
        LISTEN_FREE_PORT: String(fixed),
        LISTEN_FREE_UDP_PORT: String(fixedUdp),
        LISTEN_LEFT_OPEN_UDP_PORT: String(leftOpen),
        LISTEN_BUSY_PORT: String((busy.address() as AddressInfo).port),
        LISTEN_ROOT: root ? '1' : '0',
      },
    })
    expect(result.code, failures(result)).toBe(0)
    expect(result.report?.numPassedTests).toBe(13)
    // A UDP listener nobody closed was closed with its worker, before the global teardown.
    expect(result.records['left-open-udp-port-free']).toBe(true)
    // After the run every port it held is free on the host.
    for (const port of [fixed, result.records['http-port'] as number]) (await listenOn(port)).close()
    for (const port of [fixedUdp, result.records['udp-port'] as number]) await bindUdp(port)
  })

  test('netns({ listen: false }) refuses every request, the fixture\'s and a hand-made one', async () => {
    const result = await runFixture('listen', { env: { NETNS_LAUNCHER: launcher, LISTEN_OFF: '1' } })
    expect(result.code, failures(result)).toBe(0)
    expect(result.report?.numPassedTests).toBe(2)
  })
})

test('with the shell launcher (no connect filter) TCP requests are refused, naming the native launcher; UDP is served', async () => {
  const result = await runFixture('listen', {
    env: {
      NETNS_LAUNCHER: 'shell',
      LISTEN_UDP_SERVED: '1',
      LISTEN_REFUSED_WHY: "netns.listen() of a TCP socket needs the native launcher, and this run uses the shell launcher: a TCP listener is a host socket, and only the native launcher's connect filter keeps a test from connecting it anew (UDP listeners are relayed and work here). Use launcher: 'auto' or 'native'.",
    },
  })
  expect(result.code, failures(result)).toBe(0)
  expect(result.report?.numPassedTests).toBe(2)
})
