// Outside-in: the uplink request channel cannot be used to do more than the
// uplink fixture asks for. A test of fixtures/uplink writes crafted lines to
// its uplink descriptor while another file runs without an uplink; each line
// gets an error, nothing changes in any namespace (looked at from here: the
// outer namespace's uplink interfaces and rules, the victim's interfaces),
// and legitimate requests still work, on the same channel and in the victim.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { existsSync, readFileSync, readlinkSync, renameSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { expect, test } from 'vitest'
import { failures, repoRoot, runFixture } from './helpers'
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
    // Whole or not at all: the attacker polls for the file and reads it at once (it once read it empty).
    writeFileSync(join(recordDir, 'victim-pid.json.tmp'), JSON.stringify({ pid }))
    renameSync(join(recordDir, 'victim-pid.json.tmp'), join(recordDir, 'victim-pid.json'))
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
  // Nor in the victim: no interface but lo (and the recording's black hole), before and after the attack.
  const own = (names: string[]) => names.filter((name) => name !== 'offline' && name !== 'offline-peer')
  expect(own(victim.interfaces)).toEqual(['lo'])
  expect(own(victimAfter.interfaces)).toEqual(['lo'])
  expect(victimAfter.routes).not.toMatch(/^eth0/m)

  // The next legitimate requests still work, in the attacker and in the victim.
  expect(attackerLegit.ping.reply, JSON.stringify(attackerLegit)).toBe('+PONG')
  expect(victimLegit.ping.reply).toBe('+PONG')
  expect(result.code, failures(result)).toBe(0)
})

/** The helper's own check, as a second line of defence: lines the pool would never send, straight to its stdin. */
test('the helper refuses bad lines and foreign pids itself, and still answers the next good line', async () => {
  const launcher = join(repoRoot, 'build', 'netns-launch')
  const own = readlinkSync('/proc/self/ns/net')
  const children: ChildProcess[] = []
  const spawned = (file: string, args: string[]) => {
    const child = spawn(file, args, { stdio: ['pipe', 'pipe', 'pipe'] })
    children.push(child)
    return child
  }
  /** Waits (bounded) until `pid` is in a network namespace other than this one. */
  const unshared = async (pid: number) =>
    waitFor(`pid ${pid} to unshare`, () => {
      try {
        return readlinkSync(`/proc/${pid}/ns/net`) !== own || undefined
      } catch {
        return undefined
      }
    }, 10_000)
  try {
    const helper = spawned(launcher, ['uplink', root ? '--root' : '--hub', '--pool', '10.218.0.0/16'])
    const replies = new Map<number, string[]>()
    createInterface({ input: helper.stdout! }).on('line', (line) => {
      const id = Number(/^(\d+) /.exec(line)?.[1] ?? -1)
      replies.set(id, [...(replies.get(id) ?? []), line])
    })
    const ready = await waitFor('the helper to start', () => replies.get(-1)?.find((l) => l.startsWith('ready ')), 10_000)
    const hub = Number(ready.split(' ')[1])
    // A sandbox of this helper, and a process in a network namespace of its own that is not one: its user
    // namespace is the helper's own (rootless: the hub's, entered, so the hub may open it), not a child.
    const sandbox = spawned(launcher, [...(root ? [] : ['--hub', String(hub)]), '--', 'sleep', '30'])
    const enterHub = root ? [] : ['nsenter', '-t', String(hub), '-U', '--preserve-credentials', '--']
    const foreign = spawned(enterHub[0] ?? 'unshare', [...enterHub.slice(1), ...(root ? [] : ['unshare']), '-n', '--', 'sleep', '30'])
    await unshared(sandbox.pid!)
    await unshared(foreign.pid!)
    const base = 10 * 2 ** 24 + 218 * 2 ** 16 + 4 * 5
    const address = (n: number) => [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.')
    const lines = [
      `1 attach 1 ${base / 4} ${address(base)}`,
      `2 register 2 ${process.pid}`,
      `3 register 3 ${foreign.pid}`,
      `4 register 4 ${sandbox.pid}`,
      `5 register 4 ${sandbox.pid}`,
      `6 attach 4 ${base / 4 + 1} ${address(base)}`,
      `7 attach 4 ${(base + 2 ** 16) / 4} ${address(base + 2 ** 16)}`,
      `8 hostservice 4 tcp 080 80`,
      `9 hostservice 4 tcp -1 80`,
      `10 hostservice 4 tcp 80 80 80`,
      `11  detach 4`,
      `12 egress 4 10.0.0.0/8; release 4`,
      `13 egress 4 10.0.0.0/8 tcp 4294967377`,
      `14 frobnicate 4`,
      `15 detach 4\t`,
      `x detach 4`,
      `16 detach 4 ${'9'.repeat(1000)}`,
      `17 attach 4 ${base / 4} ${address(base)}`,
      `18 release 4`,
    ]
    helper.stdin!.write(lines.map((line) => `${line}\n`).join(''))
    await waitFor('the reply to request 18', () => replies.get(18), 10_000)
    const of = (id: number) => replies.get(id)?.join('\n')
    expect(of(1)).toBe('1 error command: ENOENT: sandbox 1 is not registered')
    // Refused by the check, or (rootless) already by the kernel: the hub may not even open a namespace it has no power over.
    const unreadable = String.raw`EACCES: cannot open /proc/\d+/ns/net`
    expect(of(2)).toMatch(new RegExp(String.raw`^2 error register: (EPERM: pid \d+ is not in a sandbox's network namespace|${unreadable})`))
    expect(of(3)).toMatch(/^3 error register: EPERM: pid \d+ is not a sandbox of this run \(its user namespace is not a child of the helper's\)$/)
    expect(of(4)).toBe('4 ok')
    expect(of(5)).toBe('5 error register: EEXIST: sandbox 4 is registered already')
    expect(of(6)).toMatch(/^6 error command: EINVAL: usage: attach SANDBOX ID A\.B\.C\.D/)
    expect(of(7)).toMatch(/^7 error command: EINVAL: 10\.219\.0\.20 is not a \/30 of the pool$/)
    for (const id of [8, 9]) expect(of(id)).toMatch(new RegExp(`^${id} error command: EINVAL: usage: hostservice`))
    expect(of(10)).toBe('10 error command: EINVAL: unknown command or wrong number of arguments: hostservice')
    expect(of(11)).toBe('11 error command: EINVAL: empty field in a command line')
    expect(of(12)).toMatch(/^12 error command: EINVAL: usage: egress/)
    expect(of(13)).toMatch(/^13 error command: EINVAL: usage: egress/)
    expect(of(14)).toBe('14 error command: EINVAL: unknown command or wrong number of arguments: frobnicate')
    // Lines whose request number cannot be trusted are answered as request 0, one reply each.
    expect(replies.get(0)).toEqual([
      '0 error command: EINVAL: control character in a command line',
      '0 error command: EINVAL: bad request number',
      '0 error command: E2BIG: a command line longer than 512 bytes',
    ])
    // After all that, a good attach of the registered sandbox works, and so does its release.
    expect(of(17)).toBe('17 ok')
    expect(of(18)).toBe('18 ok')
  } finally {
    for (const child of children) child.kill('SIGKILL')
  }
})
