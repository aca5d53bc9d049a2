// Which native launcher binary this process runs, and why none when there is
// none. In order: build/netns-launch (a source build: `npm run build` in a
// checkout, or an earlier first-use build), prebuilt/linux-<arch>/netns-launch
// (shipped in the package, static), then a source build now with the machine's
// compiler (scripts/build-launcher.mjs: temporary file, rename, lock). Each
// candidate must run before it is used. Without any, the shell launcher starts
// workers, and the reason and its cost go to the start line and to doctor.
import { spawnSync } from 'node:child_process'
import { existsSync, readdirSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

export const packageRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..')
/** Where source builds go (never shipped). */
export const builtLauncherPath = join(packageRoot, 'build', 'netns-launch')
const prebuiltDir = join(packageRoot, 'prebuilt')

/** What the shell launcher costs against the native one (measured in docs/performance.md). */
export const SHELL_COST = 'the shell launcher adds about 70 ms per test file (160 ms of CPU; docs/performance.md) and has no attempt recording, uplinks or shared host ports'
/** How to get the native launcher where none fits. */
export const COMPILER_FIX = 'install a C compiler (Debian/Ubuntu: apt-get install gcc libc6-dev; Fedora: dnf install gcc glibc-static; Alpine: apk add build-base linux-headers): the next run builds the launcher'

export interface NativeLauncher {
  /** The binary, or undefined when there is none: workers start through the shell launcher. */
  path?: string
  source?: 'prebuilt' | 'built here'
  /** Without a binary: why. With one built here: why the prebuilt one was not used. */
  why?: string
}

export function prebuiltPath(arch: string = process.arch): string {
  return join(prebuiltDir, `linux-${arch}`, 'netns-launch')
}

/** Runs the binary with no arguments: a working launcher prints its usage and exits 2. */
function runs(path: string): string | undefined {
  const result = spawnSync(path, [], { encoding: 'utf8', stdio: ['ignore', 'ignore', 'pipe'], timeout: 10_000 })
  if (result.error) return (result.error as NodeJS.ErrnoException).code ?? result.error.message
  if (result.status === 2 && result.stderr.startsWith('usage: netns-launch')) return undefined
  return `exit ${result.status ?? result.signal}${result.stderr.trim() ? `: ${result.stderr.trim().split('\n')[0]}` : ''}`
}

/** Why the prebuilt launcher for this machine is not used; undefined when it is there and runs. */
function whyNoPrebuilt(): string | undefined {
  const path = prebuiltPath()
  if (existsSync(path)) {
    const problem = runs(path)
    return problem ? `the prebuilt launcher ${path} does not run here (${problem})` : undefined
  }
  if (!existsSync(prebuiltDir)) return 'this copy of the package has no prebuilt launchers (a git checkout: npm pack builds them)'
  const shipped = readdirSync(prebuiltDir).filter((name) => existsSync(join(prebuiltDir, name, 'netns-launch')))
  return `no prebuilt launcher for linux-${process.arch} (this package has ${shipped.join(', ') || 'none'})`
}

/** Builds build/netns-launch from native/ now; undefined when it worked, else the build's own reason. */
function buildNow(): string | undefined {
  const script = join(packageRoot, 'scripts', 'build-launcher.mjs')
  const result = spawnSync(process.execPath, [script, '--quiet', '--if-missing'], { encoding: 'utf8', stdio: ['ignore', 'ignore', 'pipe'], timeout: 180_000 })
  if (result.status === 0) return undefined
  if (result.error) return `cannot run ${script}: ${result.error.message}`
  const said = result.stderr.trim().replace(/^vitest-environment-netns: could not build the native launcher: /, '')
  return said || `${script} ended with ${result.status ?? result.signal}`
}

function resolveLauncher(): NativeLauncher {
  if (process.platform !== 'linux') return { why: `no launcher for ${process.platform}: namespaces are Linux-only` }
  if (existsSync(builtLauncherPath) && !runs(builtLauncherPath)) {
    // An installed package has build/ only from a first-use build: say again why the prebuilt one was passed over.
    const prebuiltProblem = existsSync(prebuiltDir) ? whyNoPrebuilt() : undefined
    return { path: builtLauncherPath, source: 'built here', ...(prebuiltProblem ? { why: prebuiltProblem } : {}) }
  }
  const prebuilt = prebuiltPath()
  if (existsSync(prebuilt) && !runs(prebuilt)) return { path: prebuilt, source: 'prebuilt' }
  const why = whyNoPrebuilt() ?? 'the prebuilt launcher vanished while it was tried'
  const failed = buildNow()
  if (!failed) {
    const problem = runs(builtLauncherPath)
    if (!problem) return { path: builtLauncherPath, source: 'built here', why }
    return { why: `${why}, and the launcher built from source does not run (${problem})` }
  }
  return { why: `${why}, and building it from source failed: ${failed}` }
}

let cached: NativeLauncher | undefined

/** The native launcher for this process: found (or built) once, then remembered. */
export function nativeLauncher(): NativeLauncher {
  return (cached ??= resolveLauncher())
}
