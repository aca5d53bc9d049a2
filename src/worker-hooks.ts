// What a netns worker does to a message before Vitest's worker sends it to
// the main process: network hints on failed tests' errors (hints.ts), and
// attachments in the sandbox's private places sent as their content
// (attachments.ts). Loaded by worker-preload.ts only when a message needs it.
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

/** Changes `message` in place, as the main process should receive it. */
export function beforeSend(message: unknown): void {
  annotate(message)
  inlinePrivateAttachments(message)
}
