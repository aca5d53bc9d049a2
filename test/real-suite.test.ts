// Issue 9's proof: fixtures/real-suite is shaped like a real integration
// suite (a global setup starting HTTP, HTTPS and WebSocket servers on the
// host's 127.0.0.1 at port 0, ports handed over with inject(), files that pick
// node or happy-dom by docblock, a child process using a shared port). With
// one plugin line (sandbox: 'all') and one shareHostPort() line per service it
// must pass as it is, every file in its own network namespace, and give the
// same per-test results as the same suite run without the plugin.
import { basename } from 'node:path'
import { describe, expect, test } from 'vitest'
import { failures, ownNetNamespace, runFixture, type RunOptions, type RunResult } from './helpers'
import { waitUntilGone } from './leftovers'

const hostNet = ownNetNamespace()
/** The fixture's test files (fixtures/real-suite/test/*.test.ts); the outer checks need them all reported. */
const MIN_FILES = 30

/** Runs the fixture once, however many tests look at the result; notes whether its processes were all gone after it. */
function once(options: RunOptions = {}): () => Promise<RunResult & { leftover: string[] }> {
  let run: Promise<RunResult & { leftover: string[] }> | undefined
  return () =>
    (run ??= (async () => {
      let recordDir = ''
      const result = await runFixture('real-suite', { timeoutMs: 240_000, ...options, onSpawn: (_, r) => (recordDir = r.recordDir) })
      const leftover = (await waitUntilGone(recordDir)).map((p) => `${p.pid} ${p.comm}`)
      return { ...result, leftover }
    })())
}

const netnsRun = once()
const plainRun = once({ args: ['--config', 'vitest.plain.config.ts'] })
const hintRun = once({ env: { REAL_SUITE_HINT: '1' } })

/** `file > full test name` → status, for every test of the run. */
function perTest(result: RunResult): Map<string, string> {
  const map = new Map<string, string>()
  for (const file of result.report?.testResults ?? []) {
    for (const t of file.assertionResults) map.set(`${basename(file.name)} > ${t.fullName}`, t.status)
  }
  return map
}

function expectRunPassed(result: RunResult & { leftover: string[] }): void {
  expect(result.code, failures(result)).toBe(0)
  expect(result.report?.numFailedTests, failures(result)).toBe(0)
  expect(result.report!.testResults.length, failures(result)).toBeGreaterThanOrEqual(MIN_FILES)
  expect(result.report!.testResults.filter((f) => f.status !== 'passed').map((f) => basename(f.name)), failures(result)).toEqual([])
  expect(result.leftover, 'processes of the run still alive after it').toEqual([])
}

describe('a suite shaped like a real one (fixtures/real-suite)', () => {
  test("with sandbox: 'all' it passes unchanged, every file in its own network namespace", { timeout: 300_000 }, async () => {
    const result = await netnsRun()
    expectRunPassed(result)
    const files = result.report!.testResults.map((f) => basename(f.name, '.test.ts')).sort()
    // The start line says so too.
    expect(result.stdout).toContain(`all ${files.length} test files run in their own namespaces`)
    // Every file recorded where it ran (its first test): not the host's namespace, and one no other
    // file was in (a marker socket bound in each; namespace numbers alone are reused once freed).
    expect(Object.keys(result.records).sort()).toEqual(files)
    for (const [file, where] of Object.entries(result.records)) {
      expect(where.net, file).not.toBe(hostNet)
      expect(where.shared, file).toBe(false)
    }
    // Files that chose another environment by docblock were sandboxed too, with that environment.
    const dom = files.filter((f) => f.startsWith('dom-'))
    const node = files.filter((f) => f.startsWith('node-'))
    expect(dom.length).toBeGreaterThanOrEqual(3)
    expect(node.length).toBeGreaterThanOrEqual(3)
    for (const f of dom) expect(result.records[f], f).toMatchObject({ dom: true })
    for (const f of [...node, 'http-health']) expect(result.records[f], f).toMatchObject({ dom: false })
    // The sandbox-only checks (unshared port refused, offline errno, [::1]) ran and passed.
    const sandboxOnly = [...perTest(result)].filter(([name]) => name.includes('[sandbox]'))
    expect(sandboxOnly.length).toBeGreaterThanOrEqual(6)
    expect(sandboxOnly.filter(([, status]) => status !== 'passed')).toEqual([])
    expect(perTest(result).get('unshared.test.ts > a host server that is not shared [sandbox] is refused at 127.0.0.1')).toBe('passed')
    expect(perTest(result).get('offline.test.ts > an outside address [sandbox] a TCP connect fails with EHOSTUNREACH or ENETUNREACH')).toBe('passed')
    expect(perTest(result).get('child-process.test.ts > child processes reach the shared services node -e with http.get')).toBe('passed')
  })

  test('the same suite without the plugin gives the same results', { timeout: 300_000 }, async () => {
    const netns = await netnsRun()
    const plain = await plainRun()
    expectRunPassed(plain)
    // The plain run is the host's own network: no file sandboxed.
    for (const [file, where] of Object.entries(plain.records)) expect(where.net, file).toBe(hostNet)
    const a = perTest(netns)
    const b = perTest(plain)
    expect([...b.keys()].sort()).toEqual([...a.keys()].sort())
    // Sandbox-only tests are skipped in the plain run (they would reach the host's server or the real network); all others match.
    const expected = [...a].map(([name, status]) => [name, name.includes('[sandbox]') ? 'skipped' : status])
    expect([...b].sort()).toEqual(expected.sort())
  })

  test('a request to the unshared host server fails with the hint to share it', { timeout: 300_000 }, async () => {
    const result = await hintRun()
    expect(result.code, failures(result)).toBe(1)
    const port = result.records.hint?.port as number
    expect(port, failures(result)).toBeGreaterThan(0)
    const message = result.report!.testResults.flatMap((f) => f.assertionResults.flatMap((t) => t.failureMessages)).join('\n')
    expect(message).toContain('ECONNREFUSED')
    expect(message).toContain(`port ${port} is open on the host's loopback, not in this sandbox; share it with hostPorts or shareHostPort`)
    expect(result.leftover).toEqual([])
  })
})
