// The messages of netns.listen() between a netns worker and the pool, on the
// worker's IPC channel (the one Vitest uses; these carry a key of their own,
// which Vitest's worker and main ignore). The worker asks for a listening
// socket on the host's loopback; the pool makes it in the host's network
// namespace and hands it over with the reply (SCM_RIGHTS, Node's handle
// passing). Each side parses what it receives: the worker runs the test's code.

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

/** Pool → worker: a connection or datagram the pool's copy took in the moment before it let go (comes with the socket or the data). */
export interface ListenDelivery {
  [LISTEN_KEY]: 'connection' | 'datagram'
  id: number
  data?: Uint8Array
  from?: { address: string; port: number; family: string }
}

const HOSTS: readonly string[] = ['127.0.0.1', '::1']
const REQUEST_KEYS = new Set([LISTEN_KEY, 'id', 'protocol', 'host', 'port'])

/** Whether `message` is a netns.listen() message at all (anything else goes on to Vitest). */
export function isListenMessage(message: unknown): message is Record<string, unknown> {
  return typeof message === 'object' && message !== null && !Array.isArray(message) && Object.prototype.hasOwnProperty.call(message, LISTEN_KEY)
}

const isId = (value: unknown): value is number => typeof value === 'number' && Number.isSafeInteger(value) && value >= 1

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
  const from = message.from as ListenDelivery['from'] | undefined
  if (!(message.data instanceof Uint8Array) || typeof from !== 'object' || from === null) return undefined
  if (typeof from.address !== 'string' || typeof from.port !== 'number' || typeof from.family !== 'string') return undefined
  return { [LISTEN_KEY]: op, id: message.id, data: message.data, from: { address: from.address, port: from.port, family: from.family } }
}
