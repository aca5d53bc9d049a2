// Outside-in: how a netns worker ends, and what it leaves. Every run of a
// fixture is checked from here afterwards: no process of the run is left (in
// or out of the sandbox), no sandbox namespace is still held, the host's mount
// table is as before, and the run's TMPDIR and the host's /tmp hold nothing of
// it. Then: reporters, console output, snapshots and coverage treat netns files
// like any other, and the util-linux fallback gives the same sandbox.
import type { ChildProcess } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, realpathSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, test } from 'vitest'
import { failures, fixturesDir, outDir, ownNetNamespace, repoRoot, runFixture, type RunOptions, type RunResult } from './helpers'
import { added, mountTable, processesOfRun, waitFor, waitUntilGone, type ProcessInfo } from './leftovers'

const scratch: string[] = []
afterAll(() => {
  for (const dir of scratch) rmSync(dir, { recursive: true, force: true })
})

function scratchDir(prefix: string): string {
  mkdirSync(outDir, { recursive: true })
  const dir = mkdtempSync(join(outDir, `${prefix}-`))
  scratch.push(dir)
  return dir
}

interface CheckedRun {
  result: RunResult
  recordDir: string
  tmpDir: string
  mountsBefore: string[]
  /** Vitest's own pid. */
  vitestPid: number
}

/**
 * Runs `fixture` (optionally only the files matching `filter`) with a TMPDIR
 * of its own; `during` gets the Vitest process and the record dir while it runs.
 */
async function run(
  fixture: string,
  filter: string | undefined,
  options: RunOptions & { during?: (child: ChildProcess, recordDir: string) => Promise<void> } = {},
): Promise<CheckedRun> {
  const tmpDir = scratchDir(`tmpdir-${filter ?? fixture}`)
  const mountsBefore = mountTable()
  let recordDir = ''
  let vitestPid = 0
  let during: Promise<unknown> | undefined
  const result = await runFixture(fixture, {
    timeoutMs: 60_000,
    ...options,
    args: [...(filter ? [filter] : []), ...(options.args ?? [])],
    env: { TMPDIR: tmpDir, ...options.env },
    onSpawn: (child, info) => {
      recordDir = info.recordDir
      vitestPid = child.pid!
      // An error here ends the run and is rethrown below, once the run is over.
      if (options.during) {
        during = options.during(child, info.recordDir).then(
          () => undefined,
          (error: unknown) => {
            child.kill('SIGKILL')
            return error ?? new Error('failed')
          },
        )
      }
    },
  })
  const error = await during
  if (error) {
    if (error instanceof Error) error.message += `\n--- the fixture run:\n${failures(result)}`
    throw error
  }
  return { result, recordDir, tmpDir, mountsBefore, vitestPid }
}

function describeProcesses(list: ProcessInfo[]): string {
  return list.map((p) => `${p.pid} ${p.comm} (${p.state}, ppid ${p.ppid}, ${p.net ?? 'net ?'})`).join('\n')
}

/**
 * Nothing of the run survives it (bounded wait: processes killed with the
 * namespace may take a moment to go). Its namespaces live only as long as its
 * processes: nothing else (no bind mount, no open descriptor outside) holds them.
 */
async function expectNothingLeft(checked: CheckedRun) {
  const left = await waitUntilGone(checked.recordDir, 10_000)
  expect(left, `processes of the run still alive:\n${describeProcesses(left)}`).toEqual([])
  expect(added(checked.mountsBefore, mountTable()), 'new mounts in the host mount namespace').toEqual([])
  expect(readdirSync(checked.tmpDir), `left in TMPDIR ${checked.tmpDir}`).toEqual([])
}

/** The worker's launcher, as Vitest sees it: the netns-launch process Vitest started. */
function relayOf(checked: { recordDir: string; vitestPid: number }): ProcessInfo | undefined {
  return processesOfRun(checked.recordDir).find((p) => p.comm === 'netns-launch' && p.ppid === checked.vitestPid)
}

