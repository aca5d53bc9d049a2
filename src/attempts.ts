// Attempt recording, read back: the launcher's relay process counts, in the
// kernel, every packet a sandbox sent towards an outside address
// (native/attempts.c), and answers "attempts" on two sockets: one the worker
// inherits (VITEST_NETNS_FD), one the pool passed in (--control-fd).
import { Socket } from 'node:net'
import type { Duplex } from 'node:stream'

export interface Attempt {
  protocol: 'tcp' | 'udp' | 'ip'
  address: string
  port: number
  /** Packets sent to this destination (a TCP connect is one; a retried UDP query, one per try). */
  count: number
}

/** 'on', or why recording is unavailable here ('unavailable: nf_tables: …'), or 'off'. */
export function recordingState(): string {
  return process.env.VITEST_NETNS_RECORDING ?? 'off'
}

let socket: Socket | undefined
let queue: Promise<unknown> = Promise.resolve()

function relaySocket(): Socket | undefined {
  const fd = Number(process.env.VITEST_NETNS_FD)
  if (!socket && Number.isInteger(fd) && fd > 2) {
    socket = new Socket({ fd, readable: true, writable: true })
    socket.unref() // never keep the worker alive
  }
  return socket
}

// The relay answers within a few milliseconds; a closed or silent socket must not stall a test run.
const ANSWER_TIMEOUT_MS = 5000

function ask(s: Duplex): Promise<string> {
  return new Promise((resolve, reject) => {
    let reply = ''
    const done = (error?: Error) => {
      clearTimeout(timer)
      s.off('data', onData)
      s.off('error', done)
      s.off('close', onClose)
      if (error) reject(error)
      else resolve(reply.slice(0, -'end\n'.length))
    }
    const onData = (chunk: Buffer) => {
      reply += chunk.toString()
      if (reply.endsWith('end\n')) done()
    }
    const onClose = () => done(new Error('the launcher closed the attempts socket'))
    const timer = setTimeout(() => done(new Error('the launcher did not answer the attempts query')), ANSWER_TIMEOUT_MS)
    s.on('data', onData)
    s.once('error', done)
    s.once('close', onClose)
    s.write('attempts\n')
  })
}

/** The counts, asked over `socket`; questions on one socket are answered in order. */
export function queryAttempts(socket: Duplex): Promise<Attempt[]> {
  return ask(socket).then(parseAttempts)
}

/** In a worker: every outside destination this file's processes tried so far, or undefined without recording. */
export function readAttempts(): Promise<Attempt[] | undefined> {
  const s = relaySocket()
  if (!s || recordingState() !== 'on') return Promise.resolve(undefined)
  const result = queue.then(() => queryAttempts(s))
  queue = result.catch(() => undefined)
  return result
}

function parseAttempts(text: string): Attempt[] {
  return text
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const [protocol, address, port, count] = line.split(' ')
      return { protocol: protocol as Attempt['protocol'], address: address!, port: Number(port), count: Number(count) }
    })
}

/** What `after` has beyond `before`: new destinations, or more packets to known ones. */
export function newAttempts(before: Attempt[], after: Attempt[]): Attempt[] {
  const key = (a: Attempt) => `${a.protocol} ${a.address} ${a.port}`
  const seen = new Map(before.map((a) => [key(a), a.count]))
  return after
    .map((a) => ({ ...a, count: a.count - (seen.get(key(a)) ?? 0) }))
    .filter((a) => a.count > 0)
}

export function formatAttempts(list: Attempt[]): string {
  return list
    .map((a) => `${a.address.includes(':') ? `[${a.address}]` : a.address}${a.protocol === 'ip' ? '' : `:${a.port}`}/${a.protocol} ×${a.count}`)
    .join(', ')
}
