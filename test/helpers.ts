// Runs real Vitest on a fixture project and collects what its tests saw.
import { execFileSync, spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, existsSync, mkdirSync } from 'node:fs'
import { join, resolve } from 'node:path'

export const repoRoot = resolve(import.meta.dirname, '..')
export const fixturesDir = join(repoRoot, 'fixtures')
export const vitestCli = join(repoRoot, 'node_modules', 'vitest', 'vitest.mjs')
/** Scratch space outside /tmp, which the sandboxed tests cannot see. */
export const outDir = join(fixturesDir, '.out')

export interface RunResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  /** Vitest's JSON report, when the run got that far. */
  report?: JsonReport
  /** Records the fixture's tests wrote with `record()` (fixtures/shared/record.ts), by name. */
  records: Record<string, any>
  /** Milliseconds from start to exit. */
  ms: number
}

export interface JsonReport {
  numTotalTests: number
  numPassedTests: number
  numFailedTests: number
  numPendingTests: number
  testResults: Array<{
    name: string
    status: string
    message: string
    assertionResults: Array<{ title: string; fullName: string; status: string; failureMessages: string[] }>
  }>
}

export interface RunOptions {
  args?: string[]
  env?: Record<string, string | undefined>
  /** Program (and args) to wrap the Vitest process in, e.g. a seccomp filter. */
  wrapper?: string[]
  timeoutMs?: number
  /** Node binary to run Vitest with (default: the one running this test). */
  node?: string
  /**
   * Called with the child process once started (to kill it, say), and the
   * directory its records go to (NETNS_RECORD_DIR, unique to this run).
   */
  onSpawn?: (child: ReturnType<typeof spawn>, run: { recordDir: string }) => void
}

/** `vitest run` in fixtures/<name> (or an absolute root), JSON report included. */
export async function runFixture(name: string, options: RunOptions = {}): Promise<RunResult> {
  mkdirSync(outDir, { recursive: true })
  const recordDir = mkdtempSync(join(outDir, `${name.replace(/\W/g, '_')}-`))
  const reportFile = join(recordDir, 'report.json')
  const root = name.startsWith('/') ? name : join(fixturesDir, name)
  const command = [
    ...(options.wrapper ?? []),
    options.node ?? process.execPath,
    vitestCli,
    'run',
    '--root',
    root,
    '--reporter=default',
    '--reporter=json',
    `--outputFile.json=${reportFile}`,
    ...(options.args ?? []),
  ]
  const started = Date.now()
  const child = spawn(command[0]!, command.slice(1), {
    cwd: root,
    env: { ...process.env, NETNS_RECORD_DIR: recordDir, FORCE_COLOR: '0', NO_COLOR: '1', ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  options.onSpawn?.(child, { recordDir })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d: Buffer) => (stdout += d))
  child.stderr.on('data', (d: Buffer) => (stderr += d))
  const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 90_000)
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((done) =>
    child.on('close', (c, s) => done([c, s])),
  )
  clearTimeout(timer)
  const records: Record<string, any> = {}
  for (const file of readdirSync(recordDir)) {
    if (file.endsWith('.record.json')) records[file.slice(0, -'.record.json'.length)] = JSON.parse(readFileSync(join(recordDir, file), 'utf8'))
  }
  const report = existsSync(reportFile) ? (JSON.parse(readFileSync(reportFile, 'utf8')) as JsonReport) : undefined
  rmSync(recordDir, { recursive: true, force: true })
  return { code, signal, stdout, stderr, report, records, ms: Date.now() - started }
}

/** Failure messages of a run, for assertion messages. */
export function failures(result: RunResult): string {
  const lines = result.report?.testResults.flatMap((file) => [
    file.message,
    ...file.assertionResults.flatMap((a) => (a.status === 'failed' ? [`${a.fullName}: ${a.failureMessages.join('\n')}`] : [])),
  ])
  return [`exit ${result.code}`, ...(lines ?? []), result.stderr.slice(-4000), result.stdout.slice(-4000)].filter(Boolean).join('\n')
}

export function ownNetNamespace(): string {
  return readlinkSync('/proc/self/ns/net')
}

/**
 * Builds test/helpers/deny.c into outDir: it runs a command under a seccomp
 * filter that refuses new user namespaces, as Docker's default profile does.
 * Returns its path; the caller removes it.
 */
export function buildDenyUserns(tag: string): string {
  return buildDeny('userns', tag, [])
}

/**
 * The same program built to refuse new seccomp filters instead, as a
 * container profile that blocks seccomp user notification looks to the
 * launcher. Returns its path; the caller removes it.
 */
export function buildDenySeccomp(tag: string): string {
  return buildDeny('seccomp', tag, ['-DDENY_SECCOMP'])
}

function buildDeny(kind: string, tag: string, flags: string[]): string {
  mkdirSync(outDir, { recursive: true })
  const path = join(outDir, `deny-${kind}-${tag}-${process.pid}`)
  execFileSync('cc', ['-O2', '-Wall', ...flags, '-o', path, join(repoRoot, 'test', 'helpers', 'deny.c')], { stdio: 'pipe' })
  return path
}
