// Preloaded (node --import) into netns workers, before Vitest's worker code:
// adds the network hints (hints.ts) to failed tests' errors as Vitest's worker
// sends them to the main process, and sends attachments in the sandbox's
// private places as their content (attachments.ts). Loaded by Node directly, it
// costs far less per file than a setup file, which Vitest loads through its
// module runner.
//
// Every worker start pays for what this file loads, so it loads nothing but
// node:module: hints and attachments are only needed for a message that
// carries an error or an artifact, and are loaded then (require() of ES
// modules: Node 20.19+, 22.13+ and 24+, where it is on and prints no warning).
// Elsewhere they are loaded here, before the worker starts, as before.
import { createRequire } from 'node:module'

type Hooks = typeof import('./worker-hooks.js')

const HOOKS = './worker-hooks.js'
let hooks: Hooks | undefined
const [major = 0, minor = 0] = process.versions.node.split('.').map(Number)
const canRequireModules =
  (process.features as { require_module?: boolean }).require_module === true &&
  ((major === 20 && minor >= 19) || (major === 22 && minor >= 13) || major >= 24)
if (!canRequireModules) hooks = await import(HOOKS)
const load = (): Hooks => (hooks ??= createRequire(import.meta.url)(HOOKS) as Hooks)

interface Rpc {
  m?: unknown
  a?: unknown
}

/** Whether `message` is one the hooks may change: a task update with an error, or an artifact. */
function needsHooks(message: unknown): boolean {
  const rpc = message as Rpc | null
  if (typeof rpc !== 'object' || rpc === null || !Array.isArray(rpc.a)) return false
  if (rpc.m === 'onTaskArtifactRecord') return true
  if (rpc.m !== 'onTaskUpdate' || !Array.isArray(rpc.a[0])) return false
  return (rpc.a[0] as unknown[]).some((pack) => {
    const errors = Array.isArray(pack) ? (pack[1] as { errors?: unknown } | undefined)?.errors : undefined
    return Array.isArray(errors) && errors.length > 0
  })
}

const send = process.send?.bind(process)
if (send) {
  process.send = ((message: unknown, ...rest: unknown[]) => {
    if (needsHooks(message)) load().beforeSend(message)
    return (send as (...args: unknown[]) => boolean)(message, ...rest)
  }) as typeof process.send
}
