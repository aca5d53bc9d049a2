// Which launcher binary an installed copy of the package uses, and what it
// says when it cannot use the native one: real Vitest runs and `doctor` on a
// project whose node_modules holds a copy of the package as npm installs it
// (dist/, native/, scripts/build-launcher.mjs; prebuilt/ as each test sets it up).
import { spawn, spawnSync } from 'node:child_process'
import { chmodSync, copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { delimiter, join } from 'node:path'
import { afterAll, describe, expect, test } from 'vitest'
import { failures, fixturesDir, outDir, repoRoot, runFixture } from './helpers'

const made: string[] = []
afterAll(() => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true })
})

/** A project with fixtures/launcher-binary's files and the package copied into its node_modules. */
function project(tag: string): { root: string; pkg: string } {
  mkdirSync(outDir, { recursive: true })
  const root = mkdtempSync(join(outDir, `launcher-${tag}-`))
  made.push(root)
  cpSync(join(fixturesDir, 'launcher-binary'), root, { recursive: true })
  const pkg = join(root, 'node_modules', 'vitest-environment-netns')
  for (const part of ['dist', 'native', 'package.json', 'scripts/build-launcher.mjs']) cpSync(join(repoRoot, part), join(pkg, part), { recursive: true })
  symlinkSync(join(repoRoot, 'node_modules', 'vitest'), join(root, 'node_modules', 'vitest'), 'dir')
  return { root, pkg }
}

const COMPILERS = /^(cc|c89|c99|gcc|tcc|clang|.*-gcc|.*-gcc-\d+|gcc-\d+|clang-\d+)$/

/** A PATH like this machine's, minus every C compiler: links to all other programs. */
function pathWithoutCompiler(): string {
  const bin = mkdtempSync(join(outDir, 'no-cc-bin-'))
  made.push(bin)
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(delimiter).concat(['/usr/sbin', '/sbin'])) {
    let names: string[]
    try {
      names = readdirSync(dir)
    } catch {
      continue
    }
    for (const name of names) {
      if (COMPILERS.test(name) || existsSync(join(bin, name))) continue
      symlinkSync(join(dir, name), join(bin, name))
    }
  }
  return bin
}

function doctor(pkg: string, env: Record<string, string>) {
  const run = spawnSync(process.execPath, [join(pkg, 'dist', 'cli.js'), 'doctor'], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, ...env } })
  return `${run.stdout}${run.stderr}`
}

const startLine = (stdout: string) => /^vitest-environment-netns: .*$/m.exec(stdout)?.[0] ?? `(no start line in:\n${stdout})`

describe('without a usable native launcher', () => {
  test('no prebuilt launcher for this architecture and no compiler: the start line and doctor say so and what it costs', async () => {
    const { root, pkg } = project('nocc')
    // The package as published for other architectures only.
    const other = process.arch === 'arm64' ? 'linux-x64' : 'linux-arm64'
    mkdirSync(join(pkg, 'prebuilt', other), { recursive: true })
    writeFileSync(join(pkg, 'prebuilt', other, 'netns-launch'), 'not for this machine\n', { mode: 0o755 })
    const env = { PATH: pathWithoutCompiler(), CC: undefined, NETNS_UPLINK: '1' }

    const run = await runFixture(root, { env })
    expect(run.code, failures(run)).toBe(0)
    expect(run.report?.numPassedTests).toBe(1)
    const line = startLine(run.stdout)
    expect(line).toContain(`shell launcher (not native: no prebuilt launcher for linux-${process.arch} (this package has ${other}), and building it from source failed: no C compiler: 'cc' is not on PATH`)
    expect(line).toContain('adds about 70 ms per test file')
    // Uplinks need the native helper: not promised.
    expect(line).toContain('uplinks: unavailable (they need the native launcher)')
    expect(existsSync(join(pkg, 'build', 'netns-launch'))).toBe(false)

    const report = doctor(pkg, { PATH: env.PATH, CC: '' })
    expect(report).toMatch(/^ {2}launcher +note +shell fallback: no prebuilt launcher for linux-\S+ .*no C compiler.*Cost: the shell launcher adds about 70 ms/m)
    expect(report).toMatch(/^ {2}outside attempts recorded \(nf_tables\) +- +need the native launcher/m)
    expect(report).toMatch(/^ {2}uplinks +- +need the native launcher/m)
    // The cause is the launcher, not the kernel: no nf_tables advice.
    expect(report).not.toContain('nft_reject_inet')
    expect(report).toMatch(/^ {2}launcher: .*install .*: the next run builds the launcher$/m)
    expect(report).toContain('netns test files can run here.')
  })

  test('a prebuilt launcher that does not run here: built from source instead, and doctor says why', async () => {
    const { root, pkg } = project('broken')
    const prebuilt = join(pkg, 'prebuilt', `linux-${process.arch}`, 'netns-launch')
    mkdirSync(join(prebuilt, '..'), { recursive: true })
    copyFileSync(join(repoRoot, 'build', 'netns-launch'), prebuilt)
    chmodSync(prebuilt, 0o644) // as a package manager that dropped the mode would leave it

    const run = await runFixture(root)
    expect(run.code, failures(run)).toBe(0)
    expect(startLine(run.stdout)).toContain('native launcher')
    expect(statSync(join(pkg, 'build', 'netns-launch')).mode & 0o111).not.toBe(0)
    expect(doctor(pkg, {})).toMatch(new RegExp(`^ {2}launcher +ok +native: ${pkg.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/build/netns-launch \\(built here from native/: the prebuilt launcher \\S+ does not run here \\(EACCES\\)\\)$`, 'm'))
  })
})

describe('first runs build from source once, whatever runs at the same time', () => {
  test('three vitest runs started together on a fresh copy all pass with the native launcher', async () => {
    const { root, pkg } = project('race')
    const runs = await Promise.all([0, 1, 2].map(() => runFixture(root)))
    for (const run of runs) {
      expect(run.code, failures(run)).toBe(0)
      expect(startLine(run.stdout)).toContain('native launcher')
    }
    // One finished launcher; no temporary or lock left behind.
    expect(readdirSync(join(pkg, 'build'))).toEqual(['netns-launch'])
  })

  test('a lock left by a killed build does not stop the next one', async () => {
    const { root, pkg } = project('stale')
    mkdirSync(join(pkg, 'build'))
    // The pid of a process that has exited: a build killed while holding the lock.
    const dead = await new Promise<number>((done) => {
      const child = spawn('true')
      child.on('exit', () => done(child.pid!))
    })
    writeFileSync(join(pkg, 'build', 'netns-launch.lock'), `${dead}\n`)
    writeFileSync(join(pkg, 'build', `.netns-launch.${dead}.tmp`), 'half a launcher')
    const run = await runFixture(root)
    expect(run.code, failures(run)).toBe(0)
    expect(startLine(run.stdout)).toContain('native launcher')
    expect(readdirSync(join(pkg, 'build'))).toEqual(['netns-launch'])
  })
})
