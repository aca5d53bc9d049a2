// `vitest-environment-netns doctor` (the package's bin), run as users run it,
// on this machine and in really blocked environments; its arguments.
import { spawnSync } from 'node:child_process'
import { existsSync, readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { buildDenyUserns, repoRoot } from './helpers'

const cli = join(repoRoot, 'dist', 'cli.js')

function doctor(args: string[] = [], wrapper: string[] = [], env: Record<string, string | undefined> = {}) {
  const command = [...wrapper, process.execPath, cli, 'doctor', ...args]
  const run = spawnSync(command[0]!, command.slice(1), { encoding: 'utf8', timeout: 30_000, env: { ...process.env, ...env } })
  return { code: run.status, stdout: run.stdout, stderr: run.stderr }
}

function cliRun(args: string[]) {
  const run = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 30_000 })
  return { code: run.status, stdout: run.stdout, stderr: run.stderr }
}

const manifest = JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8'))

describe('the command line', () => {
  test('the bin is named after the package, so `npx vitest-environment-netns doctor` runs it', () => {
    expect(manifest.bin).toEqual({ 'vitest-environment-netns': 'dist/cli.js' })
    expect(readFileSync(cli, 'utf8')).toMatch(/^#!\/usr\/bin\/env node\n/)
  })

  test('an unknown option of doctor is an error naming it and the options there are, exit 2; nothing is checked', () => {
    const run = cliRun(['doctor', '--bogus'])
    expect(run.code).toBe(2)
    expect(run.stderr).toContain("unknown option '--bogus' for doctor; its options are --json, --help.")
    expect(run.stdout).toBe('')
  })

  test('--version prints the package version', () => {
    const run = cliRun(['--version'])
    expect(run.code).toBe(0)
    expect(run.stdout).toBe(`${manifest.version}\n`)
  })

  test('--help (and doctor --help) print the usage, exit 0', () => {
    for (const args of [['--help'], ['doctor', '--help'], []]) {
      const run = cliRun(args)
      expect(run.code, args.join(' ')).toBe(0)
      expect(run.stdout).toContain('usage: vitest-environment-netns doctor [--json]')
    }
  })

  test('an unknown command is an error naming it, exit 2', () => {
    const run = cliRun(['bogus'])
    expect(run.code).toBe(2)
    expect(run.stderr).toContain("unknown command 'bogus'; the command is doctor.")
    expect(run.stderr).toContain('usage: vitest-environment-netns doctor [--json]')
  })
})

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
    expect(run.stdout).toMatch(/^ {2}connect filter \(seccomp user notification\) +ok +tried: works \(hostPorts, shareHostPort, netns\.listen\(\), rootless socket hand-over\)$/m)
    // Rootless: which way host services and forwards go (root: kernel DNAT, no row).
    if (process.getuid?.() === 0) expect(run.stdout).not.toContain('uplinks: host services and forwards')
    else expect(run.stdout).toMatch(/^ {2}uplinks: host services and forwards +ok +TCP: host sockets handed over by the connect filter/m)
    expect(run.stdout).toContain('netns test files can run here.')
  })

  test('--json gives the same verdict to scripts', () => {
    const run = doctor(['--json'])
    const report = JSON.parse(run.stdout)
    expect(report.ok).toBe(true)
    expect(report.checks.find((c: { feature: string }) => c.feature === 'uid/gid maps').status).toBe('ok')
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
    // Every fix reads as a sentence: no stray punctuation before its full stop (it once ended in "),.").
    expect(run.stdout).not.toMatch(/[,;:]\.(\s|$)/m)
    expect(JSON.parse(doctor(['--json'], [denyUserns]).stdout).ok).toBe(false)
  })

  test('advice only for the platform detected here: AppArmor where it restricts namespaces (or on Ubuntu), GitHub Actions on its runners', () => {
    const release = existsSync('/etc/os-release') ? readFileSync('/etc/os-release', 'utf8') : ''
    const apparmor = existsSync('/proc/sys/kernel/apparmor_restrict_unprivileged_userns') &&
      readFileSync('/proc/sys/kernel/apparmor_restrict_unprivileged_userns', 'utf8').trim() === '1'
    const ubuntu = /^ID(_LIKE)?="?[^"\n]*\bubuntu\b/m.test(release)
    const plain = doctor([], [denyUserns], { GITHUB_ACTIONS: undefined })
    expect(plain.code, plain.stdout + plain.stderr).toBe(1)
    expect(plain.stdout).not.toContain('GitHub Actions')
    if (apparmor || ubuntu) expect(plain.stdout).toContain('apparmor_parser -r /etc/apparmor.d/vitest-netns')
    else expect(plain.stdout).not.toMatch(/AppArmor|apparmor_parser/)
    const actions = doctor([], [denyUserns], { GITHUB_ACTIONS: 'true' })
    expect(actions.stdout).toContain('GitHub Actions (ubuntu-24.04), a step before the tests:')
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
