// Outside-in: the uplink request channel cannot be used to do more than the
// uplink fixture asks for. A test of fixtures/uplink writes crafted lines to
// its uplink descriptor while another file runs without an uplink; each line
// gets an error, nothing changes in any namespace (looked at from here: the
// outer namespace's uplink interfaces and rules, the victim's interfaces),
// and legitimate requests still work, on the same channel and in the victim.
import { execFileSync } from 'node:child_process'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { expect, test } from 'vitest'
import { failures, runFixture } from './helpers'
import { processesOfRun, waitFor } from './leftovers'

const root = process.getuid?.() === 0
// A pool of its own (not the fixture's, nor bench/uplink.mjs's): other runs make uplinks meanwhile, in the host's namespace as root.
const POOL = '10.217.0.0/16'
const POOL_FIRST_ID = (10 * 2 ** 24 + 217 * 2 ** 16) / 4
const NFT = existsSync('/usr/sbin/nft') ? '/usr/sbin/nft' : 'nft'

interface Inspection {
  /** vn<id> interfaces of this fixture's pool in the uplinks' outer namespace (the host as root, the hub rootless). */
  links: string[]
  /** The run's nf_tables table, as nft lists it. */
  table: string
  error?: string
}

/**
 * Tells the attacker the victim's pid, then, once the attacker is done, looks at the
 * outer namespace and lets both files go on.
 */
async function inspect(recordDir: string): Promise<Inspection> {
  const read = (name: string) => JSON.parse(readFileSync(join(recordDir, `${name}.record.json`), 'utf8'))
  const has = (name: string) => existsSync(join(recordDir, `${name}.record.json`)) || undefined
  try {
    await waitFor('the victim to start', () => has('victim'), 60_000)
    const victim = read('victim')
    const pid = processesOfRun(recordDir).find((p) => p.net === victim.net)?.pid
    writeFileSync(join(recordDir, 'victim-pid.json'), JSON.stringify({ pid }))
    await waitFor('the attacker to finish', () => has('attacked'), 60_000)
    const processes = processesOfRun(recordDir)
    const helper = processes.find((p) => p.comm === (root ? 'netns-uplink' : 'netns-hub'))!
    const enter = root ? [] : ['nsenter', '-t', String(helper.pid), '-U', '-n', '--preserve-credentials', '--']
    const devices = readFileSync(root ? '/proc/self/net/dev' : `/proc/${helper.pid}/net/dev`, 'utf8')
    const links = devices
      .split('\n')
      .map((line) => /^\s*vn(\d+):/.exec(line)?.[1])
      .filter((id): id is string => id !== undefined && Number(id) >= POOL_FIRST_ID && Number(id) < POOL_FIRST_ID + 2 ** 14)
      .map((id) => `vn${id}`)
    const command = [...enter, NFT, 'list', 'table', 'ip', root ? `vitest_netns_uplink_${helper.pid}` : 'vitest_netns_uplink']
    const table = execFileSync(command[0]!, command.slice(1), { encoding: 'utf8' })
    return { links, table }
  } catch (error) {
    return { links: [], table: '', error: (error as Error).message }
  } finally {
    writeFileSync(join(recordDir, 'inspected.json'), '')
  }
}

test('crafted uplink requests get errors, change nothing, and the next legitimate request works', async () => {
  let inspection: Promise<Inspection> | undefined
  const result = await runFixture('uplink', {
    timeoutMs: 120_000,
    env: { NETNS_INCLUDE: 'test/protocol-*.test.ts', NETNS_NO_UPSTREAM: '1', NETNS_UPLINK_POOL: POOL, NETNS_TEST_TIMEOUT: '90000' },
    onSpawn: (_, info) => (inspection = inspect(info.recordDir)),
  })
  const seen = await inspection!
  const { attack, attacked, victim, victimAfter, victimLegit, attackerLegit } = result.records
  expect(seen.error, failures(result)).toBeUndefined()

  // Every crafted request was answered with an error naming the problem, under its own seq.
  for (const [what, reply] of Object.entries(attack.bySeq as Record<string, any>)) {
    expect(reply?.error ?? `no error: ${JSON.stringify(reply)}`, what).toMatch(/^vitest-environment-netns: bad uplink request: /)
  }
  expect(attack.bySeq['newline into another sandbox'].error).toMatch(/port must be a whole number from 1 to 65535; got "9\\nattach /)
  expect(attack.bySeq['negative port'].error).toMatch(/port must be a whole number from 1 to 65535; got -1/)
  expect(attack.bySeq['unknown op register'].error).toMatch(/unknown op "register" \(known: attach, detach, forward, hostService\)/)
  expect(attack.bySeq["another file's pid and ids"].error).toMatch(/has an unknown field "pid"/)
  expect(attack.bySeq['too many egress rules'].error).toMatch(/egress must be an array of at most 32 rules/)
  // Lines whose seq could not be read: one error each, with seq -1.
  expect(attack.unattributed.length, JSON.stringify(attack.unattributed)).toBe(attack.expectedUnattributed)
  for (const reply of attack.unattributed) expect(reply.error).toMatch(/^vitest-environment-netns: bad uplink request: /)
  expect(attack.unattributed.map((r: any) => r.error).join('\n')).toMatch(/a request line is at most 8192 bytes/)

  // Replies were not shifted: the legitimate requests got their own answers.
  expect(attack.attached.address).toMatch(/^10\.217\./)
  expect(attack.fence).toEqual({ seq: 100, address: attack.attached.address, gateway: attack.attached.gateway, interface: 'eth0' })

  // Nothing changed outside: only the attacker's own uplink exists, with no rule of its own.
  const attackerLink = `vn${(attacked.address.split('.').reduce((a: number, p: string) => a * 256 + Number(p), 0) - 2) / 4}`
  expect(seen.links).toEqual([attackerLink])
  expect(seen.table).toMatch(/chain egress/)
  expect(seen.table).not.toMatch(/dnat to|iifname "vn\d+"/)
  // Nor in the victim: no interface but lo, before and after the attack.
  expect(victim.interfaces).toEqual(['lo'])
  expect(victimAfter.interfaces).toEqual(['lo'])
  expect(victimAfter.routes).not.toMatch(/^eth0/m)

  // The next legitimate requests still work, in the attacker and in the victim.
  expect(attackerLegit.ping.reply, JSON.stringify(attackerLegit)).toBe('+PONG')
  expect(victimLegit.ping.reply).toBe('+PONG')
  expect(result.code, failures(result)).toBe(0)
})
