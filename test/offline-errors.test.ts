// Outside-in: a netns file sees the network an offline copy of this host
// would. Blocked outside connects fail with the errors of a machine whose
// network is gone, at once, and are still counted; /etc/hosts is the host's
// (its entries and the order of localhost's addresses), plus only the lines
// that must be there. The outer test reads the host's /etc/hosts (never
// writes it) and compares. Both launchers where they differ.
import { lookup } from 'node:dns/promises'
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { hostname } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, test } from 'vitest'
import { findTool } from '../src/launcher'
import { failures, outDir, runFixture } from './helpers'
import { expectFilePassed, unique } from './isolation-helpers'

const isRoot = process.getuid!() === 0
const HOSTS_MAX = 256 * 1024

const created: string[] = []
afterAll(() => {
  for (const file of created) rmSync(file, { force: true })
})

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

describe('errors of blocked outside connects and sends', () => {
  test('recording on (the default): TCP EHOSTUNREACH (IPv4 and IPv6), UDP EPERM, each counted once; loopback still ECONNREFUSED', async () => {
    const result = await runFixture('offline-errors')
    expectFilePassed(result, 'errors.test.ts')
    // A silent drop would show as TIMEOUT (10 s); a reset as ECONNREFUSED.
    expect(result.records.errors, failures(result)).toEqual({
      tcp4: 'EHOSTUNREACH',
      tcp6: 'EHOSTUNREACH',
      udp4: 'EPERM',
      udp6: 'EPERM',
      loopback: 'ECONNREFUSED',
      recording: 'on',
    })
    const report = /test\/errors\.test\.ts tried to reach outside destinations \(all blocked\): (.*)/.exec(result.stdout + result.stderr)?.[1]
    expect(report?.split(', ').sort(), failures(result)).toEqual(
      ['198.51.100.7:80/tcp ×1', '[2001:db8::7]:443/tcp ×1', '203.0.113.7:53/udp ×1', '[2001:db8::8]:53/udp ×1'].sort(),
    )
  })

  test.each([
    ['recordAttempts: false', 'vitest.no-record.config.ts', 'off'],
    ["launcher: 'shell' (never records)", 'vitest.shell.config.ts', 'unavailable: the shell launcher does not record'],
  ])('%s: no route out, ENETUNREACH for TCP and UDP, IPv4 and IPv6', async (_name, config, recording) => {
    const result = await runFixture('offline-errors', { args: ['--config', config] })
    expectFilePassed(result, 'errors.test.ts')
    expect(result.records.errors, failures(result)).toEqual({
      tcp4: 'ENETUNREACH',
      tcp6: 'ENETUNREACH',
      udp4: 'ENETUNREACH',
      udp6: 'ENETUNREACH',
      loopback: 'ECONNREFUSED',
      recording,
    })
  })
})

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
    expect(host.length).toBeLessThan(HOSTS_MAX)
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

/**
 * Vitest runs in a mount namespace of its own where `file` is bound over
 * /etc/hosts (the host's stays as it is): what the launchers do with a hosts
 * file that lacks lines, or is too large. Mounting takes root.
 */
function withHostsFile(text: string): string[] {
  mkdirSync(outDir, { recursive: true })
  const file = join(outDir, `${unique('hosts')}.txt`)
  writeFileSync(file, text)
  created.push(file)
  return [findTool('unshare')!, '--mount', '--propagation', 'private', '--', 'sh', '-c', 'mount --bind "$0" /etc/hosts && exec "$@"', file]
}

describe.each([
  ['native', 'vitest.config.ts'],
  ['shell', 'vitest.shell.config.ts'],
])('%s launcher: a host file without localhost, or too large', (_launcher, config) => {
  test.skipIf(!isRoot)('lines for localhost and the hostname are added only when missing', async () => {
    const host = '# a printer, and nothing for localhost\n10.9.8.7\tprinter printer.lan\n::1 ip6-localhost-only'
    const result = await runFixture('etc-hosts', { args: ['--config', config], wrapper: withHostsFile(host) })
    expectFilePassed(result, 'hosts.test.ts')
    expect(result.records.hosts.hosts).toBe(
      `${host}\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t${hostname()}\n`,
    )
  })

  test.skipIf(!isRoot)('a file over 256 KiB is kept up to its last whole line within that, and says so', async () => {
    const lines = [`127.0.0.1\tlocalhost ${hostname()}`]
    for (let i = 0, size = 0; size < HOSTS_MAX + 10_000; i++) {
      lines.push(`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}\thost-${i}`)
      size += lines.at(-1)!.length + 1
    }
    const text = `${lines.join('\n')}\n`
    let kept = ''
    for (const line of lines) {
      if (kept.length + line.length + 1 > HOSTS_MAX) break
      kept += `${line}\n`
    }
    const result = await runFixture('etc-hosts', { args: ['--config', config], wrapper: withHostsFile(text) })
    expectFilePassed(result, 'hosts.test.ts')
    expect(result.records.hosts.hosts).toBe(
      `${kept}# vitest-environment-netns: the rest of the host's file (over ${HOSTS_MAX} bytes) is left out\n`,
    )
  })
})
