// Where the connect filter cannot run (a seccomp profile that refuses new
// filters, as some containers have; deny-seccomp plays it), what needs it
// says so and falls back: doctor's row, netns.listen() refused with the
// reason, rootless uplinks relayed by the hub and the start line saying why.
import { spawnSync } from 'node:child_process'
import { rmSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, expect, test } from 'vitest'
import { buildDenySeccomp, failures, repoRoot, runFixture } from './helpers.js'

const root = process.getuid?.() === 0
const WHY = "seccomp filters are refused here (a container's seccomp profile?): Operation not permitted"
let deny = ''

beforeAll(() => void (deny = buildDenySeccomp('no-connect-filter')))
afterAll(() => rmSync(deny, { force: true }))

test('doctor names the missing connect filter and what it costs', () => {
  const run = spawnSync(deny, [process.execPath, join(repoRoot, 'dist', 'cli.js'), 'doctor'], { encoding: 'utf8', timeout: 60_000 })
  expect(run.status, run.stdout + run.stderr).toBe(0)
  expect(run.stdout).toMatch(new RegExp(`^ {2}connect filter \\(seccomp user notification\\) +note +unavailable: ${WHY.replace(/[()?]/g, '\\$&')}: hostPorts and shareHostPort fail, netns\\.listen\\(\\) is refused, rootless uplinks relay everything$`, 'm'))
  if (!root) expect(run.stdout).toMatch(/^ {2}uplinks: host services and forwards +note +relayed by the hub \(about half host-loopback throughput\): no socket hand-over, seccomp filters are refused here/m)
})

test('netns.listen() of TCP sockets is refused, saying why; UDP listeners (relayed) are served', async () => {
  const result = await runFixture('listen', {
    wrapper: [deny],
    env: { LISTEN_UDP_SERVED: '1', LISTEN_REFUSED_WHY: `netns.listen() of a TCP socket needs the connect filter (seccomp user notification), which cannot run here: ${WHY}. A TCP listener is a host socket` },
  })
  expect(result.code, failures(result)).toBe(0)
  expect(result.report?.numPassedTests).toBe(2)
})

test('uplink host services still work, through the relay (rootless) or DNAT (root), and the start line says which', async () => {
  const result = await runFixture('uplink', {
    wrapper: [deny],
    env: { NETNS_INCLUDE: 'test/host-service.test.ts', NETNS_NO_UPSTREAM: '1' },
  })
  expect(result.code, failures(result)).toBe(0)
  expect(result.stdout).toContain(root ? 'uplinks: veth in the host namespace, kernel NAT' : `uplinks: hub namespace, host services and forwards relayed by the hub (no socket hand-over: ${WHY})`)
  const { hostService } = result.records
  expect(hostService.get.reply).toBe('works')
  expect(hostService.cli).toBe('PONG')
  // Not handed over: the socket's peer is the gateway (root's DNAT or the hub's relay).
  expect(hostService.peer.remoteAddress).toBe(hostService.uplink.gateway)
})
