// Worker side of attachments: Vitest's main process copies an attachment's
// `path` with the host's view of the filesystem, so an attachment in the
// sandbox's private /tmp (or /proc) would be the host's file there. The worker
// preload (worker-preload.ts) runs this on every artifact before it is sent and
// turns such attachments into a `body`, read here, from the sandbox's own view.
// Main refuses any that still name a private place (module-guard.ts).
import { readFileSync, realpathSync } from 'node:fs'
import { extname, resolve } from 'node:path'
import { keptFromEnv, SandboxPaths } from './sandbox-paths.js'

interface Attachment {
  path?: unknown
  body?: unknown
  bodyEncoding?: unknown
  contentType?: unknown
}

/** Common types by extension (main would look them up by the file's name; the body has none). */
const CONTENT_TYPES: Record<string, string> = {
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.gif': 'image/gif',
  '.webp': 'image/webp',
  '.svg': 'image/svg+xml',
  '.txt': 'text/plain',
  '.log': 'text/plain',
  '.html': 'text/html',
  '.json': 'application/json',
  '.pdf': 'application/pdf',
  '.zip': 'application/zip',
  '.webm': 'video/webm',
  '.mp4': 'video/mp4',
}

let paths: SandboxPaths | undefined

function inline(attachment: unknown, root: string): void {
  if (typeof attachment !== 'object' || attachment === null) return
  const a = attachment as Attachment
  if (typeof a.path !== 'string' || !a.path || a.path.startsWith('http://') || a.path.startsWith('https://')) return
  const absolute = resolve(root, a.path)
  paths ??= new SandboxPaths(keptFromEnv())
  let real = absolute
  try {
    real = realpathSync.native(absolute)
  } catch {
    // read below, which says what is missing
  }
  if (!paths.privatePlace(absolute) && !paths.privatePlace(real)) return
  let body: Buffer
  try {
    body = readFileSync(absolute)
  } catch (error) {
    throw new Error(`vitest-environment-netns: cannot attach ${absolute} from the sandbox: ${(error as Error).message}`)
  }
  a.body = body.toString('base64')
  a.bodyEncoding = 'base64'
  a.contentType ??= CONTENT_TYPES[extname(absolute).toLowerCase()]
  delete a.path
}

/** Rewrites, in place, the attachments of an `onTaskArtifactRecord` RPC call that name a private place. */
export function inlinePrivateAttachments(message: unknown): void {
  const rpc = message as { t?: unknown; m?: unknown; a?: unknown } | null
  if (typeof rpc !== 'object' || rpc === null || rpc.t !== 'q' || rpc.m !== 'onTaskArtifactRecord' || !Array.isArray(rpc.a)) return
  const artifact = rpc.a[1] as { type?: unknown; annotation?: { attachment?: unknown }; attachments?: unknown } | null
  if (typeof artifact !== 'object' || artifact === null) return
  const root = process.env.VITEST_NETNS_ROOT ?? process.cwd()
  if (artifact.type === 'internal:annotation' && typeof artifact.annotation === 'object' && artifact.annotation !== null) {
    inline(artifact.annotation.attachment, root)
  }
  if (Array.isArray(artifact.attachments)) for (const attachment of artifact.attachments) inline(attachment, root)
}
