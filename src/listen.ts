// The worker's side of netns.listen(): asks the pool (listen-host.ts) for a
// socket on the host's loopback and gives the test a Listener. TCP: the
// listening socket, made outside and handed in, which any Node server can
// listen on. UDP: a socket of the sandbox's own loopback that the pool relays
// the host's peers to (listen-udp.ts). The sandbox stays offline: only the
// host's clients reach it. The fixture (test.ts) closes each test's listeners
// when the test ends, pass or fail.
import type { Socket as UdpSocket } from 'node:dgram'
import {
  isListenMessage,
  LISTEN_KEY,
  parseListenDelivery,
  parseListenReply,
  type ListenDelivery,
  type ListenHost,
  type ListenProtocol,
  type ListenRequest,
} from './listen-protocol.js'
import { SandboxUdpListener } from './listen-udp.js'

export interface ListenOptions {
  /** A fixed port on the host. Default: a free one. */
  port?: number
  /** Default `'tcp'`; `'udp'` gives a bound datagram socket (`listener.socket`) that the host's peers are relayed to. */
  protocol?: ListenProtocol
  /** Which of the host's loopback addresses. Default `'127.0.0.1'`. */
  host?: ListenHost
}

interface ListenerBase {
  /** Where the host's clients connect (the Vitest process, a global setup, `curl` on the machine). */
  readonly host: ListenHost
  readonly port: number
  /** Closes the socket and frees the host port (done for you when the test ends). */
  close(): void
}

export interface TcpListener extends ListenerBase {
  readonly protocol: 'tcp'
  /** The host socket's descriptor in this process. */
  readonly fd: number
  /** The listening handle, which `server.listen(listener)` of any net/http/https server takes over. */
  readonly _handle: unknown
  readonly socket?: undefined
}

export interface UdpListener extends ListenerBase {
  readonly protocol: 'udp'
  /** None: the host's UDP socket never enters the sandbox (it could send anywhere); use `socket`. */
  readonly fd: undefined
  readonly _handle?: undefined
  /**
   * A datagram socket bound on the sandbox's own loopback (`host`, the same
   * port number when free there), ready to receive. The host's peers reach it
   * through relays: `rinfo` names a relay in the sandbox, and what it sends
   * there goes back to that peer.
   */
  readonly socket: UdpSocket
}

export type Listener = TcpListener | UdpListener

interface RawHandle {
  fd: number
  onconnection?: (status: number, client: unknown) => void
  close(): void
}

const REPLY_TIMEOUT_MS = 10_000
const OPTION_KEYS = new Set(['port', 'protocol', 'host'])

interface Answer {
  message: Record<string, unknown>
  handle: unknown
  /** UDP: the relay, made as the reply came so that no datagram right behind it is lost. */
  relay?: SandboxUdpListener
}

let nextId = 1
const waiting = new Map<number, { protocol: ListenProtocol; resolve: (value: Answer) => void; timer: NodeJS.Timeout }>()
const open = new Map<number, TcpListener>()
const relays = new Map<number, SandboxUdpListener>()
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
    if (!entry) {
      ;(handle as RawHandle | undefined)?.close?.()
      // A listener nobody waits for any more (timed out): the pool may free its host socket.
      if (reply && reply.error === undefined && process.connected) process.send!({ [LISTEN_KEY]: 'close', id: reply.id })
      return
    }
    waiting.delete(reply.id)
    clearTimeout(entry.timer)
    let relay: SandboxUdpListener | undefined
    if (entry.protocol === 'udp' && reply.error === undefined) {
      relay = new SandboxUdpListener(reply.id, reply.host!, reply.port!)
      relays.set(reply.id, relay)
    }
    entry.resolve({ message, handle, relay })
  })
}

/** A datagram the pool relays, or a connection the pool's copy took before it let go. */
function deliver(id: number, delivery: ListenDelivery, handle: unknown) {
  if (delivery[LISTEN_KEY] === 'datagram') return relays.get(id)?.deliver(delivery.peer, delivery.data)
  const raw = open.get(id)?._handle as RawHandle | undefined
  // The server that took the listener accepts it as if it had; nobody listening yet: closed, as the kernel would refuse it.
  if (raw && typeof raw.onconnection === 'function') raw.onconnection(0, handle)
  else (handle as RawHandle | undefined)?.close?.()
}

/** A socket listening on the host's loopback, served from this sandbox. */
export function listen(options: ListenOptions & { protocol: 'udp' }): Promise<UdpListener>
export function listen(options?: ListenOptions & { protocol?: 'tcp' }): Promise<TcpListener>
export function listen(options?: ListenOptions): Promise<Listener>
export async function listen(options?: ListenOptions): Promise<Listener> {
  const wanted = checkOptions(options)
  if (typeof process.send !== 'function' || !process.connected) {
    throw new ListenUsageError('this worker has no channel to the netns pool; netns.listen() works in files the netns() plugin sandboxes.')
  }
  listenToPool()
  const id = nextId++
  const answer = new Promise<Answer>((resolve, reject) => {
    const timer = setTimeout(() => {
      waiting.delete(id)
      reject(new ListenUsageError(`the pool did not answer within ${REPLY_TIMEOUT_MS / 1000} s.`))
    }, REPLY_TIMEOUT_MS)
    timer.unref?.()
    waiting.set(id, { protocol: wanted.protocol, resolve, timer })
  })
  const request: ListenRequest = { [LISTEN_KEY]: 'listen', id, ...wanted }
  process.send(request)
  const { message, handle, relay } = await answer
  const reply = parseListenReply(message)!
  if (reply.error !== undefined) {
    ;(handle as RawHandle | undefined)?.close?.()
    throw new Error(reply.error)
  }
  if (relay) {
    // No host socket is ever taken in for UDP, should one come.
    ;(handle as RawHandle | undefined)?.close?.()
    return udpListener(id, reply.host!, reply.port!, relay)
  }
  if (!handle) throw new ListenUsageError('the pool answered without a socket.')
  const listener = tcpListener(id, reply.host!, reply.port!, handle as RawHandle)
  open.set(id, listener)
  return listener
}

function tcpListener(id: number, host: ListenHost, port: number, handle: RawHandle): TcpListener {
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

async function udpListener(id: number, host: ListenHost, port: number, relay: SandboxUdpListener): Promise<UdpListener> {
  let socket: UdpSocket
  try {
    socket = await relay.open()
  } catch (error) {
    relay.close()
    relays.delete(id)
    const reason = error as NodeJS.ErrnoException
    throw new ListenUsageError(`cannot bind UDP ${host} in the sandbox for the host's port ${port} (${reason.code ?? reason.message}).${host === '::1' ? " Is IPv6 off in the sandbox? Use host '127.0.0.1'." : ''}`)
  }
  socket.once('close', () => relays.delete(id))
  return {
    host,
    port,
    protocol: 'udp',
    fd: undefined,
    socket,
    close() {
      relays.delete(id)
      relay.close()
    },
  }
}
