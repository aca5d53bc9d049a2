// netns.listen(): a socket listening on the host's loopback, made outside and
// handed to a sandboxed file, serves the host's clients (Vitest's process and
// curl, TCP and UDP) while the file stays offline; its port is free again
// when the test ends; bad input names the fix; the pool checks what it is sent.
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

// Only the native launcher: a listener is a host socket, safe only under its connect filter (test/host-sockets.test.ts).
describe.each(['native'] as const)('netns.listen with the %s launcher', (launcher) => {
  let busy: Server
  beforeAll(async () => {
    busy = await listenOn(0)
  })
  afterAll(() => new Promise((resolve) => busy.close(resolve)))

  test('serves the host, stays offline, frees its ports, refuses bad input', async () => {
    const fixed = await freePort()
    const result = await runFixture('listen', {
      env: {
        NETNS_LAUNCHER: launcher,
        LISTEN_FREE_PORT: String(fixed),
        LISTEN_BUSY_PORT: String((busy.address() as AddressInfo).port),
        LISTEN_ROOT: root ? '1' : '0',
      },
    })
    expect(result.code, failures(result)).toBe(0)
    expect(result.report?.numPassedTests).toBe(6)
    // After the run every port it held is free on the host.
    for (const port of [fixed, result.records['http-port'] as number]) (await listenOn(port)).close()
    const udp = createSocket('udp4')
    await new Promise<void>((resolve, reject) => (udp.once('error', reject), udp.bind(result.records['udp-port'] as number, '127.0.0.1', resolve)))
    udp.close()
  })

  test('netns({ listen: false }) refuses every request, the fixture\'s and a hand-made one', async () => {
    const result = await runFixture('listen', { env: { NETNS_LAUNCHER: launcher, LISTEN_OFF: '1' } })
    expect(result.code, failures(result)).toBe(0)
    expect(result.report?.numPassedTests).toBe(2)
  })
})

test('with the shell launcher (no connect filter) every request is refused, naming the native launcher', async () => {
  const result = await runFixture('listen', {
    env: { NETNS_LAUNCHER: 'shell', LISTEN_REFUSED_WHY: "netns.listen() needs the native launcher, and this run uses the shell launcher: a listener is a host socket, and only the native launcher's connect filter keeps a test from connecting it anew. Use launcher: 'auto' or 'native'." },
  })
  expect(result.code, failures(result)).toBe(0)
  expect(result.report?.numPassedTests).toBe(2)
})
