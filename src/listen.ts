// The worker's side of netns.listen(): asks the pool (listen-host.ts) for a
// socket listening on the host's loopback and gives the test a Listener that
// any Node server can listen on. The sandbox stays offline: the socket was
// made outside, and only the host's clients reach it. The fixture (test.ts)
// closes each test's listeners when the test ends, pass or fail.
import type { Socket as UdpSocket } from 'node:dgram'
import {
  isListenMessage,
  LISTEN_KEY,
  parseListenDelivery,
  parseListenReply,
  type ListenHost,
  type ListenProtocol,
  type ListenRequest,
} from './listen-protocol.js'

export interface ListenOptions {
  /** A fixed port on the host. Default: a free one. */
  port?: number
  /** Default `'tcp'`; `'udp'` gives a bound datagram socket (`listener.socket`). */
  protocol?: ListenProtocol
  /** Which of the host's loopback addresses. Default `'127.0.0.1'`. */
  host?: ListenHost
}

export interface Listener {
  /** Where the host's clients connect (the Vitest process, a global setup, `curl` on the machine). */
  readonly host: ListenHost
  readonly port: number
  readonly protocol: ListenProtocol
  /** The socket's descriptor in this process. */
  readonly fd: number
  /** TCP: the listening handle, which `server.listen(listener)` of any net/http/https server takes over. */
  readonly _handle?: unknown
  /** UDP: the bound datagram socket, ready to receive. */
  readonly socket?: UdpSocket
  /** Closes the socket and frees the host port (done for you when the test ends). */
  close(): void
}

interface RawHandle {
  fd: number
  onconnection?: (status: number, client: unknown) => void
  close(): void
}

const REPLY_TIMEOUT_MS = 10_000
const OPTION_KEYS = new Set(['port', 'protocol', 'host'])

let nextId = 1
const waiting = new Map<number, { resolve: (value: { message: Record<string, unknown>; handle: unknown }) => void; timer: NodeJS.Timeout }>()
const open = new Map<number, Listener>()
let listening = false

export class ListenUsageError extends Error {
  constructor(message: string) {
    super(`vitest-environment-netns: netns.listen(): ${message}`)
    this.name = 'ListenUsageError'
  }
}

function checkOptions(options: ListenOptions | undefined): Omit<ListenRequest, typeof LISTEN_KEY | 'id'> {
  if (options === undefined) return { protocol: 'tcp', host: '127.0.0.1', port: 0 }
  if (typeof options !== 'object' || options === null || Array.isArray(options)) throw new ListenUsageError(`options must be an object like { port: 8080 }; got ${JSON.stringify(options)}.`)
  for (const key of Object.keys(options)) if (!OPTION_KEYS.has(key)) throw new ListenUsageError(`unknown option '${key}'. Known: port, protocol, host.`)
  const { port, protocol = 'tcp', host = '127.0.0.1' } = options
  if (port !== undefined && (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535)) {
    throw new ListenUsageError(`port must be a whole number from 1 to 65535, or left out for a free one; got ${JSON.stringify(port)}.`)
  }
  if (protocol !== 'tcp' && protocol !== 'udp') throw new ListenUsageError(`protocol must be 'tcp' or 'udp'; got ${JSON.stringify(protocol)}.`)
  if (host !== '127.0.0.1' && host !== '::1') throw new ListenUsageError(`host must be '127.0.0.1' or '::1' (the host's loopback); got ${JSON.stringify(host)}.`)
  return { protocol, host, port: port ?? 0 }
}

/** One listener on the IPC channel for replies and deliveries; other messages are Vitest's. */
function listenToPool() {
  if (listening) return
  listening = true
  process.on('message', (message: unknown, handle: unknown) => {
    if (!isListenMessage(message)) return
    const delivery = parseListenDelivery(message)
    if (delivery) return deliver(delivery.id, delivery, handle)
    const reply = parseListenReply(message)
    const entry = reply && waiting.get(reply.id)
    if (!entry) return void (handle as RawHandle | undefined)?.close?.()
    waiting.delete(reply.id)
    clearTimeout(entry.timer)
    entry.resolve({ message, handle })
  })
}

/** A connection or datagram the pool's copy took before it let go. */
function deliver(id: number, delivery: ReturnType<typeof parseListenDelivery>, handle: unknown) {
  const listener = open.get(id)
  if (delivery?.[LISTEN_KEY] === 'datagram') {
    const { data, from } = delivery
    listener?.socket?.emit('message', Buffer.from(data!), { ...from!, size: data!.byteLength })
    return
  }
  const raw = listener?._handle as RawHandle | undefined
  // The server that took the listener accepts it as if it had; nobody listening yet: closed, as the kernel would refuse it.
  if (raw && typeof raw.onconnection === 'function') raw.onconnection(0, handle)
  else (handle as RawHandle | undefined)?.close?.()
}

/** A socket listening on the host's loopback, served from this sandbox. */
export async function listen(options?: ListenOptions): Promise<Listener> {
  const wanted = checkOptions(options)
  if (typeof process.send !== 'function' || !process.connected) {
    throw new ListenUsageError('this worker has no channel to the netns pool; netns.listen() works in files the netns() plugin sandboxes.')
  }
  listenToPool()
  const id = nextId++
  const answer = new Promise<{ message: Record<string, unknown>; handle: unknown }>((resolve, reject) => {
    const timer = setTimeout(() => {
      waiting.delete(id)
      reject(new ListenUsageError(`the pool did not answer within ${REPLY_TIMEOUT_MS / 1000} s.`))
    }, REPLY_TIMEOUT_MS)
    timer.unref?.()
    waiting.set(id, { resolve, timer })
  })
  const request: ListenRequest = { [LISTEN_KEY]: 'listen', id, ...wanted }
  process.send(request)
  const { message, handle } = await answer
  const reply = parseListenReply(message)!
  if (reply.error !== undefined) {
    ;(handle as RawHandle | undefined)?.close?.()
    throw new Error(reply.error)
  }
  if (!handle) throw new ListenUsageError('the pool answered without a socket.')
  const listener = wanted.protocol === 'tcp' ? tcpListener(id, reply.host!, reply.port!, handle as RawHandle) : udpListener(id, reply.host!, reply.port!, handle as UdpSocket)
  open.set(id, listener)
  return listener
}

function tcpListener(id: number, host: ListenHost, port: number, handle: RawHandle): Listener {
  let closed = false
  return {
    host,
    port,
    protocol: 'tcp',
    fd: handle.fd,
    _handle: handle,
    close() {
      if (closed) return
      closed = true
      open.delete(id)
      handle.close() // a server that took it over sees its handle closed; closing it again is a no-op
    },
  }
}

function udpListener(id: number, host: ListenHost, port: number, socket: UdpSocket): Listener {
  let closed = false
  socket.once('close', () => {
    closed = true
    open.delete(id)
  })
  const fd = udpDescriptor(socket)
  return {
    host,
    port,
    protocol: 'udp',
    fd: fd ?? -1,
    socket,
    close() {
      if (closed) return
      closed = true
      open.delete(id)
      socket.close()
    },
  }
}

/** A datagram socket's descriptor: Node keeps its handle under an internal symbol (`_handle` is deprecated). */
function udpDescriptor(socket: UdpSocket): number | undefined {
  const state = Object.getOwnPropertySymbols(socket).find((symbol) => symbol.description === 'state symbol')
  const handle = state && (socket as unknown as Record<symbol, { handle?: { fd?: unknown } }>)[state]?.handle
  return typeof handle?.fd === 'number' ? handle.fd : undefined
}
