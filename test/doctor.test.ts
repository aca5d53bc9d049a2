// `vitest-netns doctor`, run as users run it, on this machine and in really
// blocked environments.
import { spawnSync } from 'node:child_process'
import { rmSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { buildDenyUserns, repoRoot } from './helpers'

const cli = join(repoRoot, 'dist', 'cli.js')

function doctor(args: string[] = [], wrapper: string[] = []) {
  const command = [...wrapper, process.execPath, cli, 'doctor', ...args]
  const run = spawnSync(command[0]!, command.slice(1), { encoding: 'utf8', timeout: 30_000 })
  return { code: run.status, stdout: run.stdout, stderr: run.stderr }
}

describe('on this machine', () => {
  test('prints a table of checks, says netns files can run, exits 0', () => {
    const run = doctor()
    expect(run.code, run.stdout + run.stderr).toBe(0)
    expect(run.stdout).toMatch(/^ {2}user, net, mount, pid namespaces +ok +tried: works$/m)
    expect(run.stdout).toMatch(/^ {2}loopback up +ok/m)
    expect(run.stdout).toMatch(/^ {2}outside attempts recorded \(nf_tables\) +ok/m)
    // Tried for real: a helper of its own gave a throwaway sandbox an uplink.
    expect(run.stdout).toMatch(process.getuid?.() === 0 ? /^ {2}uplinks +ok +tried: veth into a sandbox, rules in the host namespace$/m : /^ {2}uplinks +ok +tried: hub namespace, veth into a sandbox$/m)
    expect(run.stdout).toContain(`${process.getuid?.() === 0 ? 'root' : 'rootless'} mode`)
    expect(run.stdout).toContain('netns test files can run here.')
  })

  test('--json gives the same verdict to scripts', () => {
    const run = doctor(['--json'])
    const report = JSON.parse(run.stdout)
    expect(report.ok).toBe(true)
    expect(report.checks.find((c: { feature: string }) => c.feature === 'uid/gid maps').status).toBe('ok')
  })

  test('an unknown command prints usage and fails', () => {
    const run = spawnSync(process.execPath, [cli, 'bogus'], { encoding: 'utf8' })
    expect(run.status).toBe(2)
    expect(run.stderr).toContain('usage: vitest-netns doctor [--json]')
  })
})

describe('in blocked environments', () => {
  let denyUserns = ''
  beforeAll(() => void (denyUserns = buildDenyUserns('doctor')))
  afterAll(() => rmSync(denyUserns, { force: true }))

  test('a seccomp filter that refuses unshare (as Docker): blocked, with the docker fix, exit 1', () => {
    const run = doctor([], [denyUserns])
    expect(run.code, run.stdout + run.stderr).toBe(1)
    expect(run.stdout).toMatch(/user, net, mount, pid namespaces +BLOCKED +a seccomp filter refuses unshare\(\)/)
    expect(run.stdout).toMatch(/uid\/gid maps +- +not tried/)
    expect(run.stdout).toMatch(/uplinks +- +not tried: the sandbox cannot be set up/)
    expect(run.stdout).toContain("--security-opt seccomp=unconfined --security-opt apparmor=unconfined")
    expect(run.stdout).toContain('netns test files cannot run here')
    expect(JSON.parse(doctor(['--json'], [denyUserns]).stdout).ok).toBe(false)
  })

  test('user.max_user_namespaces=0 (inside a user namespace of its own): blocked, with the sysctl fix', () => {
    const wrapper = ['unshare', '--user', '--map-root-user', 'sh', '-c', 'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"', 'sh']
    const run = doctor([], wrapper)
    expect(run.code, run.stdout + run.stderr).toBe(1)
    expect(run.stdout).toMatch(/user\.max_user_namespaces +BLOCKED +0: user namespaces disabled/)
    expect(run.stdout).toMatch(/user, net, mount, pid namespaces +BLOCKED +user namespaces are disabled/)
    expect(run.stdout).toContain('sudo sysctl -w user.max_user_namespaces=15000')
  })
})
