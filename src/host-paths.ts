// Host paths every sandbox sees at the same path: netns({ hostPaths }) and
// shareHostPath() from a global setup. Checked where they are given, so bad
// input fails before any test runs; shared through globalThis, since a global
// setup may load another copy of this module than the plugin's.
import { realpathSync, statSync } from 'node:fs'
import { posix } from 'node:path'

export interface HostPath {
  path: string
  readOnly: boolean
}

const REGISTRY = Symbol.for('vitest-environment-netns.host-paths')

function registry(): Map<string, boolean> {
  const holder = globalThis as { [REGISTRY]?: Map<string, boolean> }
  return (holder[REGISTRY] ??= new Map())
}

/** Why `path` cannot be shared, or undefined. `path` is what the user gave. */
export function hostPathProblem(path: unknown): string | undefined {
  if (typeof path !== 'string' || path === '') return 'it is not a path'
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(path)) return 'it contains a newline or another control character'
  if (!path.startsWith('/')) return 'it is relative: give an absolute path'
  if (path.split('/').some((part) => part === '.' || part === '..')) return "it contains '.' or '..': give the path itself"
  if (posix.normalize(path) !== path || (path.length > 1 && path.endsWith('/'))) return `it is not in its plain form (${posix.normalize(path).replace(/(.)\/$/, '$1')})`
  if (path === '/') return 'it is the whole filesystem: share a directory under /tmp'
  if (path === '/tmp') return "it is /tmp itself, which would undo the sandbox's private /tmp: share a directory under it (mkdtemp)"
  try {
    statSync(path)
  } catch (error) {
    return `it does not exist (${(error as NodeJS.ErrnoException).code ?? 'stat failed'}): create it before sharing it`
  }
  let real: string
  try {
    real = realpathSync(path)
  } catch (error) {
    return `it cannot be resolved (${(error as NodeJS.ErrnoException).code ?? 'realpath failed'})`
  }
  if (real !== path) return `it is or goes through a symbolic link: share the real path ${real}`
  return undefined
}

/** Whether a shared path needs binding: paths outside /tmp are the host's in every sandbox already. */
function underTmp(path: string): boolean {
  return path.startsWith('/tmp/')
}

/**
 * Makes a host path (and what is below it) appear at the same path in every
 * netns file that starts from now on, read-write unless `readOnly`. Call it in
 * a global setup, e.g. on a fixture directory made with mkdtemp(join(tmpdir(), …)).
 * A path outside /tmp is already the host's in every sandbox: sharing it is
 * accepted and changes nothing. Throws at once on a bad path.
 */
export function shareHostPath(path: string, options: { readOnly?: boolean } = {}): void {
  const problem = hostPathProblem(path)
  if (problem) throw new Error(`vitest-environment-netns: shareHostPath(${JSON.stringify(path)}): cannot share this path: ${problem}.`)
  if (options === null || typeof options !== 'object' || (options.readOnly !== undefined && typeof options.readOnly !== 'boolean')) {
    throw new Error(`vitest-environment-netns: shareHostPath(${JSON.stringify(path)}, options): options must be { readOnly?: boolean }; got ${JSON.stringify(options)}.`)
  }
  registry().set(path, options.readOnly === true)
}

/**
 * What the launcher binds into a sandbox now: the configured paths and those
 * shared so far, under /tmp, parents first (a parent bound later would hide
 * its child's mount). A path given twice is read-only only if every mention says so.
 */
export function hostPathsToBind(configured: readonly HostPath[]): HostPath[] {
  const all = new Map<string, boolean>()
  for (const [path, readOnly] of [...configured.map((p) => [p.path, p.readOnly] as const), ...registry()]) {
    all.set(path, (all.get(path) ?? true) && readOnly)
  }
  return [...all]
    .filter(([path]) => underTmp(path))
    .map(([path, readOnly]) => ({ path, readOnly }))
    .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0))
}