/** The record `name` once written; fails at once if Vitest exits first. */
function recordFile(recordDir: string, name: string, vitest: ChildProcess): unknown {
  const file = join(recordDir, `${name}.record.json`)
  if (existsSync(file)) return JSON.parse(readFileSync(file, 'utf8'))
  if (vitest.exitCode !== null || vitest.signalCode !== null) throw new Error(`Vitest exited before record '${name}' was written`)
  return undefined
}

describe('nothing is left behind', () => {
  test('a normal run', async () => {
    const checked = await run('lifecycle', 'normal')
    expect(checked.result.code, failures(checked.result)).toBe(0)
    const record = checked.result.records.normal
    expect(record.net).not.toBe(ownNetNamespace())
    // The sandbox had its init (pid 1) and the worker (its relay's host pid: test/parity.test.ts), nothing else.
    expect(record.processes).toEqual([
      { pid: 1, comm: 'netns-init' },
      { pid: expect.any(Number), comm: 'node' },
    ])
    await expectNothingLeft(checked)
    expect(existsSync('/tmp/lifecycle-normal-marker'), 'the sandbox /tmp is private').toBe(false)
  })

  test.each([
    ['abort', 'process.abort()'],
    ['sigkill-self', "process.kill(process.pid, 'SIGKILL')"],
  ])('a worker crash: %s (%s)', async (file) => {
    const checked = await run('lifecycle', file)
    expect(checked.result.code, failures(checked.result)).not.toBe(0)
    expect(checked.result.records[file], 'the test started').toBeDefined()
    expect(checked.result.stdout + checked.result.stderr).toContain('Worker exited unexpectedly')
    await expectNothingLeft(checked)
  })

  test('process.exit(3) in a test', async () => {
    const checked = await run('lifecycle', 'exit3')
    expect(checked.result.code, failures(checked.result)).not.toBe(0)
    expect(checked.result.records.exit3).toBeDefined()
    const [test] = checked.result.report!.testResults[0]!.assertionResults
    expect(test?.status).toBe('failed')
    expect(test?.failureMessages.join('\n')).toContain('process.exit unexpectedly called with "3"')
    await expectNothingLeft(checked)
  })

  // Vitest cannot interrupt a synchronous loop: testTimeout only fires when the
  // test yields (the same with Vitest's own forks pool: that run never ends).
  // What ends it is killing the worker, as Vitest's own stop() does (SIGTERM to
  // the process it started) or as a watchdog would. Either way the failure must
  // be reported, the run must end by itself, and the sandbox must go.
  test('an endless synchronous loop, its worker killed with SIGTERM', async () => {
    const checked = await run('lifecycle', 'sync-loop', {
      during: async (child, recordDir) => {
        await waitFor('the looping test to start', () => recordFile(recordDir, 'sync-loop', child))
        await new Promise((r) => setTimeout(r, 1500)) // well past testTimeout (1000 ms): Vitest did not stop it
        const relay = await waitFor('the relay', () => relayOf({ recordDir, vitestPid: child.pid! }), 5000)
        process.kill(relay.pid, 'SIGTERM')
      },
    })
    expect(checked.result.signal, 'the run ended by itself, not by the harness timeout').toBeNull()
    expect(checked.result.code, failures(checked.result)).not.toBe(0)
    expect(checked.result.stdout + checked.result.stderr).toContain('Worker exited unexpectedly')
    await expectNothingLeft(checked)
  })

  test('an endless synchronous loop, Vitest interrupted (Ctrl-C)', async () => {
    const checked = await run('lifecycle', 'sync-loop', {
      during: async (child, recordDir) => {
        await waitFor('the looping test to start', () => recordFile(recordDir, 'sync-loop', child))
        child.kill('SIGINT')
      },
    })
    expect(checked.result.signal, 'the run ended by itself, not by the harness timeout').toBeNull()
    expect(checked.result.code).not.toBe(0)
    await expectNothingLeft(checked)
  })

  test('a detached grandchild is killed when its file ends', async () => {
    const checked = await run('lifecycle', 'detached')
    expect(checked.result.code, failures(checked.result)).toBe(0)
    const record = checked.result.records.detached
    expect(record.processes).toContainEqual({ pid: record.sleepPid, comm: 'sleep' })
    await expectNothingLeft(checked)
  })

  test('SIGKILL of the Vitest main process mid-run takes every sandboxed process with it', async () => {
    let seen: ProcessInfo[] = []
    const checked = await run('lifecycle', 'blocks', {
      during: async (child, recordDir) => {
        const record = (await waitFor('the blocking test to start', () => recordFile(recordDir, 'blocks', child))) as { net: string }
        // Before the kill: the scan sees the whole chain, so an empty scan afterwards means something.
        let list: ProcessInfo[] = []
        seen = await waitFor(
          () => `the sandbox chain to be visible; saw:\n${describeProcesses(list)}`,
          () => {
            list = processesOfRun(recordDir)
            const inSandbox = list.filter((p) => p.net === record.net).map((p) => p.comm)
            const ok = list.some((p) => p.comm === 'netns-launch' && p.ppid === child.pid) && ['netns-init', 'node', 'sleep'].every((c) => inSandbox.includes(c))
            return ok ? list : undefined
          },
          5000,
        )
        child.kill('SIGKILL')
      },
    })
    expect(checked.result.signal).toBe('SIGKILL')
    expect(seen.map((p) => p.comm)).toEqual(expect.arrayContaining(['netns-launch', 'netns-init', 'node', 'sleep']))
    await expectNothingLeft(checked)
  })
})

