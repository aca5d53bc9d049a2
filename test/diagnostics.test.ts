// Diagnostics, from outside: hints on network failures, the attempts report,
// strict mode, keepTmp, the start line, and in-process mocks.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { HINT } from '../src/hints'
import { failures, outDir, runFixture, type RunResult } from './helpers'

function result(run: RunResult, title: string) {
  const found = run.report?.testResults.flatMap((f) => f.assertionResults).find((a) => a.title === title)
  if (!found) throw new Error(`no test '${title}' in the report:\n${failures(run)}`)
  return found as typeof found & { duration?: number }
}

describe('network failures carry a hint; mocks keep working', () => {
  test('nock and msw mocks succeed, an unmocked request fails fast with the hint', async () => {
    const run = await runFixture('diagnostics', { args: ['test/mocks.test.ts'] })
    expect(result(run, 'a nock-mocked request succeeds').status, failures(run)).toBe('passed')
    expect(result(run, 'an msw-mocked fetch succeeds').status, failures(run)).toBe('passed')
    const unmocked = result(run, 'an unmocked request fails fast, with the hint')
    expect(unmocked.status).toBe('failed')
    expect(unmocked.failureMessages.join('\n')).toContain(HINT)
    expect(unmocked.failureMessages.join('\n')).toContain('198.51.100.7')
    expect(unmocked.duration).toBeLessThan(1000)
  })
})

describe('attempts to reach the outside are recorded in the kernel', () => {
  test('swallowed errors and a child process are counted and reported at the end of the file', async () => {
    const run = await runFixture('diagnostics', { args: ['test/attempts.test.ts'] })
    expect(run.code, failures(run)).toBe(0)
    const { recording, attempts } = run.records.attempts
    expect(recording).toBe('on')
    expect(attempts).toEqual(
      expect.arrayContaining([
        { protocol: 'tcp', address: '203.0.113.10', port: 5432, count: 1 },
        { protocol: 'udp', address: '198.51.100.20', port: 53, count: 1 },
        { protocol: 'tcp', address: '203.0.113.11', port: 6379, count: 1 },
      ]),
    )
    const output = run.stdout + run.stderr
    expect(output).toMatch(/vitest-environment-netns: test\/attempts\.test\.ts tried to reach outside destinations \(all blocked\): .*203\.0\.113\.10:5432\/tcp ×1/)
    expect(output).toContain('198.51.100.20:53/udp ×1')
    expect(output).toContain('203.0.113.11:6379/tcp ×1')
  })

  test('strict fails the test that tried, and only that one', async () => {
    const strict = await runFixture('diagnostics', { args: ['test/strict.test.ts'], env: { NETNS_STRICT: '1' } })
    const tried = result(strict, 'quietly tries to reach the outside')
    expect(tried.status, failures(strict)).toBe('failed')
    expect(tried.failureMessages.join('\n')).toContain('(strict): this test tried to reach the outside: 203.0.113.12:443/tcp ×1')
    expect(result(strict, 'stays on loopback').status).toBe('passed')

    const lenient = await runFixture('diagnostics', { args: ['test/strict.test.ts'] })
    expect(lenient.code, failures(lenient)).toBe(0)
  })
})

describe('keepTmp', () => {
  let base = ''
  beforeAll(() => void (base = mkdtempSync(join(outDir, 'kept-'))))
  afterAll(() => rmSync(base, { recursive: true, force: true }))

  function keptFiles(dir: string): string[] {
    return existsSync(dir) ? readdirSync(dir, { recursive: true }).map(String).sort() : []
  }

  test("'on-failure' keeps the /tmp of a failing file, prints where, and prunes old runs", async () => {
    const dir = join(base, 'on-failure')
    for (let i = 0; i < 6; i++) mkdirSync(join(dir, `2000-01-0${i + 1}T00-00-00-000Z-1`), { recursive: true })
    const run = await runFixture('diagnostics', {
      args: ['test/tmp.test.ts'],
      env: { NETNS_KEEP_TMP: 'on-failure', NETNS_KEEP_TMP_DIR: dir, NETNS_FAIL: '1' },
    })
    expect(run.code).not.toBe(0)
    const printed = /kept \/tmp of test\/tmp\.test\.ts in (\S+)/.exec(run.stdout + run.stderr)
    expect(printed, failures(run)).not.toBeNull()
    expect(readFileSync(join(printed![1]!, 'cache/deep/state.json'), 'utf8')).toBe('{"left":"behind"}')
    const runs = readdirSync(dir)
    expect(runs).toHaveLength(5) // the 4 newest old runs and this one
    expect(runs).not.toContain('2000-01-01T00-00-00-000Z-1')
  })

  test("'on-failure' keeps nothing when the file passes; 'always' keeps it anyway; 'never' never", async () => {
    const passing = join(base, 'passing')
    const run = await runFixture('diagnostics', { args: ['test/tmp.test.ts'], env: { NETNS_KEEP_TMP: 'on-failure', NETNS_KEEP_TMP_DIR: passing } })
    expect(run.code, failures(run)).toBe(0)
    expect(keptFiles(passing)).toEqual([])

    const always = join(base, 'always')
    const kept = await runFixture('diagnostics', { args: ['test/tmp.test.ts'], env: { NETNS_KEEP_TMP: 'always', NETNS_KEEP_TMP_DIR: always } })
    expect(kept.code, failures(kept)).toBe(0)
    expect(keptFiles(always).some((f) => f.endsWith('cache/deep/state.json'))).toBe(true)

    const never = join(base, 'never')
    const none = await runFixture('diagnostics', { args: ['test/tmp.test.ts'], env: { NETNS_KEEP_TMP: 'never', NETNS_KEEP_TMP_DIR: never, NETNS_FAIL: '1' } })
    expect(none.code).not.toBe(0)
    expect(keptFiles(never)).toEqual([])
  })
})

test('one line at the start says how many files run in namespaces, and how', async () => {
  const run = await runFixture('diagnostics', { args: ['test/strict.test.ts', 'test/tmp.test.ts'] })
  const mode = process.getuid?.() === 0 ? 'root' : 'rootless'
  expect(run.stdout, failures(run)).toContain(
    `vitest-environment-netns: 2 of 2 test files run in their own namespaces (${mode} mode, native launcher, outside attempts recorded, uplinks: ${mode === 'root' ? 'veth in the host namespace' : 'hub namespace'}`,
  )
  // One file: said as a sentence ("1 of 1 test file run in their own namespaces" was printed once).
  const one = await runFixture('diagnostics', { args: ['test/tmp.test.ts'] })
  expect(one.stdout, failures(one)).toContain(`vitest-environment-netns: the 1 test file runs in its own namespaces (${mode} mode, native launcher`)
})
