// The hint for a test that failed on a path in the host's /tmp: a global setup
// made it there, but the sandbox's /tmp is its own. Only Vitest's main process
// sees the host's /tmp, so the pool adds this hint to failed tests' errors as
// their task updates pass through it.
import { existsSync } from 'node:fs'
import { sep } from 'node:path'

export const HOST_TMP_HINT =
  "vitest-environment-netns: this path is in the host's /tmp, not in this sandbox's private /tmp; share it with shareHostPath " +
  "(from 'vitest-environment-netns/host', in a global setup) or the hostPaths option."

interface ErrorLike {
  code?: unknown
  path?: unknown
  message?: unknown
  stack?: unknown
  cause?: unknown
}

const QUOTED_TMP_PATH = /ENOENT\b[^'\n]*'(\/tmp\/[^'\n]+)'/

/** The /tmp path an ENOENT error (or its cause) names, if any. */
function missingTmpPath(error: ErrorLike | undefined, depth = 0): string | undefined {
  if (!error || typeof error !== 'object' || depth > 4) return undefined
  if (error.code === 'ENOENT' && typeof error.path === 'string' && error.path.startsWith('/tmp/')) return error.path
  const quoted = typeof error.message === 'string' ? QUOTED_TMP_PATH.exec(error.message)?.[1] : undefined
  if (quoted) return quoted
  return missingTmpPath(error.cause as ErrorLike, depth + 1)
}

/**
 * Adds HOST_TMP_HINT to every error of an `onTaskUpdate` message whose ENOENT
 * names a path that exists in the host's /tmp and is not one both views share
 * (`shared`: kept and shared paths). Cheap: only failed tests carry errors.
 */
export function annotateHostTmpErrors(message: unknown, shared: readonly string[]): void {
  const rpc = message as { m?: unknown; a?: unknown } | null
  if (typeof rpc !== 'object' || rpc === null || rpc.m !== 'onTaskUpdate' || !Array.isArray(rpc.a) || !Array.isArray(rpc.a[0])) return
  for (const pack of rpc.a[0] as unknown[]) {
    const errors = Array.isArray(pack) ? (pack[1] as { errors?: unknown } | undefined)?.errors : undefined
    if (!Array.isArray(errors)) continue
    for (const error of errors as ErrorLike[]) {
      const path = missingTmpPath(error)
      if (!path || typeof error.message !== 'string' || error.message.includes(HOST_TMP_HINT)) continue
      if (shared.some((p) => path === p || path.startsWith(p + sep)) || !existsSync(path)) continue
      const before = error.message
      error.message += `\n\n${HOST_TMP_HINT} (${path})`
      if (typeof error.stack === 'string') error.stack = error.stack.replace(before, error.message)
    }
  }
}
