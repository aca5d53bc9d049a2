// Outside-in: what a netns file does the way it would in a plain run (issue
// "parity with a plain run"). Each check runs a real Vitest on a fixture
// project and looks at what its tests recorded and whether they passed.
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, test } from 'vitest'
import { resolveOptions } from '../src/config'
import { shareHostPath } from '../src/host-paths'
import { failures, outDir, runFixture } from './helpers'

/** Directories this file creates; removed at the end. */
const created: string[] = []
afterAll(() => {
  for (const dir of created) rmSync(dir, { recursive: true, force: true })
})

function scratch(prefix: string): string {
  mkdirSync(outDir, { recursive: true })
  const dir = mkdtempSync(join(outDir, prefix))
  created.push(dir)
  return dir
}

describe('unique pids', () => {
  test('two files running at once see distinct process.pid, and both take a pid-named lock in one project directory', async () => {
    const locks = scratch('pid-locks-')
    const result = await runFixture('parity-pids', { env: { PARITY_LOCK_DIR: locks } })
    expect(result.code, failures(result)).toBe(0)
    expect(result.report?.numPassedTests, failures(result)).toBe(2)
    const pids = [result.records.a.pid, result.records.b.pid]
    expect(new Set(pids).size, `pids ${pids.join(', ')}`).toBe(2)
    expect(readdirSync(locks).sort()).toEqual(pids.map((pid) => `lock.${pid}`).sort())
  })
})

describe('shared host paths', () => {
  test.each(['native', 'shell'])("%s launcher: a global setup's mkdtemp fixture dirs: shared ones read (and written unless read-only), an unshared one missing with the hint", async (launcher) => {
    const base = mkdtempSync('/tmp/netns-parity-')
    created.push(base)
    const configured = mkdtempSync(join(base, 'configured-'))
    writeFileSync(join(configured, 'config.txt'), 'configured')
    // TMPDIR: the global setup's tmpdir() is under the host's /tmp, in a directory this test removes.
    const result = await runFixture('parity-paths', { env: { TMPDIR: base, PARITY_CONFIG_PATH: configured, PARITY_LAUNCHER: launcher } })
    const statuses = Object.fromEntries(result.report?.testResults.flatMap((f) => f.assertionResults.map((a) => [a.title, a.status])) ?? [])
    expect(statuses, failures(result)).toEqual({
      'a shared fixture directory is read and written at the same path': 'passed',
      'a read-only share is read, and writes get EROFS': 'passed',
      'an unshared fixture directory is not there (fails, with the hint)': 'failed',
    })
    const shared = readdirSync(base).find((name) => name.startsWith('fixture-shared-'))!
    expect(readFileSync(join(base, shared, 'written-inside.txt'), 'utf8')).toBe('from the sandbox')
    const unshared = result.report!.testResults[0]!.assertionResults.find((a) => a.status === 'failed')!.failureMessages.join('\n')
    expect(unshared).toMatch(/ENOENT/)
    expect(unshared).toContain("this path is in the host's /tmp, not in this sandbox's private /tmp; share it with shareHostPath")
  })

  test.each<[string, unknown]>([
    ['a relative path', 'fixtures'],
    ['a path that does not exist', '/tmp/netns-parity-does-not-exist'],
    ['/tmp itself', '/tmp'],
    ['/', '/'],
    ["a path with '..'", '/tmp/../etc'],
    ['a path with a newline', '/tmp/a\nb'],
  ])('hostPaths with %s fails when the config loads; shareHostPath throws at once', async (_what, path) => {
    expect(() => shareHostPath(path as string)).toThrow(/^vitest-environment-netns: shareHostPath\(.*\): cannot share this path: /)
    let expected = ''
    try {
      resolveOptions({ hostPaths: [path] })
    } catch (error) {
      expected = (error as Error).message
    }
    expect(expected).toMatch(/^vitest-environment-netns: option 'hostPaths\[0\]' .* cannot be shared: /)
    const result = await runFixture('options', { env: { NETNS_OPTIONS: JSON.stringify({ hostPaths: [path] }) } })
    expect(result.code).not.toBe(0)
    expect(result.report?.numTotalTests ?? 0).toBe(0)
    expect(result.stdout + result.stderr).toContain(expected)
  })
})

describe('root keeps its file powers (rootCapabilities)', () => {
  const isRoot = process.getuid!() === 0
  const OTHER = 1003

  /** As root: a directory and a file owned by uid 1003, and a mode-000 file of root. Unprivileged: root's /usr, and a mode-000 file of our own. */
  function prepare(): Record<string, string> {
    const dir = scratch('root-parity-')
    const mode000 = join(dir, 'mode-000')
    writeFileSync(mode000, 'secret')
    chmodSync(mode000, 0o000)
    if (!isRoot) return { OTHER_DIR: '/usr', OTHER_FILE: '/etc/passwd', OTHER_UID: String(OTHER), MODE000_FILE: mode000 }
    const other = join(dir, 'other')
    mkdirSync(other, { mode: 0o755 })
    writeFileSync(join(other, 'owned'), 'theirs', { mode: 0o600 })
    chownSync(join(other, 'owned'), OTHER, OTHER)
    chownSync(other, OTHER, OTHER)
    return { OTHER_DIR: other, OTHER_FILE: join(other, 'owned'), OTHER_UID: String(OTHER), MODE000_FILE: mode000 }
  }

  test.each([
    ['default', undefined],
    ["'file'", 'file'],
    ["'none'", 'none'],
  ])('rootCapabilities %s', async (_name, rootCaps) => {
    const env = prepare()
    const result = await runFixture('parity-root', { env: { ...env, ROOT_CAPS: rootCaps } })
    expect(result.code, failures(result)).toBe(0)
    const facts = result.records.files
    if (isRoot && rootCaps !== 'none') {
      // As in a plain run as root.
      expect(facts).toEqual({ write: 'ok', chown: 'ok', read000: 'secret', cp: { owner: OTHER } })
      expect(statSync(join(env.OTHER_DIR!, 'written-by-test')).uid).toBe(0)
    } else if (isRoot) {
      // Today's behaviour kept: uid 0 alone is mapped, no capabilities.
      expect(facts).toMatchObject({ write: 'EACCES', chown: 'EINVAL', read000: 'EACCES' })
      expect(facts.cp).toMatchObject({ status: 1 })
    } else {
      // Rootless: one uid mapped, no capabilities, whatever the option says.
      expect(facts).toMatchObject({ write: 'EACCES', chown: 'EINVAL', read000: 'EACCES' })
      expect(facts.cp).toEqual({ owner: process.getuid!() })
    }
  })
})