interface Junit {
  suites: Record<string, { attrs: Record<string, string>; body: string }>
}

function parseJunit(xml: string): Junit {
  const suites: Junit['suites'] = {}
  for (const match of xml.matchAll(/<testsuite ([^>]*)>([\s\S]*?)<\/testsuite>/g)) {
    const attrs = Object.fromEntries([...match[1]!.matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1]!, m[2]!]))
    suites[attrs.name!] = { attrs, body: match[2]! }
  }
  return { suites }
}

describe('reporters, console, snapshots and coverage work for netns files as for others', () => {
  test('console output, JSON and JUnit reports', async () => {
    const dir = scratchDir('junit')
    const junitFile = join(dir, 'junit.xml')
    const { result } = await run('output', undefined, {
      args: ['--reporter=junit', `--outputFile.junit=${junitFile}`],
      env: { OUTPUT_FAIL: '1' },
    })
    expect(result.code, failures(result)).toBe(1) // the two deliberate failures

    // Console: through Vitest's console capture and written straight to stdout.
    expect(result.stdout).toContain('console-log-marker from netns')
    expect(result.stdout).toContain('raw-stdout-marker from netns')
    expect(result.stderr).toContain('console-error-marker from netns')
    expect(result.stdout).toMatch(/stdout \| test\/in-netns\.test\.ts > logs to the console/)

    // JSON: the same statuses for the same cases.
    const byFile = (suffix: string) => result.report!.testResults.find((f) => f.name.endsWith(suffix))!
    const statuses = (suffix: string) => Object.fromEntries(byFile(suffix).assertionResults.map((a) => [a.title.replace(/^really runs .*/, 'really runs where it should'), a.status]))
    expect(statuses('in-netns.test.ts')).toEqual({
      'really runs where it should': 'passed',
      'logs to the console': 'passed',
      'is skipped': 'skipped',
      'is a todo': 'todo',
      'fails on purpose': 'failed',
    })
    expect(statuses('in-netns.test.ts')).toEqual(statuses('on-host.test.ts'))
    const failed = byFile('in-netns.test.ts').assertionResults.find((a) => a.status === 'failed')!
    expect(failed.failureMessages.join('\n')).toContain('deliberate failure in netns: expected 2 to be 3')

    // JUnit: same counts, captured output and failure for both files.
    const junit = parseJunit(readFileSync(junitFile, 'utf8'))
    const netnsSuite = junit.suites['test/in-netns.test.ts']!
    const hostSuite = junit.suites['test/on-host.test.ts']!
    for (const key of ['tests', 'failures', 'errors', 'skipped']) expect(netnsSuite.attrs[key], key).toBe(hostSuite.attrs[key])
    expect(netnsSuite.attrs).toMatchObject({ tests: '5', failures: '1', errors: '0', skipped: '2' })
    expect(netnsSuite.body).toContain('console-log-marker from netns')
    expect(netnsSuite.body).toContain('console-error-marker from netns')
    expect(netnsSuite.body).toMatch(/<failure message="deliberate failure in netns: expected 2 to be 3/)
  })

  test('toMatchSnapshot writes __snapshots__ with -u, passes on the next run, fails when it differs', async () => {
    const root = scratchDir('snapshot')
    cpSync(join(fixturesDir, 'snapshot'), root, { recursive: true, filter: (src) => !src.includes('node_modules') })
    const snapFile = join(root, 'test', '__snapshots__', 'snap.test.ts.snap')

    const first = await runFixture(root, { args: ['-u'] })
    expect(first.code, failures(first)).toBe(0)
    expect(readFileSync(snapFile, 'utf8')).toContain('"greeting": "hello from the sandbox"')

    const second = await runFixture(root)
    expect(second.code, failures(second)).toBe(0)
    expect((second.report as unknown as { snapshot: { matched: number; added: number } }).snapshot).toMatchObject({ matched: 1, added: 0 })

    writeFileSync(snapFile, readFileSync(snapFile, 'utf8').replace('hello from the sandbox', 'something else'))
    const third = await runFixture(root, { env: { CI: '1' } })
    expect(third.code).toBe(1)
    expect(third.report!.testResults[0]!.assertionResults[0]!.failureMessages.join('\n')).toContain('Snapshot')
  })

  test('@vitest/coverage-v8 collects coverage from a netns file', async () => {
    const coverage = async (filter: string) => {
      const dir = scratchDir(`coverage-${filter}`)
      const { result } = await run('output', filter, {
        args: [
          '--coverage.enabled',
          '--coverage.provider=v8',
          '--coverage.reporter=json-summary',
          `--coverage.reportsDirectory=${dir}`,
          '--coverage.include=src/**',
        ],
      })
      expect(result.code, failures(result)).toBe(0)
      const summary = JSON.parse(readFileSync(join(dir, 'coverage-summary.json'), 'utf8')) as Record<string, { functions: { covered: number; total: number }; lines: { pct: number } }>
      const file = Object.keys(summary).find((k) => k.endsWith('/fixtures/output/src/sum.ts'))
      expect(file, JSON.stringify(summary)).toBeDefined()
      return summary[file!]!
    }
    const inNetns = await coverage('in-netns')
    // sum() ran, neverCalled() did not.
    expect(inNetns.functions).toMatchObject({ covered: 1, total: 2 })
    expect(inNetns.lines.pct).toBeGreaterThan(0)
    expect(inNetns).toEqual(await coverage('on-host'))
  })
})

describe("launcher: 'shell' (util-linux fallback)", () => {
  test('gives the same sandbox: own network namespace with only lo, private empty /tmp, same uid, no capabilities', async () => {
    const checked = await run('shell', undefined)
    const { result } = checked
    expect(result.code, failures(result)).toBe(0)
    const record = result.records.shell
    expect(record.net).not.toBe(ownNetNamespace())
    expect(record.user).not.toBe(readlinkSync('/proc/self/ns/user'))
    expect(record.interfaces).toEqual(['lo'])
    // Empty, but for the paths under /tmp that the worker needs (the project or Node, when they live there).
    const needed = [realpathSync(repoRoot), realpathSync(process.execPath)]
    for (const entry of record.tmpBefore as string[]) {
      expect(needed.some((p) => p.startsWith(`/tmp/${entry}/`)), `/tmp/${entry} in the sandbox`).toBe(true)
    }
    expect(record.uid).toBe(process.getuid!())
    expect(record.gid).toBe(process.getgid!())
    expect(record.capEff).toBe('0000000000000000')
    expect(record.noNewPrivs).toBe('1')
    expect(existsSync('/tmp/shell-launcher-marker'), 'the sandbox /tmp is private').toBe(false)
    await expectNothingLeft(checked)
  })
})
