// What the benchmarks share: bounded command-line options, timed commands,
// and the small statistics and markdown tables they print.
import { spawn, spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { performance } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'

/**
 * `--key value` / `--key=value` options. Numbers must be whole and within
 * `limits[key]`; `flags` take no value; `strings[key]` checks a string
 * option (returns an error message, or undefined when it is fine).
 * `--help` prints the first `helpLines` lines of the calling script.
 */
export function parseArgs(argv, { script, helpLines, defaults, limits, flags = [], strings = {} }) {
  const args = { ...defaults, json: undefined }
  for (const flag of flags) args[flag] = false
  for (let i = 0; i < argv.length; i++) {
    const raw = argv[i]
    if (raw === '--help' || raw === '-h') {
      console.log(readFileSync(fileURLToPath(script), 'utf8').split('\n').slice(0, helpLines).join('\n'))
      process.exit(0)
    }
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(raw)
    if (!m) throw new Error(`unexpected argument ${raw}`)
    const [, key, inline] = m
    if (flags.includes(key)) { args[key] = true; continue }
    const value = inline ?? argv[++i]
    if (value === undefined) throw new Error(`--${key} needs a value`)
    if (key === 'json') { args.json = value; continue }
    if (key in strings) {
      const problem = strings[key](value)
      if (problem) throw new Error(`--${key} ${problem}`)
      args[key] = value
      continue
    }
    if (!(key in limits)) throw new Error(`unknown option --${key} (see --help)`)
    const n = Number(value)
    const [lo, hi] = limits[key]
    if (!Number.isInteger(n) || n < lo || n > hi) throw new Error(`--${key} must be a whole number from ${lo} to ${hi}`)
    args[key] = n
  }
  return args
}

const sorted = (xs) => [...xs].sort((a, b) => a - b)
export function quantile(xs, q) {
  const s = sorted(xs)
  if (!s.length) return NaN
  const pos = (s.length - 1) * q
  const lo = Math.floor(pos), hi = Math.ceil(pos)
  return s[lo] + (s[hi] - s[lo]) * (pos - lo)
}
export const median = (xs) => quantile(xs, 0.5)
export const p90 = (xs) => quantile(xs, 0.9)
export const fmt = (x, digits = 0) => (Number.isFinite(x) ? x.toFixed(digits) : 'n/a')
export const signed = (x, digits = 1) => (Number.isFinite(x) ? `${x >= 0 ? '+' : ''}${x.toFixed(digits)}` : 'n/a')

/** A markdown table; the first `textColumns` columns are left-aligned text, the rest right-aligned numbers. */
export function table(header, rows, textColumns = 1) {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)))
  const line = (cells) => '| ' + cells.map((c, i) => (i < textColumns ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join(' | ') + ' |'
  const sep = '|' + widths.map((w, i) => (i < textColumns ? '-'.repeat(w + 2) : '-'.repeat(w + 1) + ':')).join('|') + '|'
  return [line(header), sep, ...rows.map(line)].join('\n')
}

/**
 * Runs a command; resolves with the wall time from spawn to exit (ms), its
 * exit code or signal, and (with `capture`) the end of its output. Never
 * rejects. `onChild` sees the process (to kill it when the bench is stopped).
 */
export function timeCommand(file, args, { cwd, env, timeoutMs, capture = false, controlFd, onChild }) {
  return new Promise((resolvePromise) => {
    let out = ''
    const started = performance.now()
    let ended
    const child = spawn(file, args, {
      cwd,
      env,
      // A launcher that records attempts answers on a control socket, as the pool passes it.
      stdio: [
        'ignore', capture ? 'pipe' : 'ignore', capture ? 'pipe' : 'ignore',
        ...(controlFd ? [...Array(controlFd - 3).fill('ignore'), 'pipe'] : []),
      ],
      detached: true, // own process group, so a timed-out run can be ended whole
    })
    onChild?.(child)
    if (capture) {
      child.stdout.on('data', (d) => (out = (out + d).slice(-20000)))
      child.stderr.on('data', (d) => (out = (out + d).slice(-20000)))
    }
    let timedOut = false
    const timer = setTimeout(() => {
      timedOut = true
      try { process.kill(-child.pid, 'SIGKILL') } catch {}
    }, timeoutMs)
    child.on('exit', () => (ended = performance.now()))
    child.on('error', (error) => {
      clearTimeout(timer)
      resolvePromise({ ms: NaN, code: null, signal: null, out: String(error), timedOut })
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      resolvePromise({ ms: (ended ?? performance.now()) - started, code, signal, out, timedOut })
    })
  })
}

// cutime + cstime of this process: the CPU time of every child it has reaped,
// including what those children reaped in turn (Vitest its workers, the
// launcher its init, init the worker). Runs are serial, so the difference
// across one run is that run's CPU time, which other load disturbs far less
// than wall time.
export const clockTick = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout?.trim()) || 100
export function childrenCpuMs() {
  try {
    const stat = readFileSync('/proc/self/stat', 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return ((Number(fields[13]) + Number(fields[14])) * 1000) / clockTick
  } catch {
    return NaN
  }
}
