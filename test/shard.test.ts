// Outside-in: `vitest --shard=1/2` and `--shard=2/2` of one netns project,
// started together (as CI systems split a suite over machines or jobs): each
// file runs exactly once between them, each in its own namespaces, and the
// two runs overlap (every file waits until the other shard has started one).
import { mkdtempSync, readdirSync, readlinkSync, rmSync } from 'node:fs'
import { basename, join } from 'node:path'
import { expect, test } from 'vitest'
import { failures, fixturesDir, outDir, runFixture } from './helpers'

test('two shards run at the same time run every file exactly once between them', async () => {
  const meet = mkdtempSync(join(outDir, 'shard-meet-'))
  try {
    const runs = await Promise.all(
      [1, 2].map((shard) => runFixture('shard', { args: [`--shard=${shard}/2`], env: { NETNS_SHARD: String(shard), NETNS_SHARD_MEET: meet } })),
    )
    const files = runs.map((run) => {
      expect(run.code, failures(run)).toBe(0)
      expect(run.report?.numFailedTests, failures(run)).toBe(0)
      return run.report!.testResults.map((file) => basename(file.name))
    })
    const all = readdirSync(join(fixturesDir, 'shard', 'test')).filter((name) => name.endsWith('.test.ts'))
    expect(files[0]!.length, 'shard 1 ran files').toBeGreaterThan(0)
    expect(files[1]!.length, 'shard 2 ran files').toBeGreaterThan(0)
    expect([...files[0]!, ...files[1]!].sort(), 'every file exactly once').toEqual(all.sort())
    // Each file recorded the shard it ran in and its own network namespace.
    const records = runs.flatMap((run, i) => Object.values(run.records).map((r) => ({ ...r, ran: String(i + 1) })))
    expect(records).toHaveLength(all.length)
    for (const r of records) expect(r.shard).toBe(r.ran)
    const nets = records.map((r) => r.net as string)
    expect(new Set(nets).size, 'one network namespace per file').toBe(all.length)
    expect(nets).not.toContain(readlinkSync('/proc/self/ns/net'))
  } finally {
    rmSync(meet, { recursive: true, force: true })
  }
})
