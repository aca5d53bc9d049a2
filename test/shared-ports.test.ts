// Outside-in: shared host ports. Real Vitest runs of fixtures/shared-ports:
// this test starts an HTTP server on the host's ::1 and shares it by config
// (hostPorts); the fixture's global setup starts two on 127.0.0.1 and shares
// one with shareHostPort(). Sandboxed files reach the shared ones by every
// loopback name, from Node and from child processes, and nothing else.
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { execFileSync } from 'node:child_process'
import { mkdirSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { failures, outDir, repoRoot, runFixture, type RunOptions } from './helpers'
import { waitUntilGone } from './leftovers'

let configured: Server
let configuredPort = 0
// A C client that races the supervisor (test/helpers/connect-race.c), run in the sandbox by fixtures/shared-ports/test/child.test.ts.
const raceBin = join(outDir, `connect-race-${process.pid}`)

beforeAll(async () => {
  mkdirSync(outDir, { recursive: true })
  execFileSync('cc', ['-O2', '-Wall', '-pthread', '-o', raceBin, join(repoRoot, 'test', 'helpers', 'connect-race.c')], { stdio: 'pipe' })
  configured = createServer((request, response) => response.end(`configured ${request.socket.localAddress}`))
  await new Promise<void>((resolve) => configured.listen(0, '::1', resolve))
  configuredPort = (configured.address() as AddressInfo).port
})
afterAll(async () => {
  rmSync(raceBin, { force: true })
  configured.closeAllConnections()
  await new Promise((resolve) => configured.close(resolve))
})

function run(options: RunOptions & { include?: string } = {}) {
  return runFixture('shared-ports', {
    timeoutMs: 60_000,
    ...options,
    env: { SHARED_CONFIG_PORT: String(configuredPort), SHARED_RACE_BIN: raceBin, NETNS_INCLUDE: options.include, ...options.env },
  })
}

describe('shared host ports', () => {
  test('netns files reach the shared ports at 127.0.0.1, localhost and [::1], from Node and child processes, and nothing else', async () => {
    let recordDir = ''
    const result = await run({ onSpawn: (_, info) => (recordDir = info.recordDir) })
    expect(result.code, failures(result)).toBe(0)
    expect(result.report?.numFailedTests, failures(result)).toBe(0)
    expect(result.report?.numPassedTests, failures(result)).toBeGreaterThanOrEqual(11)
    expect(result.stdout).toMatch(/2 of 2 test files run in their own namespaces \([^)]*shared host ports: \d+\)/)
    // The socket factories and supervisors end with their sandboxes.
    const left = await waitUntilGone(recordDir, 10_000)
    expect(left.map((p) => `${p.pid} ${p.comm}`)).toEqual([])
  })

  test('the same with uplinks on (rootless: sandboxes made inside the hub namespace)', async () => {
    const result = await run({ env: { NETNS_UPLINK: '1' } })
    expect(result.code, failures(result)).toBe(0)
    expect(result.report?.numFailedTests, failures(result)).toBe(0)
    expect(result.report?.numPassedTests, failures(result)).toBeGreaterThanOrEqual(11)
  })

  test('a refused loopback connect on a port the host listens on says to share it', async () => {
    const result = await run({ include: 'test/hint.test.ts' })
    expect(result.report?.numFailedTests, failures(result)).toBe(1)
    const message = result.report!.testResults[0]!.assertionResults[0]!.failureMessages.join('\n')
    expect(message).toMatch(/ECONNREFUSED|fetch failed/)
    expect(message).toMatch(/port \d+ is open on the host's loopback, not in this sandbox; share it with hostPorts or shareHostPort/)
  })

  test('hostPorts with the shell launcher stops the run before any test, naming the fix', async () => {
    const result = await run({ env: { NETNS_LAUNCHER: 'shell' } })
    expect(result.code).not.toBe(0)
    expect(result.report?.numPassedTests ?? 0).toBe(0)
    expect(result.stderr + result.stdout).toMatch(/cannot share host ports \d+ \(hostPorts\): shared host ports need the native launcher/)
  })
})

describe('the API', () => {
  test('shareHostPort without the plugin in this process, or with a bad port, fails clearly', async () => {
    const { shareHostPort } = await import('vitest-environment-netns/host')
    await expect(shareHostPort(0)).rejects.toThrow(/whole number from 1 to 65535; got 0/)
    await expect(shareHostPort(70000)).rejects.toThrow(/got 70000/)
    await expect(shareHostPort(8080)).rejects.toThrow(/found no netns\(\) plugin in this process/)
  })

  test('hostPorts is validated like the other options', async () => {
    const { netns } = await import('vitest-environment-netns/plugin')
    expect(() => netns({ hostPorts: [0] })).toThrow(/option 'hostPorts' takes whole numbers from 1 to 65535; got 0/)
    expect(() => netns({ hostPorts: [80.5] })).toThrow(/got 80.5/)
    expect(() => netns({ hostPorts: [8080, 8080] })).toThrow(/lists port 8080 twice/)
    expect(() => netns({ hostPorts: 8080 as never })).toThrow(/must be an array of TCP ports/)
    expect(() => netns({ hostPorts: [6379, 5432] })).not.toThrow()
  })
})
