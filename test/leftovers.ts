// Looks, from outside, for what a fixture run may have left behind: its
// processes (sandboxed or not), and so its namespaces, which only its
// processes can hold; mounts in the host's mount table. Other test files start
// sandboxes at the same time, so "ours" is decided by the run's own
// NETNS_RECORD_DIR, which runFixture() gives only to that Vitest process and
// which every process it starts inherits (Vitest passes process.env on to its
// workers; the launcher keeps it).
import { readdirSync, readFileSync, readlinkSync } from 'node:fs'

export interface ProcessInfo {
  pid: number
  ppid: number
  comm: string
  /** Process state letter from /proc/PID/stat (R, S, Z, …). */
  state: string
  /** `net:[…]`, when readable. */
  net?: string
  /** NETNS_RECORD_DIR of the process, when its environment is readable. */
  recordDir?: string
}

function read(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8')
  } catch {
    return undefined
  }
}

function link(path: string): string | undefined {
  try {
    return readlinkSync(path)
  } catch {
    return undefined
  }
}

/** Every process visible in our /proc, with what can be read of it. */
export function scanProcesses(): ProcessInfo[] {
  const list: ProcessInfo[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    const stat = read(`/proc/${entry}/stat`)
    if (!stat) continue // gone meanwhile
    // "pid (comm) state ppid …"; comm may itself contain spaces and parentheses.
    const open = stat.indexOf('(')
    const close = stat.lastIndexOf(')')
    const [state = '?', ppid = '0'] = stat.slice(close + 2).split(' ')
    const environ = read(`/proc/${entry}/environ`)
    const recordDir = environ
      ?.split('\0')
      .find((v) => v.startsWith('NETNS_RECORD_DIR='))
      ?.slice('NETNS_RECORD_DIR='.length)
    list.push({
      pid: Number(entry),
      ppid: Number(ppid),
      comm: stat.slice(open + 1, close),
      state,
      net: link(`/proc/${entry}/ns/net`),
      recordDir,
    })
  }
  return list
}

/**
 * Processes of the run whose records went to `recordDir`. A process belongs to
 * the run that its NETNS_RECORD_DIR names; when its environment cannot be read
 * or lacks the variable, to the run of its nearest ancestor that has one
 * (leftovers in a sandbox hang below its init, foreign sandboxes below their
 * own Vitest). A namespace's number cannot tell runs apart: the kernel hands a
 * freed number to the next namespace at once, often another run's.
 */
export function processesOfRun(recordDir: string, list: ProcessInfo[] = scanProcesses()): ProcessInfo[] {
  const byPid = new Map(list.map((p) => [p.pid, p]))
  const runOf = (p: ProcessInfo | undefined): string | undefined => {
    for (let depth = 0; p && depth < 64; depth++, p = byPid.get(p.ppid)) {
      if (p.recordDir !== undefined) return p.recordDir
    }
    return undefined
  }
  return list.filter((p) => p.pid !== process.pid && runOf(p) === recordDir)
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * Waits until the run has no process left, at most `timeoutMs`, and returns
 * what is still there then (empty: all gone).
 */
export async function waitUntilGone(recordDir: string, timeoutMs = 5000): Promise<ProcessInfo[]> {
  const deadline = Date.now() + timeoutMs
  for (let i = 0; ; i++) {
    const left = processesOfRun(recordDir)
    if (left.length === 0 || Date.now() > deadline || i > 1000) return left
    await sleep(50)
  }
}

/** Polls `probe` every 50 ms until it returns a value, at most `timeoutMs`. */
export async function waitFor<T>(what: string | (() => string), probe: () => T | undefined, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (let i = 0; i < 10_000; i++) {
    const value = probe()
    if (value !== undefined) return value
    if (Date.now() > deadline) break
    await sleep(50)
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${typeof what === 'string' ? what : what()}`)
}

/** The host's mount table as seen by this process: one `mount point + fs type + source` per mount. */
export function mountTable(): string[] {
  return (read('/proc/self/mountinfo') ?? '')
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const fields = line.split(' ')
      const dash = fields.indexOf('-')
      return `${fields[4]} ${fields[dash + 1]} ${fields[dash + 2]}`
    })
}

/** Entries of `after` that `before` did not have (a multiset difference). */
export function added(before: readonly string[], after: readonly string[]): string[] {
  const counts = new Map<string, number>()
  for (const entry of before) counts.set(entry, (counts.get(entry) ?? 0) + 1)
  return after.filter((entry) => {
    const n = counts.get(entry) ?? 0
    if (n > 0) counts.set(entry, n - 1)
    return n === 0
  })
}
