// Builds the native launcher (all of native/*.c) from source: `npm run build`
// in a checkout, scripts/build-prebuilt.mjs for the shipped binaries, and the
// package itself at first use where no prebuilt binary fits (src/launcher-binary.ts).
// The compiler writes a temporary file in the output's directory, renamed into
// place when complete, and one build at a time holds a lock file next to it:
// parallel first runs never exec (ETXTBSY) or read a half-written launcher.
//
//   node scripts/build-launcher.mjs [--quiet] [--if-missing] [--optional] [--out PATH] [--static-only] [--strip]
// CC picks the compiler (default cc). Exit 0: the launcher is at PATH; 1: it could
// not be built, and stderr says why (--optional: says so, exits 0; `npm run build`
// without a compiler still builds dist/, and the package falls back as it would).
import { spawnSync } from 'node:child_process'
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, statSync, unlinkSync, writeSync } from 'node:fs'
import { basename, dirname, join, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
export const nativeDir = join(root, 'native')
export const defaultOutput = join(root, 'build', 'netns-launch')

/** Longest a build waits for another one's lock before giving up. */
const LOCK_WAIT_MS = 120_000
/** A lock older than this is left over from a killed build (one compile takes seconds). */
const LOCK_STALE_MS = 300_000

export class BuildError extends Error {}

function sources() {
  return readdirSync(nativeDir).filter((f) => /\.[ch]$/.test(f)).map((f) => join(nativeDir, f))
}

function isFresh(output) {
  if (!existsSync(output)) return false
  const newest = Math.max(...sources().map((f) => statSync(f).mtimeMs))
  return statSync(output).mtimeMs >= newest
}

function sleep(ms) {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms)
}

function isAlive(pid) {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return error.code === 'EPERM'
  }
}

/** The lock's holder is gone: its pid is dead, or the lock is older than any build. */
function isStale(lock) {
  try {
    const pid = Number(readFileSync(lock, 'utf8').trim())
    const age = Date.now() - statSync(lock).mtimeMs
    if (Number.isInteger(pid) && pid > 0) return !isAlive(pid) || age > LOCK_STALE_MS
    return age > 10_000 // no pid yet: the holder was killed between creating and writing it
  } catch {
    return false // gone already: the next attempt takes it
  }
}

/**
 * Runs `build` holding `<output>.lock` (O_EXCL, our pid inside). Breaking a
 * stale lock can race with another waiter doing the same; that costs at most a
 * second compile, never a broken file, since each build renames its own temporary.
 */
function withLock(output, build) {
  const lock = `${output}.lock`
  const deadline = Date.now() + LOCK_WAIT_MS
  for (;;) {
    try {
      const fd = openSync(lock, 'wx', 0o644)
      writeSync(fd, `${process.pid}\n`)
      closeSync(fd)
      break
    } catch (error) {
      if (error.code !== 'EEXIST') throw new BuildError(`cannot create the lock ${lock}: ${error.message}`)
    }
    if (isStale(lock)) {
      try {
        unlinkSync(lock)
      } catch {}
      continue
    }
    if (Date.now() > deadline) {
      throw new BuildError(`another build has held ${lock} for over ${LOCK_WAIT_MS / 1000} s; if none is running, delete that file`)
    }
    sleep(100)
  }
  try {
    return build()
  } finally {
    try {
      unlinkSync(lock)
    } catch {}
  }
}

/** Temporaries of builds that were killed mid-compile (their pid is in the name). */
function removeDeadTemporaries(output) {
  const prefix = `.${basename(output)}.`
  for (const name of readdirSync(dirname(output))) {
    const match = name.startsWith(prefix) && /\.(\d+)\.tmp$/.exec(name)
    if (match && !isAlive(Number(match[1]))) {
      try {
        unlinkSync(join(dirname(output), name))
      } catch {}
    }
  }
}

/** Last lines of a compiler's output: enough to name the error, short enough for a message. */
function tail(text, lines = 12) {
  return text.trim().split('\n').slice(-lines).join('\n')
}

/**
 * Compiles native/*.c into `output` (temporary file, then rename). Static first:
 * no dynamic loader at every worker start; not every libc ships a static
 * archive, so a dynamic build follows unless `staticOnly`. Returns how it linked.
 */
export function compile({ output = defaultOutput, cc = process.env.CC || 'cc', staticOnly = false, strip = false } = {}) {
  mkdirSync(dirname(output), { recursive: true })
  const temporary = join(dirname(output), `.${basename(output)}.${process.pid}.tmp`)
  const files = sources().filter((f) => f.endsWith('.c'))
  let last = ''
  try {
    for (const extra of staticOnly ? [['-static']] : [['-static'], []]) {
      const args = [...extra, '-O2', '-Wall', ...(strip ? ['-s'] : []), '-o', temporary, ...files]
      const result = spawnSync(cc, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 300_000 })
      if (result.error) {
        throw new BuildError(result.error.code === 'ENOENT' ? `no C compiler: '${cc}' is not on PATH` : `cannot run '${cc}': ${result.error.message}`)
      }
      if (result.status === 0) {
        renameSync(temporary, output)
        return extra.length ? 'static' : 'dynamic'
      }
      last = tail(`${result.stderr}${result.stdout}`) || `exit ${result.status ?? result.signal}`
    }
  } finally {
    try {
      unlinkSync(temporary)
    } catch {}
  }
  throw new BuildError(`'${cc}' failed${staticOnly ? ' (static link)' : ''}:\n${last}`)
}

/** The whole source build: under the lock, skipped when a fresh launcher is already there. */
export function buildLauncher({ output = defaultOutput, ifMissing = false, ...options } = {}) {
  mkdirSync(dirname(output), { recursive: true })
  return withLock(output, () => {
    // Checked under the lock: a parallel run may have just finished the same build.
    if (ifMissing ? existsSync(output) : isFresh(output)) return 'present'
    removeDeadTemporaries(output)
    return compile({ output, ...options })
  })
}

function main(argv) {
  const quiet = argv.includes('--quiet')
  const at = argv.indexOf('--out')
  const output = at >= 0 && argv[at + 1] ? resolve(argv[at + 1]) : defaultOutput
  if (process.platform !== 'linux') {
    console.error('vitest-environment-netns: the launcher is Linux-only; nothing to build here')
    return 1
  }
  try {
    const linked = buildLauncher({ output, ifMissing: argv.includes('--if-missing'), staticOnly: argv.includes('--static-only'), strip: argv.includes('--strip') })
    if (!quiet && linked !== 'present') console.log(`vitest-environment-netns: built ${output} (${linked})`)
    return 0
  } catch (error) {
    if (!(error instanceof BuildError)) throw error
    console.error(`vitest-environment-netns: could not build the native launcher: ${error.message}`)
    return argv.includes('--optional') ? 0 : 1
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) process.exitCode = main(process.argv.slice(2))
