// Preloaded (node --import) into netns workers, before Vitest's worker code:
// adds the network hints (hints.ts) to failed tests' errors as Vitest's worker
// sends them to the main process, and sends attachments in the sandbox's
// private places as their content (attachments.ts). Loaded by Node directly, it
// costs far less per file than a setup file, which Vitest loads through its
// module runner.
import { inlinePrivateAttachments } from './attachments.js'
import { annotateNetworkError } from './hints.js'

interface TaskUpdate {
  m?: unknown
  a?: unknown
}
type Pack = [string, { errors?: unknown[] } | undefined, ...unknown[]]

function annotate(message: unknown): void {
  const rpc = message as TaskUpdate | null
  if (typeof rpc !== 'object' || rpc === null || rpc.m !== 'onTaskUpdate' || !Array.isArray(rpc.a)) return
  const packs = rpc.a[0]
  if (!Array.isArray(packs)) return
  for (const pack of packs as Pack[]) {
    for (const error of (Array.isArray(pack) && pack[1]?.errors) || []) annotateNetworkError(error as never, typeof pack[0] === 'string' ? pack[0] : undefined)
  }
}

const send = process.send?.bind(process)
if (send) {
  process.send = ((message: unknown, ...rest: unknown[]) => {
    annotate(message)
    inlinePrivateAttachments(message)
    return (send as (...args: unknown[]) => boolean)(message, ...rest)
  }) as typeof process.send
}
