// Outside-in: a netns file sees the network an offline copy of this host
// would: the host's /etc/hosts (its entries and the order of localhost's
// addresses), plus only the lines that must be there. The outer test reads
// the host's /etc/hosts (never writes it) and compares. Both launchers.
import { lookup } from 'node:dns/promises'
import { readFileSync } from 'node:fs'
import { hostname } from 'node:os'
import { describe, expect, test } from 'vitest'
import { failures, runFixture } from './helpers'
import { expectFilePassed } from './isolation-helpers'

/** Whether `name` is one of a line's names (not its address, not a comment), as the launchers check. */
function hasName(hosts: string, name: string): boolean {
  return hosts.split('\n').some((line) =>
    line
      .replace(/#.*/, '')
      .split(/[ \t\r]+/)
      .filter(Boolean)
      .slice(1)
      .some((word) => word.toLowerCase() === name.toLowerCase()),
  )
}

/** The host's /etc/hosts (ending in a newline), '' when it is missing or unreadable. */
function hostHosts(): string {
  let text: string
  try {
    text = readFileSync('/etc/hosts', 'utf8')
  } catch {
    return ''
  }
  return text === '' || text.endsWith('\n') ? text : `${text}\n`
}

/** What the sandbox's file must be: the host's, then a localhost line and a hostname line only if missing. */
function expectedHosts(host: string, name: string): string {
  let text = host
  if (!hasName(text, 'localhost')) text += '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n'
  if (!hasName(text, name)) text += `127.0.1.1\t${name}\n`
  return text
}

describe.each([
  ['native', 'vitest.config.ts'],
  ['shell', 'vitest.shell.config.ts'],
])('%s launcher: /etc/hosts', (_launcher, config) => {
  const run = (() => {
    let result: ReturnType<typeof runFixture> | undefined
    return () => (result ??= runFixture('etc-hosts', { args: ['--config', config] }))
  })()

  test("the sandbox's /etc/hosts is the host's, plus only the lines that must be there", async () => {
    const host = hostHosts()
    // Large files are cut at 256 KiB (whole lines); this host's is not that large.
    expect(host.length).toBeLessThan(256 * 1024)
    const result = await run()
    expectFilePassed(result, 'hosts.test.ts')
    const inside = result.records.hosts
    expect(inside, failures(result)).toBeDefined()
    expect(inside.hostname).toBe(hostname())
    expect(inside.hosts).toBe(expectedHosts(host, hostname()))
  })

  test('localhost resolves inside to what it resolves to outside, in the same order', async () => {
    const result = await run()
    const inside = result.records.hosts
    expect(inside, failures(result)).toBeDefined()
    expect(inside.first).toEqual(await lookup('localhost'))
    expect(inside.all).toEqual(await lookup('localhost', { all: true }))
  })
})
