// The messages of netns.listen() between a netns worker and the pool, on the
// worker's IPC channel (the one Vitest uses; these carry a key of their own,
// which Vitest's worker and main ignore). The worker asks for a listener on
// the host's loopback; the pool makes it in the host's network namespace.
// TCP: the listening socket comes with the reply (SCM_RIGHTS, Node's handle
// passing). UDP: the pool keeps its socket and relays datagrams ('datagram'
// in, 'send' out, per host peer), since a datagram socket can send anywhere.
// Each side parses what it receives: the worker runs the test's code.

/** The key that marks a netns.listen() message; its value is the operation. */
export const LISTEN_KEY = '__vitest_netns_listen__'

export type ListenProtocol = 'tcp' | 'udp'
export type ListenHost = '127.0.0.1' | '::1'

/** Worker → pool: a listening socket, please. */
export interface ListenRequest {
  [LISTEN_KEY]: 'listen'
  id: number
  protocol: ListenProtocol
  host: ListenHost
  /** 0: any free port. */
  port: number
}

/** Pool → worker: the answer to request `id`; the socket comes with it. */
export interface ListenReply {
  [LISTEN_KEY]: 'listening'
  id: number
  host?: ListenHost
  port?: number
  error?: string
}

/** Pool → worker: a TCP connection the pool's copy accepted in the moment before it let go (comes with the socket). */
export interface ListenConnection {
  [LISTEN_KEY]: 'connection'
  id: number
}

/** Pool → worker: a datagram host peer number `peer` sent to UDP listener `id`. */
export interface ListenDatagram {
  [LISTEN_KEY]: 'datagram'
  id: number
  peer: number
  data: Uint8Array
}

export type ListenDelivery = ListenConnection | ListenDatagram

/** Worker → pool: send `data` to host peer `peer` (one that wrote to listener `id` before), from that listener's host socket. */
export interface ListenSend {
  [LISTEN_KEY]: 'send'
  id: number
  peer: number
  data: Uint8Array
}

/** Worker → pool: listener `id` is closed; the pool closes its host socket (UDP). */
export interface ListenClose {
  [LISTEN_KEY]: 'close'
  id: number
}

/** Host peers remembered per UDP listener (pool and worker alike); the one heard from least recently is forgotten first. */
export const MAX_PEERS_PER_LISTENER = 64

/** The largest UDP payload over IPv4 (65535 - 20 - 8): nothing larger is relayed. */
export const MAX_DATAGRAM = 65507
/** Over IPv6 loopback a datagram can be a little larger; what the worker accepts from the pool. */
const MAX_DELIVERED = 65535

const HOSTS: readonly string[] = ['127.0.0.1', '::1']
const REQUEST_KEYS = new Set([LISTEN_KEY, 'id', 'protocol', 'host', 'port'])

/** Whether `message` is a netns.listen() message at all (anything else goes on to Vitest). */
export function isListenMessage(message: unknown): message is Record<string, unknown> {
  return typeof message === 'object' && message !== null && !Array.isArray(message) && Object.prototype.hasOwnProperty.call(message, LISTEN_KEY)
}

const isId = (value: unknown): value is number => typeof value === 'number' && Number.isSafeInteger(value) && value >= 1

/** Whether `message` is a plain object with exactly the keys `keys`. */
function hasExactly(message: Record<string, unknown>, keys: readonly string[]): boolean {
  if (Object.getPrototypeOf(message) !== Object.prototype) return false
  const own = Object.keys(message)
  return own.length === keys.length && keys.every((key) => Object.prototype.hasOwnProperty.call(message, key))
}

/** Datagram bytes: a Uint8Array (a Buffer is one) of at most `max` bytes; other typed arrays are refused. */
const isDatagram = (value: unknown, max: number): value is Uint8Array =>
  value instanceof Uint8Array && value.byteLength <= max && (value.constructor === Uint8Array || Buffer.isBuffer(value))

/** A relay send in `message` (from the worker), or undefined: anything else is refused, never acted on. */
export function parseListenSend(message: Record<string, unknown>): ListenSend | undefined {
  if (message[LISTEN_KEY] !== 'send' || !hasExactly(message, [LISTEN_KEY, 'id', 'peer', 'data'])) return undefined
  const { id, peer, data } = message
  if (!isId(id) || !isId(peer) || !isDatagram(data, MAX_DATAGRAM)) return undefined
  return { [LISTEN_KEY]: 'send', id, peer, data }
}

/** A close in `message` (from the worker), or undefined. */
export function parseListenClose(message: Record<string, unknown>): ListenClose | undefined {
  if (message[LISTEN_KEY] !== 'close' || !hasExactly(message, [LISTEN_KEY, 'id']) || !isId(message.id)) return undefined
  return { [LISTEN_KEY]: 'close', id: message.id }
}

/** The request in `message` (from the worker), or what is wrong with it, naming the request id when it has one. */
export function parseListenRequest(message: Record<string, unknown>): { request: ListenRequest } | { error: string; id?: number } {
  const id = isId(message.id) ? message.id : undefined
  const fail = (error: string) => ({ error: `vitest-environment-netns: netns.listen(): ${error}`, id })
  if (Object.getPrototypeOf(message) !== Object.prototype) return fail('malformed request from the worker.')
  if (message[LISTEN_KEY] !== 'listen') return fail('unknown request from the worker.')
  for (const key of Object.keys(message)) if (!REQUEST_KEYS.has(key)) return fail(`unknown field '${key}' in the request.`)
  if (id === undefined) return fail('the request needs a whole-number id from 1.')
  const { protocol, host, port } = message
  if (protocol !== 'tcp' && protocol !== 'udp') return fail(`protocol must be 'tcp' or 'udp'; got ${JSON.stringify(protocol)}.`)
  if (typeof host !== 'string' || !HOSTS.includes(host)) return fail(`host must be '127.0.0.1' or '::1' (the host's loopback); got ${JSON.stringify(host)}.`)
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 0 || port > 65535) {
    return fail(`port must be a whole number from 1 to 65535 (or left out for any free port); got ${JSON.stringify(port)}.`)
  }
  return { request: { [LISTEN_KEY]: 'listen', id, protocol, host: host as ListenHost, port } }
}

/** The reply in `message` (from the pool), or undefined when it is not a well-formed one. */
export function parseListenReply(message: Record<string, unknown>): ListenReply | undefined {
  if (message[LISTEN_KEY] !== 'listening' || !isId(message.id)) return undefined
  if (typeof message.error === 'string') return { [LISTEN_KEY]: 'listening', id: message.id, error: message.error }
  if (typeof message.host !== 'string' || !HOSTS.includes(message.host)) return undefined
  if (typeof message.port !== 'number' || !Number.isInteger(message.port) || message.port < 1 || message.port > 65535) return undefined
  return { [LISTEN_KEY]: 'listening', id: message.id, host: message.host as ListenHost, port: message.port }
}

/** A delivery in `message` (from the pool), or undefined. */
export function parseListenDelivery(message: Record<string, unknown>): ListenDelivery | undefined {
  const op = message[LISTEN_KEY]
  if ((op !== 'connection' && op !== 'datagram') || !isId(message.id)) return undefined
  if (op === 'connection') return { [LISTEN_KEY]: op, id: message.id }
  if (!isId(message.peer) || !isDatagram(message.data, MAX_DELIVERED)) return undefined
  return { [LISTEN_KEY]: op, id: message.id, peer: message.peer, data: message.data }
}
