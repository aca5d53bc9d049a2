// Guards the RPC between a netns worker and Vitest's main process. The worker
// asks main to load its modules (fetch, resolve, transform) and to store its
// attachments; main reads files with the host's view of the filesystem, where
// the sandbox's private places (its /tmp, its /proc: sandbox-paths.ts) are the
// host's. So requests aimed at a private place never reach main: modules there
// are loaded by the worker itself (answered as external modules, which the
// worker imports natively, from its own view) and everything else is refused
// with an error saying why and what to do. Main's answers are checked too: a
// module it resolved into a private place (a link from the project into the
// host's /tmp, say) is refused instead of sent. The test can write this channel
// itself (process.send), so nothing in a request is trusted.
import { existsSync } from 'node:fs'
import { dirname, isAbsolute, posix, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import type { SandboxPaths } from './sandbox-paths.js'

/** A birpc call as Vitest's worker sends it: `{ t: 'q', m, a, i }`, no `i` for events. */
interface RpcRequest {
  t: 'q'
  m: string
  a: unknown[]
  i?: string
}
/** A birpc answer: `{ t: 's', i, r }` or `{ t: 's', i, e }`. */
interface RpcReply {
  t: 's'
  i: string
  r?: unknown
  e?: unknown
}

/** What to do with a message from the worker. */
export type WorkerVerdict = { pass: unknown } | { answer: RpcReply | undefined }

/** Modules Node loads by itself, so the worker can import them from its own view. */
const NATIVE_MODULE = /\.(mjs|cjs|js)$/
/** Methods main answers by reading files (Vitest 4.1 and 5). */
const GUARDED = new Set([
  'fetch',
  'resolve',
  'transform',
  'onTaskArtifactRecord',
  'ensureModuleGraphEntry',
  'prewarmModuleGraph',
  'fetchWarmModules',
  'readBenchmarkResult',
  'writeBenchmarkResult',
])
/** Paths named in main's error messages. */
const PATH_IN_TEXT = /\/(?:tmp|proc)(?:\/[^\s'"`()<>,;]*)?/g

export class Refusal extends Error {
  constructor(message: string) {
    super(`vitest-environment-netns: ${message}`)
    this.name = 'NetnsRefusal'
  }
}

const FIX_READ = "Read it inside the test with node:fs (readFileSync), which sees the sandbox's own files."
/** For files of the project itself under the host's /tmp (a sibling package of a monorepo, say). */
const FIX_BIND =
  'If it is a file of your project under the host\'s /tmp, list its directory in the Vite option server.fs.allow (or make the project a workspace), and it is bound into the sandbox.'
const UNSEEN = "which Vitest's main process (outside the sandbox) does not see"

/** Where a path found in a private place on the host lies: there itself, or behind a link. */
function where(path: string, found: { place: string; real: string }): string {
  return found.real === path ? `it is in ${found.place}` : `it is a link to ${found.real}, in ${found.place}`
}

export class ModuleGuard {
  /** Requests passed to main whose answers are still to be checked, by birpc id. */
  private readonly pending = new Map<string, { method: string; args: unknown[] }>()

  constructor(private readonly paths: SandboxPaths, private readonly root: string) {}

  /** Checks a message from the worker before main sees it. */
  fromWorker(message: unknown): WorkerVerdict {
    if (typeof message !== 'object' || message === null) return { pass: message }
    const rpc = message as Partial<RpcRequest> & Record<string, unknown>
    if (rpc.t !== 'q') return { pass: message }
    // birpc looks the method up by property key: a String object or an array would name it too.
    if (typeof rpc.m !== 'string' || (rpc.i !== undefined && typeof rpc.i !== 'string')) {
      return this.refuse(rpc, new Refusal('malformed RPC request from the netns worker (method and id must be strings).'))
    }
    if (!GUARDED.has(rpc.m)) return { pass: message }
    // Function.prototype.apply takes array-likes: `a` must be a real array of what we check.
    if (!Array.isArray(rpc.a)) return this.refuse(rpc, new Refusal(`malformed '${rpc.m}' request from the netns worker (arguments must be an array).`))
    if (rpc.i !== undefined && this.pending.has(rpc.i)) {
      return this.refuse({ ...rpc, i: undefined }, new Refusal(`'${rpc.m}' request reuses the id of a request still in progress.`))
    }
    let outcome: { answer: unknown } | { forward: unknown[] }
    try {
      outcome = this.check(rpc.m, rpc.a)
    } catch (error) {
      return this.refuse(rpc, error)
    }
    if ('answer' in outcome) return { answer: rpc.i ? { t: 's', i: rpc.i, r: outcome.answer } : undefined }
    if (rpc.i) this.pending.set(rpc.i, { method: rpc.m, args: outcome.forward })
    return { pass: outcome.forward === rpc.a ? message : { ...rpc, a: outcome.forward } }
  }

  /** Checks a message from main to the worker: answers to guarded requests. */
  toWorker(message: unknown): unknown {
    const reply = message as Partial<RpcReply> | null
    if (typeof reply !== 'object' || reply === null || reply.t !== 's' || typeof reply.i !== 'string') return message
    const request = this.pending.get(reply.i)
    if (!request) return message
    this.pending.delete(reply.i)
    try {
      if ('e' in reply && reply.e) this.checkError(request.args[0], reply.e)
      else {
        const result = this.checkResult(request.method, request.args, reply.r)
        if (result !== reply.r) return { ...reply, r: result }
      }
    } catch (error) {
      return { t: 's', i: reply.i, e: error }
    }
    return message
  }

  private refuse(rpc: Partial<RpcRequest>, error: unknown): WorkerVerdict {
    return { answer: typeof rpc.i === 'string' && rpc.i ? { t: 's', i: rpc.i, e: error } : undefined }
  }

  // --- requests ---

  private check(method: string, args: unknown[]): { answer: unknown } | { forward: unknown[] } {
    switch (method) {
      case 'fetch': {
        const [url, importer] = args
        const target = this.target(url, importer, 'fetch')
        if (!target) return { forward: args }
        return { answer: this.loadInWorker(url as string, target) }
      }
      case 'resolve': {
        const [id, importer] = args
        const target = this.target(id, importer, 'resolve')
        if (!target) return { forward: args }
        // Only names: the worker's fetch of this id then comes back here and is loaded in the worker.
        return { answer: { file: target.path, url: target.path + target.query, id: target.path + target.query } }
      }
      case 'transform': {
        const [id] = args
        const target = this.target(id, undefined, 'transform')
        if (target) throw new Refusal(`cannot transform ${target.path}: it is in ${target.place}, ${UNSEEN}. ${FIX_READ}`)
        return { forward: args }
      }
      case 'onTaskArtifactRecord':
        this.checkArtifact(args[1])
        return { forward: args }
      case 'ensureModuleGraphEntry': {
        // Puts a module natively imported by the worker into main's graph, whose code frames then quote
        // main's copy of the file: not for private ones (answered as done, since the worker ignores the answer).
        const [id, importer] = args
        if (typeof id !== 'string' || typeof importer !== 'string') throw new Refusal("malformed 'ensureModuleGraphEntry' request (ids must be strings).")
        const private_ = [id, importer].some((name) => {
          const located = this.locate(name, undefined)
          return located !== undefined && this.paths.privateOnHost(located.path) !== undefined
        })
        return private_ ? { answer: undefined } : { forward: args }
      }
      case 'prewarmModuleGraph': {
        // Vitest 5: main loads these files ahead of the worker; private ones the worker loads itself.
        const [environment, files] = args
        if (!Array.isArray(files)) throw new Refusal("malformed 'prewarmModuleGraph' request (files must be an array).")
        const shared = files.filter((file) => typeof file === 'string' && isAbsolute(file) && !this.paths.privateOnHost(posix.resolve(file)))
        return { forward: shared.length === files.length ? args : [environment, shared, ...args.slice(2)] }
      }
      case 'readBenchmarkResult':
      case 'writeBenchmarkResult': {
        const [relativePath] = args
        if (typeof relativePath !== 'string') throw new Refusal(`malformed '${method}' request (the path must be a string).`)
        const path = resolve(this.root, relativePath)
        const found = this.paths.privateOnHost(path)
        if (found) throw new Refusal(`cannot use the benchmark result ${path}: ${where(path, found)}, ${UNSEEN}. Keep benchmark results in the project.`)
        return { forward: args }
      }
      default:
        return { forward: args }
    }
  }

  /**
   * Where a module specifier points, as main would take it, when that is a
   * private place; undefined when main may serve it (the answer is checked
   * then). Throws for a specifier that is not a string.
   */
  private target(spec: unknown, importer: unknown, method: string): { path: string; query: string; place: string } | undefined {
    if (typeof spec !== 'string' || (importer !== undefined && importer !== null && typeof importer !== 'string')) {
      throw new Refusal(`malformed '${method}' request from the netns worker (the module id and importer must be strings).`)
    }
    const located = this.locate(spec, importer ?? undefined)
    if (!located) return undefined
    const { path, query, rootRelative } = located
    // Vite serves `/x` from the project root when <root>/x exists: a shared file, whose answer is checked.
    if (rootRelative && existsSync(resolve(this.root, `.${path}`))) return undefined
    let decoded = path
    try {
      decoded = decodeURIComponent(path)
    } catch {
      // not percent-encoded
    }
    const place = this.paths.privatePlace(path) ?? this.paths.privatePlace(posix.resolve(decoded))
    if (place) {
      if (decoded !== path) throw new Refusal(`module ${spec} is in ${place}, written with %-escapes: give the plain path.`)
      return { path, query, place }
    }
    const linked = this.paths.privateOnHost(path)
    if (linked) {
      throw new Refusal(
        `cannot load ${spec}: ${where(path, linked)}. Vitest's main process, outside the sandbox, would read the host's file there, not the sandbox's. ` +
          `Import ${linked.real} by that path, or ${FIX_READ[0]!.toLowerCase()}${FIX_READ.slice(1)}`,
      )
    }
    return undefined
  }

  /** The absolute path and query a specifier names (file URL, /@fs/, /@id/, absolute, or relative to its importer). */
  private locate(spec: string, importer: string | undefined): { path: string; query: string; rootRelative: boolean } | undefined {
    if (spec.startsWith('file:')) {
      let url: URL
      try {
        url = new URL(spec)
      } catch {
        return undefined
      }
      const query = url.search + url.hash
      url.search = ''
      url.hash = ''
      try {
        return { path: posix.resolve(fileURLToPath(url)), query, rootRelative: false }
      } catch {
        return undefined
      }
    }
    let id = spec
    if (id.startsWith('/@id/')) id = id.slice('/@id/'.length)
    if (id.startsWith('__x00__') || id.startsWith('\0')) return undefined // a virtual module
    const cut = id.search(/[?#]/)
    const query = cut < 0 ? '' : id.slice(cut)
    const bare = cut < 0 ? id : id.slice(0, cut)
    if (bare.startsWith('/@fs/')) return { path: posix.resolve(bare.slice('/@fs'.length)), query, rootRelative: false }
    if (bare.startsWith('/')) return { path: posix.resolve(bare), query, rootRelative: true }
    if ((bare.startsWith('./') || bare.startsWith('../') || bare === '.' || bare === '..') && importer) {
      const from = this.locate(importer, undefined)
      if (!from) return undefined
      const base = from.rootRelative && existsSync(resolve(this.root, `.${from.path}`)) ? resolve(this.root, `.${from.path}`) : from.path
      return { path: posix.resolve(dirname(base), bare), query, rootRelative: false }
    }
    return undefined // a package name: main resolves it in node_modules (answer checked)
  }

  /** The answer to a fetch of a private module: the worker imports it natively, from its own view. */
  private loadInWorker(spec: string, target: { path: string; query: string; place: string }): unknown {
    const unseen = `${target.path} is in ${target.place}, ${UNSEEN}`
    if (target.query) {
      throw new Refusal(`cannot import ${spec}: ${unseen}, so it cannot apply '${target.query}' to it. ${FIX_READ}`)
    }
    if (!NATIVE_MODULE.test(target.path)) {
      throw new Refusal(
        `cannot import ${spec}: ${unseen}. Modules there are loaded by Node inside the sandbox, untransformed: ` +
          `only JavaScript files named .mjs, .js or .cjs (write it as .mjs, with the full file name). ${FIX_BIND} ${FIX_READ}`,
      )
    }
    return { externalize: pathToFileURL(target.path).href, type: 'module' }
  }

  /** Attachments main would copy from a private place (the worker preload sends those as a body instead). */
  private checkArtifact(artifact: unknown): void {
    if (typeof artifact !== 'object' || artifact === null) return
    const record = artifact as { type?: unknown; annotation?: { attachment?: unknown }; attachments?: unknown }
    const attachments: unknown[] = []
    if (record.type === 'internal:annotation' && typeof record.annotation === 'object' && record.annotation !== null) attachments.push(record.annotation.attachment)
    if (Array.isArray(record.attachments)) attachments.push(...record.attachments)
    for (const attachment of attachments) {
      if (typeof attachment !== 'object' || attachment === null) continue
      const path: unknown = (attachment as { path?: unknown }).path
      if (path === undefined || path === null || path === '') continue
      if (typeof path !== 'string') throw new Refusal('malformed attachment: its path must be a string.')
      if (path.startsWith('http://') || path.startsWith('https://')) continue
      const absolute = resolve(this.root, path)
      const found = this.paths.privateOnHost(absolute)
      if (found) {
        throw new Refusal(
          `cannot attach ${absolute}: ${where(absolute, found)}, ${UNSEEN}. ` +
            `Attach its content instead: annotate(message, { body: readFileSync(path), contentType }).`,
        )
      }
    }
  }

  // --- answers ---

  private checkResult(method: string, args: unknown[], result: unknown): unknown {
    if (typeof result !== 'object' || result === null) return result
    if (method === 'fetch' || method === 'resolve') this.checkModule(args[0], result as ModuleAnswer)
    if (method === 'fetchWarmModules') {
      // Vitest 5: modules the worker may take without asking; drop any main resolved into a private place.
      const kept: Record<string, unknown> = {}
      let dropped = false
      for (const [url, entry] of Object.entries(result)) {
        try {
          this.checkModule(url, entry as ModuleAnswer)
          kept[url] = entry
        } catch {
          dropped = true
        }
      }
      return dropped ? kept : result
    }
    return result
  }

  /** A module main resolved or loaded: its file and id must not be private on the host. */
  private checkModule(spec: unknown, answer: ModuleAnswer | null): void {
    if (typeof answer !== 'object' || answer === null || 'externalize' in answer) return // the worker imports externals itself
    const names = new Set([answer.file, answer.id].map((name) => (typeof name === 'string' ? name.replace(/[?#].*$/, '') : '')))
    for (const path of names) {
      if (!path.startsWith('/')) continue
      const found = this.paths.privateOnHost(path)
      if (found) {
        throw new Refusal(
          `cannot load ${String(spec)}: Vite resolved it to ${found.real}, in ${found.place}. ` +
            `Vitest's main process, outside the sandbox, would read the host's file there, not the sandbox's. ${FIX_READ}`,
        )
      }
    }
  }

  /** Main's errors may quote what it read (a code frame): not when they name a private place. */
  private checkError(spec: unknown, error: unknown): void {
    const text = typeof error === 'object' && error !== null ? `${(error as Error).message}\n${(error as Error).stack}` : String(error)
    for (const [path] of text.matchAll(PATH_IN_TEXT)) {
      const place = this.paths.privatePlace(posix.resolve(path))
      if (place) throw new Refusal(`cannot load ${String(spec)}: Vite's answer names ${path}, in ${place}, ${UNSEEN}. ${FIX_READ}`)
    }
  }
}

interface ModuleAnswer {
  externalize?: string
  file?: unknown
  id?: unknown
}
