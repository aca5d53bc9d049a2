// The sandbox's private places: paths a netns worker sees differently from
// Vitest's main process. Everything else (the project, node_modules, /usr…) is
// one view shared by both, so main may read it for the worker; these it may not.
// Plain ESM without Vitest imports: the worker preload loads it too.
import { realpathSync } from 'node:fs'
import { sep } from 'node:path'

/** Files the launcher replaces inside the sandbox (src/launcher.ts, native/netns-launch.c). */
const REPLACED_FILES = ['/etc/hosts', '/etc/resolv.conf', '/etc/nsswitch.conf']

export class SandboxPaths {
  /**
   * @param kept paths under /tmp bound back into the sandbox (pathsToKeep in
   *   launcher.ts): there, both views are the same.
   */
  constructor(private readonly kept: readonly string[]) {}

  /** Why `path` (absolute, normalized) is the sandbox's own, or undefined when both views agree. */
  privatePlace(path: string): string | undefined {
    if (path === '/tmp' || path.startsWith('/tmp/')) {
      if (this.kept.some((keep) => path === keep || path.startsWith(keep + sep))) return undefined
      return "the sandbox's private /tmp"
    }
    if (path === '/proc' || path.startsWith('/proc/')) return "the sandbox's own /proc"
    if (REPLACED_FILES.includes(path)) return `the sandbox's own ${path}`
    return undefined
  }

  /**
   * Like privatePlace, for the path as given and as the host resolves it: a
   * symbolic link elsewhere (say in the project) that leads into the host's /tmp
   * names a file the sandbox would not see there.
   */
  privateOnHost(path: string): { place: string; real: string } | undefined {
    const direct = this.privatePlace(path)
    if (direct) return { place: direct, real: path }
    let real: string
    try {
      real = realpathSync.native(path)
    } catch {
      return undefined // nothing there: nothing main could read either
    }
    const place = real === path ? undefined : this.privatePlace(real)
    return place ? { place, real } : undefined
  }
}

/** The kept paths as the pool hands them to netns workers (VITEST_NETNS_KEPT). */
export function keptFromEnv(value = process.env.VITEST_NETNS_KEPT): string[] {
  if (!value) return []
  try {
    const parsed: unknown = JSON.parse(value)
    return Array.isArray(parsed) ? parsed.filter((p): p is string => typeof p === 'string' && p.startsWith('/tmp/')) : []
  } catch {
    return []
  }
}
