// Helpers for test/isolation.test.ts: reading a fixture run's report, host
// services for the sandbox to (fail to) reach, copies of fixtures, and
// Vitest in watch mode.
import { spawn, type ChildProcess } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync } from 'node:fs'
import { createServer, type AddressInfo, type Server } from 'node:net'
import { join } from 'node:path'
import { expect } from 'vitest'
import { failures, fixturesDir, outDir, vitestCli, type RunResult } from './helpers'

/** Results of the tests of one fixture file (matched by the end of its path). */
export function testsOf(result: RunResult, file: string) {
  const entry = result.report?.testResults.find((r) => r.name.endsWith(`/${file}`))
  expect(entry, `no report for ${file}\n${failures(result)}`).toBeDefined()
  return entry!.assertionResults
}

/** The fixture file ran and every test in it passed (none skipped). */
export function expectFilePassed(result: RunResult, file: string): void {
  const tests = testsOf(result, file)
  expect(tests.length, `${file} has no tests`).toBeGreaterThan(0)
  expect(tests.map((t) => [t.fullName, t.status]), failures(result)).toEqual(tests.map((t) => [t.fullName, 'passed']))
}

/** Status of the fixture tests whose full name matches `title` ('passed', 'failed', 'skipped', …). */
export function statusOf(result: RunResult, file: string, title: RegExp): string[] {
  return testsOf(result, file).filter((t) => title.test(t.fullName)).map((t) => t.status)
}

export function unique(prefix: string): string {
  return `${prefix}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`
}

/** A port that is free on the host's 127.0.0.1 right now. */
export async function freePort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  await new Promise((resolve) => server.close(resolve))
  return port
}

/** A server on the host that counts connections; `listen` takes a port/host or an abstract socket path. */
export async function countingServer(listen: { port: number; host: string } | { path: string }) {
  let connections = 0
  const server: Server = createServer((socket) => {
    connections++
    socket.end()
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(listen, resolve)
  })
  return {
    server,
    port: 'port' in listen ? (server.address() as AddressInfo).port : undefined,
    connections: () => connections,
    close: () => new Promise((resolve) => server.close(resolve)),
  }
}

/** Copies fixtures/<name> and fixtures/shared into a fresh `<parent>/<prefix>-XXXX/`; returns the copy's root. */
export function copyFixture(name: string, parent: string, prefix: string): { dir: string; root: string } {
  mkdirSync(parent, { recursive: true })
  const dir = mkdtempSync(join(parent, `${prefix}-`))
  const skip = (src: string) => !/\/(node_modules|\.out)(\/|$)/.test(src)
  cpSync(join(fixturesDir, name), join(dir, name), { recursive: true, filter: skip })
  cpSync(join(fixturesDir, 'shared'), join(dir, 'shared'), { recursive: true })
  return { dir, root: join(dir, name) }
}

/** Polls `check` every 25 ms until it returns a value other than undefined; fails after `timeoutMs`. */
export async function waitFor<T>(what: string, check: () => T | undefined, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = check()
    if (value !== undefined) return value
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

/** A record written by a fixture run (fixtures/shared/record.ts), once it exists. */
export function readRecord(recordDir: string, name: string): any {
  const file = join(recordDir, `${name}.record.json`)
  return existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')) : undefined
}

/**
 * Answers the fixture's handshakes (fixtures/shared/handshake.ts) in `dir`:
 * for each name, waits for `<name>.ready`, calls `look` with its payload while
 * the fixture waits, then lets it go on. Resolves with what `look` returned;
 * rejects when `runOver()` says the run ended first.
 */
export async function answerHandshakes<T>(dir: string, names: string[], look: (payload: string) => T, runOver: () => boolean, timeoutMs = 60_000) {
  const seen: Record<string, T> = {}
  await Promise.all(
    names.map(async (name) => {
      const ready = join(dir, `${name}.ready`)
      const payload = await waitFor(
        `handshake ${name}`,
        () => {
          if (existsSync(ready)) return readFileSync(ready, 'utf8')
          if (runOver()) throw new Error(`the run ended without handshake '${name}'`)
          return undefined
        },
        timeoutMs,
      )
      seen[name] = look(payload)
      cpSync(ready, join(dir, `${name}.done`))
    }),
  )
  return seen
}

export interface Watcher {
  child: ChildProcess
  output: () => string
  /** SIGTERM, then SIGKILL after 5 s; resolves once Vitest has exited. */
  stop: () => Promise<void>
}

/** `vitest --watch` (no `run`) in `root`, with `env` added. The caller must stop() it. */
export function watchFixture(root: string, env: Record<string, string>): Watcher {
  let output = ''
  const child = spawn(process.execPath, [vitestCli, '--watch', '--root', root], {
    cwd: root,
    env: { ...process.env, FORCE_COLOR: '0', NO_COLOR: '1', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  child.stdout!.on('data', (d: Buffer) => (output += d))
  child.stderr!.on('data', (d: Buffer) => (output += d))
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()))
  return {
    child,
    output: () => output,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.kill('SIGTERM')
      const killer = setTimeout(() => child.kill('SIGKILL'), 5_000)
      await exited
      clearTimeout(killer)
    },
  }
}

export { outDir }
