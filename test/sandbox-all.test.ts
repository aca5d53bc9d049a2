// Outside-in: netns({ sandbox: 'all' }) runs every file of a project in
// namespaces of its own, each in the environment Vitest chose for it (config
// or docblock); with the default sandbox ('netns') the start line names the
// files that escaped by docblock; and two files listening on one fixed port
// at the same time both work, each on its own loopback. Every check runs a
// real Vitest on fixtures/sandbox-all (or fixtures/options) and reads what the
// fixture's files recorded. No traffic leaves loopback.
import { readlinkSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { resolveOptions } from '../src/config'
import { buildDenyUserns, failures, ownNetNamespace, runFixture, type RunResult } from './helpers'
import { freePort, unique } from './isolation-helpers'

const hostNet = ownNetNamespace()
const hostMnt = readlinkSync('/proc/self/ns/mnt')
const output = (result: RunResult) => result.stdout + result.stderr
/** The files of fixtures/sandbox-all that record their environment (the port files come on their own). */
const environmentFiles = ['test/default.test.ts', 'test/node.test.ts', 'test/happy-dom.test.ts']

/** A file in the host's /tmp: a sandboxed file, with a private /tmp, does not see it. */
const marker = join('/tmp', unique('netns-sandbox-all-marker'))
beforeAll(() => writeFileSync(marker, 'host'))
afterAll(() => rmSync(marker, { force: true }))

function expectRunPassed(result: RunResult): void {
  expect(result.code, failures(result)).toBe(0)
  expect(result.report?.numFailedTests, failures(result)).toBe(0)
  expect(result.report?.numPassedTests, failures(result)).toBe(result.report?.numTotalTests)
}

/** What a file recorded says it ran in a sandbox of its own: another network and mount namespace, only lo, a private /tmp. */
function expectSandboxed(record: any, name: string): void {
  expect(record, `no record from ${name}`).toBeDefined()
  expect(record, name).toMatchObject({ sandboxed: true, interfaces: ['lo'], seesHostTmp: false })
  expect(record.net, name).toMatch(/^net:\[\d+\]$/)
  expect(record.net, name).not.toBe(hostNet)
  expect(record.mnt, name).not.toBe(hostMnt)
}

/** Each file ran in the environment it chose: the config's custom one, node, happy-dom (with a DOM). */
function expectOwnEnvironments(records: RunResult['records']): void {
  expect(records.default).toMatchObject({ environment: 'fixture-custom', custom: 'custom', window: 'undefined', document: 'undefined' })
  expect(records.node).toMatchObject({ environment: 'node', custom: null, window: 'undefined', document: 'undefined' })
  expect(records['happy-dom']).toMatchObject({ environment: 'happy-dom', custom: null, window: 'object', document: 'object' })
}

describe("sandbox: 'all': every file in namespaces of its own, in its own environment", () => {
  test('the config environment (a custom one) and docblock node and happy-dom files all run sandboxed, each in its environment', async () => {
    const result = await runFixture('sandbox-all', { args: environmentFiles, env: { HOST_TMP_MARKER: marker } })
    expectRunPassed(result)
    expect(result.stdout).toContain('vitest-environment-netns: all 3 test files run in their own namespaces, each in its own environment (')
    expect(result.stdout).not.toContain('run unsandboxed')
    for (const name of ['default', 'node', 'happy-dom']) expectSandboxed(result.records[name], name)
    expectOwnEnvironments(result.records)
  })

  test("the project's pool is threads with isolate: false: each file still sandboxed, in a forked process, in its environment", async () => {
    const result = await runFixture('sandbox-all', {
      args: ['--pool=threads', '--isolate=false', '--maxWorkers=1', ...environmentFiles],
      env: { HOST_TMP_MARKER: marker },
    })
    expectRunPassed(result)
    for (const name of ['default', 'node', 'happy-dom']) {
      expectSandboxed(result.records[name], name)
      // A namespaced worker is a process (started by the launcher), never a thread of Vitest's main process.
      expect(result.records[name].isMainThread, name).toBe(true)
    }
    expectOwnEnvironments(result.records)
  })

  test('a bad value names the option and its values', async () => {
    const options = { sandbox: 'everything' }
    expect(() => resolveOptions(options)).toThrow("vitest-environment-netns: option 'sandbox' must be one of 'netns', 'all'; got \"everything\".")
    const result = await runFixture('options', { env: { NETNS_OPTIONS: JSON.stringify(options) } })
    expect(result.code).not.toBe(0)
    expect(result.records).toEqual({})
    expect(output(result)).toContain("option 'sandbox' must be one of 'netns', 'all'; got \"everything\".")
  })

  describe('namespaces cannot be created here', () => {
    let denyUserns = ''
    beforeAll(() => void (denyUserns = buildDenyUserns('sandbox-all')))
    afterAll(() => rmSync(denyUserns, { force: true }))

    test("with onUnsupported: 'skip', every file is skipped, not only the netns ones: none runs unsandboxed", async () => {
      const result = await runFixture('options', {
        wrapper: [denyUserns],
        env: { NETNS_OPTIONS: JSON.stringify({ onUnsupported: 'skip', sandbox: 'all' }) },
      })
      expect(result.code, failures(result)).toBe(0)
      const statuses = result.report!.testResults.flatMap((file) => file.assertionResults.map((a) => a.status))
      expect(statuses.length).toBeGreaterThanOrEqual(2)
      expect(new Set(statuses)).toEqual(new Set(['skipped']))
      expect(result.records).toEqual({})
      expect(output(result)).toContain("every test file will be reported as skipped (onUnsupported: 'skip')")
      expect(output(result)).not.toContain("Or set netns({ onUnsupported: 'skip' })")
    })
  })
})

describe('the default sandbox (netns): files that escape by docblock are named at the start', () => {
  test("environment: 'netns' with docblock node and happy-dom files: the start line names one, says they run unsandboxed and how to fix it", async () => {
    const result = await runFixture('sandbox-all', { args: ['--config', 'vitest.netns.config.ts', ...environmentFiles], env: { HOST_TMP_MARKER: marker } })
    expectRunPassed(result)
    expect(result.stdout).toMatch(
      /vitest-environment-netns: 1 of 3 test files run in their own namespaces \([^\n]*\); 2 files chose another environment by docblock \(e\.g\. test\/(node|happy-dom)\.test\.ts: \1\) and run unsandboxed — use sandbox: 'all'\n/,
    )
    expectSandboxed(result.records.default, 'default')
    // What the line warns of: these two ran with the host's network and /tmp.
    for (const name of ['node', 'happy-dom']) {
      expect(result.records[name], name).toMatchObject({ sandboxed: false, net: hostNet, seesHostTmp: true })
    }
  })
})

describe('fixed ports in parallel: each file has its own loopback', () => {
  test('two files listening on 127.0.0.1:45678 at the same time both work, each reaching its own server', async () => {
    const result = await runFixture('sandbox-all', { args: ['test/port-a.test.ts', 'test/port-b.test.ts'], env: { FIXED_PORT: '45678' } })
    expectRunPassed(result)
    const { 'port-a': a, 'port-b': b } = result.records
    // Each held the port until both had listened: the two servers overlapped in time.
    expect(a).toMatchObject({ listen: 'listening', answer: 'port-a', overlapped: true, sandboxed: true })
    expect(b).toMatchObject({ listen: 'listening', answer: 'port-b', overlapped: true, sandboxed: true })
    expect(new Set([a.net, b.net, hostNet]).size).toBe(3)
  })

  test("control: without the plugin the same two files share the host's loopback, and the second gets EADDRINUSE", async () => {
    const port = String(await freePort())
    const result = await runFixture('sandbox-all', {
      args: ['--config', 'vitest.plain.config.ts', 'test/port-a.test.ts', 'test/port-b.test.ts'],
      env: { FIXED_PORT: port },
    })
    expect(result.code, failures(result)).not.toBe(0)
    const { 'port-a': a, 'port-b': b } = result.records
    expect([a.net, b.net]).toEqual([hostNet, hostNet])
    expect([a.overlapped, b.overlapped]).toEqual([true, true])
    expect([a.listen, b.listen].sort()).toEqual(['EADDRINUSE', 'listening'])
  })
})
