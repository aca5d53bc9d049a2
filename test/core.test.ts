import { describe, expect, test } from 'vitest'
import { failures, ownNetNamespace, runFixture } from './helpers'

describe('every netns file gets its own namespaces', () => {
  test('three files, three network namespaces, none of them the host one', async () => {
    const result = await runFixture('basic')
    expect(result.code, failures(result)).toBe(0)
    const nets = Object.values(result.records).map((r) => r.netns.net)
    expect(nets).toHaveLength(3)
    expect(new Set(nets).size).toBe(3)
    expect(nets).not.toContain(ownNetNamespace())
  })
})
