// Outside-in: what a netns file does the way it would in a plain run (issue
// "parity with a plain run"). Each check runs a real Vitest on a fixture
// project and looks at what its tests recorded and whether they passed.
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, test } from 'vitest'
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
