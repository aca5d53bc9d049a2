// Node and Vitest versions: Vitest 5 on a Node older than 22.12 starts, then
// crashes in its reporter at the first failing test (Map.groupBy is not a
// function); the plugin stops such a run at start, with the reason. Runs where
// the suite runs on Vitest 5 and an older Node is on PATH (as in .ci/run).
import { spawnSync } from 'node:child_process'
import { accessSync, constants, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { expect, test } from 'vitest'
import { repoRoot, runFixture } from './helpers'

const vitestVersion: string = JSON.parse(readFileSync(join(repoRoot, 'node_modules', 'vitest', 'package.json'), 'utf8')).version

/** A Node on PATH older than 22.12, with its version; undefined if there is none. */
function olderNode(): { path: string; version: string } | undefined {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    const path = join(dir || '.', 'node')
    try {
      accessSync(path, constants.X_OK)
    } catch {
      continue
    }
    const version = spawnSync(path, ['--version'], { encoding: 'utf8', timeout: 10_000 }).stdout?.trim() ?? ''
    const [major = 0, minor = 0] = /^v(\d+)\.(\d+)/.exec(version)?.slice(1).map(Number) ?? []
    if (major >= 20 && (major < 22 || (major === 22 && minor < 12))) return { path, version }
  }
  return undefined
}

const older = Number(vitestVersion.split('.')[0]) >= 5 ? olderNode() : undefined

test.runIf(older)(`Vitest ${vitestVersion} on an older Node: the run stops at start, saying which Node it needs`, async () => {
  const result = await runFixture('options', { node: older!.path })
  const output = result.stdout + result.stderr
  expect(result.code).not.toBe(0)
  expect(result.records, 'records written by fixture tests').toEqual({})
  expect(output).toContain(`Vitest ${vitestVersion} needs Node 22.12 or newer, and this is Node ${older!.version.slice(1)}`)
  expect(output).toContain('Run Vitest with Node 22.12 or newer, or use Vitest 4.1 (it runs on Node 20).')
})
