// keepTmp: copies a file's private /tmp to a per-run directory before the
// sandbox (and with it the tmpfs) goes away.
import { cpSync, mkdirSync, readFileSync, readdirSync, rmSync } from 'node:fs'
import { join, relative } from 'node:path'

export type KeepTmp = 'never' | 'on-failure' | 'always'

/** Mount points below /tmp: paths the launcher bound back in (the project, Node…), not the file's own. */
function boundPaths(): Set<string> {
  const mounts = new Set<string>()
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const point = line.split(' ')[4]
    if (point?.startsWith('/tmp/')) mounts.add(point.replace(/\\040/g, ' '))
  }
  return mounts
}

/** Copies /tmp to `<runDir>/<file path relative to root>`; returns the copy's path. */
export function keepTmpOf(testFile: string, root: string, runDir: string): string {
  const destination = join(runDir, relative(root, testFile).replace(/\.\.\//g, ''))
  mkdirSync(destination, { recursive: true })
  const skip = boundPaths()
  for (const entry of readdirSync('/tmp')) {
    cpSync(join('/tmp', entry), join(destination, entry), {
      recursive: true,
      filter: (source) => !skip.has(source),
    })
  }
  return destination
}

/** Removes all but the newest `keep` run directories under `base` (names start with a timestamp). */
export function pruneRuns(base: string, keep: number): void {
  let runs: string[]
  try {
    runs = readdirSync(base).sort()
  } catch {
    return
  }
  for (const old of runs.slice(0, Math.max(0, runs.length - keep))) rmSync(join(base, old), { recursive: true, force: true })
}
