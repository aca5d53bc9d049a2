// The pool's side of netns.listen(): for each request a netns worker sends, a
// listening TCP socket (or a bound UDP socket) on the host's loopback, made
// here in Vitest's process (the host's network namespace) and handed to the
// worker over its IPC channel. The worker serves the host's clients on it and
// still cannot open a connection of its own: namespaces do not reach a
// descriptor a process already holds. Our copy is closed once it is sent.
import type { ChildProcess } from 'node:child_process'
import { createSocket, type Socket as UdpSocket } from 'node:dgram'
import { createServer, type AddressInfo, type Server } from 'node:net'
import { LISTEN_KEY, parseListenRequest, type ListenDelivery, type ListenReply, type ListenRequest } from './listen-protocol.js'

/** Sockets one worker may ask for in its life: each holds a host port until the test ends. */
export const MAX_LISTENERS_PER_WORKER = 256

interface RawHandle {
  onconnection?: (status: number, client?: RawHandle) => void
  close(): void
}

export class HostListeners {
  private made = 0

  /** @param refusal why every request is refused (listen: false, or no connect filter here); undefined: served. */
  constructor(
    private readonly child: ChildProcess,
    private readonly refusal: string | undefined,
  ) {}

  /** Answers a netns.listen() message from the worker (never passed on to Vitest). */
  handle(message: Record<string, unknown>): void {
    const parsed = parseListenRequest(message)
    if ('error' in parsed) {
      // A request without an id cannot be answered: the worker never sends one.
      if (parsed.id !== undefined) this.send({ [LISTEN_KEY]: 'listening', id: parsed.id, error: parsed.error })
      return
    }
    const { request } = parsed
    if (this.refusal !== undefined) {
      return this.send({ [LISTEN_KEY]: 'listening', id: request.id, error: this.refusal })
    }
    if (this.made >= MAX_LISTENERS_PER_WORKER) {
      return this.send({ [LISTEN_KEY]: 'listening', id: request.id, error: `vitest-environment-netns: netns.listen(): a file may ask for at most ${MAX_LISTENERS_PER_WORKER} listeners.` })
    }
    this.made++
    if (request.protocol === 'tcp') this.listenTcp(request)
    else this.bindUdp(request)
  }

  private listenTcp(request: ListenRequest) {
    const server: Server = createServer()
    server.once('error', (error) => this.send({ [LISTEN_KEY]: 'listening', id: request.id, error: bindError(error, request) }))
    server.listen({ host: request.host, port: request.port, exclusive: true }, () => {
      const handle = (server as unknown as { _handle: RawHandle })._handle
      // A connection our copy accepts before it is closed belongs to the worker: it gets it as it is.
      handle.onconnection = (status, client) => {
        if (status === 0 && client) this.send({ [LISTEN_KEY]: 'connection', id: request.id }, client, () => client.close())
      }
      const { port } = server.address() as AddressInfo
      this.send({ [LISTEN_KEY]: 'listening', id: request.id, host: request.host, port }, handle, () => server.close())
    })
  }

  private bindUdp(request: ListenRequest) {
    const socket: UdpSocket = createSocket({ type: request.host === '::1' ? 'udp6' : 'udp4' })
    socket.once('error', (error) => {
      this.send({ [LISTEN_KEY]: 'listening', id: request.id, error: bindError(error, request) })
      socket.close()
    })
    // Datagrams our copy reads before it is closed are passed on, not lost.
    socket.on('message', (data, from) => {
      this.send({ [LISTEN_KEY]: 'datagram', id: request.id, data: new Uint8Array(data), from: { address: from.address, port: from.port, family: from.family } })
    })
    socket.bind({ address: request.host, port: request.port, exclusive: true }, () => {
      const { port } = socket.address()
      this.send({ [LISTEN_KEY]: 'listening', id: request.id, host: request.host, port }, socket, () => socket.close())
    })
  }

  /** Sends `message` (with `handle`), then runs `done`, which closes our copy; a gone worker just gets nothing. */
  private send(message: ListenReply | ListenDelivery, handle?: RawHandle | UdpSocket, done?: () => void) {
    if (!this.child.connected) return done?.()
    try {
      this.child.send(message, handle as never, () => done?.())
    } catch {
      done?.()
    }
  }
}

/** Why binding `request` failed, and what to do. */
function bindError(error: NodeJS.ErrnoException, request: ListenRequest): string {
  const where = `${request.protocol.toUpperCase()} port ${request.port} on the host's ${request.host}`
  const prefix = 'vitest-environment-netns: netns.listen():'
  switch (error.code) {
    case 'EADDRINUSE':
      return `${prefix} ${where} is in use: stop what listens there, choose another port, or leave port out for a free one.`
    case 'EACCES':
      return (
        `${prefix} ${where} is a privileged port, and Vitest's process (uid ${process.getuid?.()}) may not bind it: ` +
        `use a port from 1024 up, leave port out for a free one, or run as root (or lower sysctl net.ipv4.ip_unprivileged_port_start).`
      )
    case 'EADDRNOTAVAIL':
      return `${prefix} the host has no ${request.host} (${error.code}): is IPv6 off? Use host '127.0.0.1'.`
    default:
      return `${prefix} cannot bind ${where}: ${error.message}`
  }
}
