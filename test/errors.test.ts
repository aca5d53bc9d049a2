// Outside-in: what goes wrong before any test runs, and what the user is told.
import { execFileSync, spawnSync } from 'node:child_process'
import { rmSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { resolveOptions } from '../src/config'
import { MISSING_PLUGIN } from '../src/index'
import { buildDenyUserns, failures, repoRoot, runFixture, type RunResult } from './helpers'

const output = (result: RunResult) => result.stdout + result.stderr

/** No test of the fixture ran: no record, and no test in the report (when there is one). */
function expectNoTestRan(result: RunResult) {
  expect(result.records, 'records written by fixture tests').toEqual({})
  expect(result.report?.numTotalTests ?? 0).toBe(0)
}

describe('the plugin is missing', () => {
  test('a netns file fails at once with the message that says how to add the plugin', async () => {
    const result = await runFixture('no-plugin')
    expect(result.code).not.toBe(0)
    expectNoTestRan(result)
    // Every line of the message (Vitest may re-indent it).
    for (const line of MISSING_PLUGIN.split('\n').filter((l) => l.trim())) expect(output(result)).toContain(line.trim())
    // Fails fast: Vitest's own start timeout for a worker that never answers is 60 s.
    expect(result.ms).toBeLessThan(15_000)
  })
})

describe('bad plugin options fail when the config loads, naming the option', () => {
  test.each<[string, Record<string, unknown>]>([
    ['an unknown option', { bogus: 1 }],
    ['onUnsupported not error/skip', { onUnsupported: 'maybe' }],
    ['a negative tmpSize', { tmpSize: -1 }],
    ['an uplink pool that does not parse', { uplink: { pool: '10.200.0.0' + '/33' } }],
    ['an unknown uplink option', { uplink: { size: 4 } }],
    ['uplink.egressVia not a helper', { uplink: { egressVia: 'vpn' } }],
    ['listen not a boolean', { listen: 'yes' }],
  ])('%s', async (_what, options) => {
    let expected = ''
    try {
      resolveOptions(options)
    } catch (error) {
      expected = (error as Error).message
    }
    expect(expected).toMatch(/^vitest-environment-netns: /)
    const result = await runFixture('options', { env: { NETNS_OPTIONS: JSON.stringify(options) } })
    expect(result.code).not.toBe(0)
    expectNoTestRan(result)
    expect(output(result)).toContain(expected)
  })
})

describe('namespaces cannot be created here', () => {
  // A seccomp filter like Docker's default profile: unshare and clone(CLONE_NEWUSER) get EPERM, clone3 ENOSYS.
  let denyUserns = ''
  // Cause and fix as src/diagnostics.ts words them under that filter on this machine (Docker, Podman or neither).
  let expected: { cause: string; fix: string }

  beforeAll(() => {
    denyUserns = buildDenyUserns('errors')
    // The filter does what it should: new user namespaces refused, everything else (processes, threads) fine.
    expect(spawnSync(denyUserns, ['unshare', '--user', 'true']).status).not.toBe(0)
    expect(spawnSync('unshare', ['--user', 'true']).status).toBe(0)
    expect(spawnSync(denyUserns, [process.execPath, '-e', 'new (require("worker_threads").Worker)("0", { eval: true })']).status).toBe(0)
    const explain =
      `import { explainProbeFailure } from ${JSON.stringify(join(repoRoot, 'dist', 'diagnostics.js'))};` +
      `console.log(JSON.stringify(explainProbeFailure({ ok: false, output: '', step: 'unshare', errno: 'EPERM' })))`
    expected = JSON.parse(execFileSync(denyUserns, [process.execPath, '--input-type=module', '-e', explain], { encoding: 'utf8' }))
  })
  afterAll(() => rmSync(denyUserns, { force: true }))

  test('under a seccomp filter: Vitest stops before any test, naming the cause and the fix', async () => {
    const result = await runFixture('options', { wrapper: [denyUserns] })
    expect(result.code).not.toBe(0)
    expectNoTestRan(result)
    expect(expected.cause).toContain('a seccomp filter refuses unshare()')
    expect(output(result)).toContain(`cannot run netns test files on this machine: ${expected.cause}`)
    expect(output(result)).toContain(`Fix: ${expected.fix}`)
    expect(output(result)).toContain("Or set netns({ onUnsupported: 'skip' })")
    expect(output(result)).toContain("Run 'npx vitest-environment-netns doctor' for a full report.")
    // The fix reads as a sentence: one full stop, no stray punctuation before it (it once ended in "),.").
    expect(expected.fix).toMatch(/[^,;:.]\.$/)
  })

  test("under a seccomp filter with onUnsupported: 'skip': netns tests are skipped with the reason, the others run", async () => {
    const result = await runFixture('options', {
      wrapper: [denyUserns],
      env: { NETNS_OPTIONS: JSON.stringify({ onUnsupported: 'skip' }) },
      args: ['--reporter=verbose'],
    })
    expect(result.code, failures(result)).toBe(0)
    const byFile = (suffix: string) => result.report!.testResults.find((f) => f.name.endsWith(suffix))!
    expect(byFile('sandboxed.test.ts').assertionResults.map((a) => a.status)).toEqual(['skipped', 'skipped'])
    expect(byFile('plain.test.ts').assertionResults.map((a) => a.status)).toEqual(['passed'])
    expect(Object.keys(result.records)).toEqual(['plain'])
    // The reason: once as a warning, and next to each skipped test.
    expect(output(result)).toContain("netns test files will be reported as skipped (onUnsupported: 'skip')")
    // It is set already: the message does not suggest setting it.
    expect(output(result)).not.toContain("Or set netns({ onUnsupported: 'skip' })")
    const reason = `vitest-environment-netns: cannot run netns test files on this machine: ${expected.cause}`
    for (const title of ['runs in its own network namespace', 'a second test, skipped just the same']) {
      const line = result.stdout.split('\n').find((l) => l.includes(`sandboxed.test.ts > ${title}`))
      expect(line, `verbose line of '${title}'`).toContain(`[${reason}]`)
    }
  })

  // user.max_user_namespaces is a per-user-namespace limit: set to 0 inside a
  // user namespace of our own, it refuses further user namespaces to Vitest
  // there without touching the machine. Writing it needs the namespace's root
  // (--map-root-user); the kernel allows that to unprivileged users too, so
  // this runs both as root and not, when unshare --user works at all.
  const disableUserns = ['unshare', '--user', '--map-root-user', 'sh', '-c', 'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"', 'sh']
  const canDisable = spawnSync(disableUserns[0]!, [...disableUserns.slice(1), 'cat', '/proc/sys/user/max_user_namespaces'], { encoding: 'utf8' }).stdout?.trim() === '0'

  test.runIf(canDisable)('with user.max_user_namespaces=0: the sysctl is named, and how to raise it', async () => {
    const result = await runFixture('options', { wrapper: disableUserns })
    expect(result.code).not.toBe(0)
    expectNoTestRan(result)
    expect(output(result)).toContain(
      'cannot run netns test files on this machine: user namespaces are disabled: /proc/sys/user/max_user_namespaces is 0.',
    )
    expect(output(result)).toContain("Fix: run 'sudo sysctl -w user.max_user_namespaces=15000'")
  })
})
