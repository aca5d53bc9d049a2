// The pool's side of netns.listen(): for each request a netns worker sends, a
// socket on the host's loopback, made here in Vitest's process (the host's
// network namespace). TCP: the listening socket is handed to the worker over
// its IPC channel; the worker serves the host's clients on it (namespaces do
// not reach a descriptor a process already holds). Our copy is closed once it
// is sent. UDP: the socket stays here and its datagrams are relayed
// (listen-udp-host.ts), since a datagram socket could send anywhere.
import type { ChildProcess } from 'node:child_process'
import { createSocket, type Socket as UdpSocket } from 'node:dgram'
import { createServer, type AddressInfo, type Server } from 'node:net'
import {
  LISTEN_KEY,
  parseListenClose,
  parseListenRequest,
  parseListenSend,
  type ListenDelivery,
  type ListenReply,
  type ListenRequest,
} from './listen-protocol.js'
import { HostUdpListener } from './listen-udp-host.js'

/** Ports picked for a listener asked without one, before giving up (each pick is free unless another program took it). */
const LOCKED_PORT_TRIES = 16

/** A port of the usual ephemeral range (32768–60999), for a listener asked without one. */
function pickPort(): number {
  return 32768 + Math.floor(Math.random() * (60999 - 32768 + 1))
}

/** Sockets one worker may ask for in its life: each holds a host port until the test ends. */
export const MAX_LISTENERS_PER_WORKER = 256
/** Bytes of relayed datagrams on their way to the worker; beyond it, host datagrams are dropped (a worker that does not read costs no memory). */
const MAX_UNSENT_BYTES = 4 * 1024 * 1024

interface RawHandle {
  onconnection?: (status: number, client?: RawHandle) => void
  close(): void
}

export class HostListeners {
  private made = 0
  /** This worker's open UDP listeners, by request id. */
  private readonly udp = new Map<number, HostUdpListener>()
  private unsentBytes = 0
  private closed = false

  /**
   * @param refusal why requests are refused, or undefined: served. `all`: listen: false. `tcp`: no connect filter
   *   here, so no host socket may be handed in (UDP listeners are relayed, and need none).
   */
  constructor(
    private readonly child: ChildProcess,
    private readonly refusal: { all?: string; tcp?: string } = {},
  ) {}

  /** Answers a netns.listen() message from the worker (never passed on to Vitest). */
  handle(message: Record<string, unknown>): void {
    // Relay traffic: acted on only when well-formed and naming this worker's open listener and a known peer; else dropped.
    if (message[LISTEN_KEY] === 'send') {
      const send = parseListenSend(message)
      if (send) this.udp.get(send.id)?.sendTo(send.peer, send.data)
      return
    }
    if (message[LISTEN_KEY] === 'close') {
      const close = parseListenClose(message)
      if (close) {
        this.udp.get(close.id)?.close()
        this.udp.delete(close.id)
      }
      return
    }
    const parsed = parseListenRequest(message)
    if ('error' in parsed) {
      // A request without an id cannot be answered: the worker never sends one.
      if (parsed.id !== undefined) this.send({ [LISTEN_KEY]: 'listening', id: parsed.id, error: parsed.error })
      return
    }
    const { request } = parsed
    if (this.closed) return
    const refused = this.refusal.all ?? (request.protocol === 'tcp' ? this.refusal.tcp : undefined)
    if (refused !== undefined) {
      return this.send({ [LISTEN_KEY]: 'listening', id: request.id, error: refused })
    }
    if (this.made >= MAX_LISTENERS_PER_WORKER) {
      return this.send({ [LISTEN_KEY]: 'listening', id: request.id, error: `vitest-environment-netns: netns.listen(): a file may ask for at most ${MAX_LISTENERS_PER_WORKER} listeners.` })
    }
    this.made++
    if (request.protocol === 'tcp') this.listenTcp(request)
    else this.bindUdp(request)
  }

  /**
   * The listener is bound to an explicit port, even when the test asked for any: a port the kernel picks (port 0)
   * is given back when the socket returns to TCP_CLOSE (shutdown() of a listener), and the sandbox could then bind
   * this host socket anew, to any address of the host. An explicit port and address stay bound for good.
   */
  private listenTcp(request: ListenRequest, triesLeft = LOCKED_PORT_TRIES) {
    const port = request.port || pickPort()
    const server: Server = createServer()
    server.once('error', (error: NodeJS.ErrnoException) => {
      // A port picked here that something else holds: another pick. A port the test asked for: its error.
      if (!request.port && error.code === 'EADDRINUSE' && triesLeft > 1) return this.listenTcp(request, triesLeft - 1)
      this.send({ [LISTEN_KEY]: 'listening', id: request.id, error: bindError(error, request) })
    })
    server.listen({ host: request.host, port, exclusive: true }, () => {
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
    const onBindError = (error: NodeJS.ErrnoException) => {
      this.send({ [LISTEN_KEY]: 'listening', id: request.id, error: bindError(error, request) })
      socket.close()
    }
    socket.once('error', onBindError)
    socket.bind({ address: request.host, port: request.port, exclusive: true }, () => {
      socket.off('error', onBindError)
      // The worker went away while we bound: nobody to relay for.
      if (this.closed) return void socket.close()
      const listener = new HostUdpListener(socket, (peer, data) => this.deliver(request.id, peer, data))
      this.udp.set(request.id, listener)
      // No handle with the reply: the socket stays here.
      this.send({ [LISTEN_KEY]: 'listening', id: request.id, host: request.host, port: socket.address().port })
    })
  }

  /** A host peer's datagram to the worker, dropped when too much is still on its way (UDP may drop; memory stays bounded). */
  private deliver(id: number, peer: number, data: Buffer) {
    if (this.unsentBytes + data.byteLength > MAX_UNSENT_BYTES) return
    this.unsentBytes += data.byteLength
    this.send({ [LISTEN_KEY]: 'datagram', id, peer, data }, undefined, () => (this.unsentBytes -= data.byteLength))
  }

  /** The worker is gone: every host socket still relayed for it is closed, and later requests are ignored. */
  closeAll(): void {
    this.closed = true
    for (const listener of this.udp.values()) listener.close()
    this.udp.clear()
  }

  /** Sends `message` (with `handle`), then runs `done`, which closes our copy; a gone worker just gets nothing. */
  private send(message: ListenReply | ListenDelivery, handle?: RawHandle, done?: () => void) {
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
