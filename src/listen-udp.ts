// The worker's side of netns.listen({ protocol: 'udp' }): the test's
// `listener.socket` is a dgram socket of the sandbox's own loopback, and the
// host's socket stays in the pool (listen-udp-host.ts). For each host peer the
// pool numbers, a hidden relay socket here delivers the peer's datagrams to
// `listener.socket`; what `listener.socket` sends to that relay's address goes
// back to the pool as the answer to that peer. So a server written the usual
// way (`socket.send(reply, rinfo.port, rinfo.address)`) works unchanged, while
// nothing in the sandbox can address the host.
import { createSocket, type RemoteInfo, type Socket as UdpSocket } from 'node:dgram'
import { LISTEN_KEY, MAX_PEERS_PER_LISTENER, type ListenClose, type ListenHost, type ListenSend } from './listen-protocol.js'

/** Datagrams held for a socket still binding; beyond it they are dropped, as UDP may. */
const MAX_WAITING = 64
/** Datagrams waiting in a socket's send queue; beyond it they are dropped. */
const MAX_QUEUED_SENDS = 256
/** Bytes of answers on their way to the pool; beyond it they are dropped (a pool that does not read costs no memory). */
const MAX_UNSENT_BYTES = 4 * 1024 * 1024

let unsentBytes = 0

/** Sends `message` to the pool, unless the channel is gone or `bytes` more would be too much on their way. */
function toPool(message: ListenSend | ListenClose, bytes = 0): void {
  if (typeof process.send !== 'function' || !process.connected || unsentBytes + bytes > MAX_UNSENT_BYTES) return
  unsentBytes += bytes
  try {
    process.send(message, undefined, undefined, () => (unsentBytes -= bytes))
  } catch {
    unsentBytes -= bytes
  }
}

const socketType = (host: ListenHost) => (host === '::1' ? 'udp6' : 'udp4')

/** Binds a new datagram socket to `host`:`port` of this sandbox's loopback. */
function bound(host: ListenHost, port: number): Promise<UdpSocket> {
  return new Promise((resolve, reject) => {
    const socket = createSocket(socketType(host))
    socket.once('error', (error) => (socket.close(), reject(error)))
    socket.bind({ address: host, port, exclusive: true }, () => {
      socket.removeAllListeners('error')
      resolve(socket)
    })
  })
}

/** One host peer's stand-in in the sandbox: what `listener.socket` sees as rinfo. */
class PeerRelay {
  private socket: UdpSocket | undefined
  private waiting: Buffer[] = []
  private closed = false

  constructor(
    private readonly host: ListenHost,
    private readonly target: number,
    answer: (data: Buffer) => void,
  ) {
    bound(host, 0).then(
      (socket) => {
        if (this.closed) return void socket.close()
        this.socket = socket
        socket.unref() // the test's listener keeps the worker busy, not our relays
        socket.on('error', () => {})
        // Only what the listener sends here is an answer; anything else in the sandbox writing to us is ignored.
        socket.on('message', (data: Buffer, from: RemoteInfo) => {
          if (from.port === target && from.address === host) answer(data)
        })
        for (const data of this.waiting.splice(0)) this.pass(data)
      },
      () => this.close(),
    )
  }

  /** A datagram from the host peer, to the listener. */
  pass(data: Buffer): void {
    if (this.closed) return
    if (!this.socket) return void (this.waiting.length < MAX_WAITING && this.waiting.push(data))
    if (this.socket.getSendQueueCount() >= MAX_QUEUED_SENDS) return
    this.socket.send(data, this.target, this.host, () => {})
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    this.waiting = []
    this.socket?.close()
  }
}

export class SandboxUdpListener {
  private socket: UdpSocket | undefined
  private readonly relays = new Map<number, PeerRelay>()
  private waiting: { peer: number; data: Buffer }[] = []
  private closed = false

  /** @param hostPort the host socket's port: the sandbox's socket takes the same number when it is free here. */
  constructor(
    private readonly id: number,
    private readonly host: ListenHost,
    private readonly hostPort: number,
  ) {}

  /** Binds `listener.socket` in the sandbox; datagrams that came meanwhile are passed on. */
  async open(): Promise<UdpSocket> {
    const socket = await bound(this.host, this.hostPort).catch((error: NodeJS.ErrnoException) => {
      // Taken here, or privileged in this namespace: any free port does, the host's clients never see it.
      if (error.code === 'EADDRINUSE' || error.code === 'EACCES') return bound(this.host, 0)
      throw error
    })
    if (this.closed) {
      socket.close()
      throw new Error('vitest-environment-netns: netns.listen(): the listener was closed while it was being set up.')
    }
    this.socket = socket
    socket.once('close', () => this.close())
    for (const { peer, data } of this.waiting.splice(0)) this.deliver(peer, data)
    return socket
  }

  /** A datagram host peer `peer` sent, from the pool. */
  deliver(peer: number, data: Uint8Array): void {
    if (this.closed) return
    const bytes = Buffer.from(data.buffer, data.byteOffset, data.byteLength)
    if (!this.socket) return void (this.waiting.length < MAX_WAITING && this.waiting.push({ peer, data: bytes }))
    let relay = this.relays.get(peer)
    if (relay) {
      this.relays.delete(peer) // moved to the end: the peer heard from least recently goes first
    } else {
      relay = new PeerRelay(this.host, this.socket.address().port, (answer) => toPool({ [LISTEN_KEY]: 'send', id: this.id, peer, data: answer }, answer.byteLength))
      if (this.relays.size >= MAX_PEERS_PER_LISTENER) {
        const [oldest, relayOfOldest] = this.relays.entries().next().value as [number, PeerRelay]
        relayOfOldest.close()
        this.relays.delete(oldest)
      }
    }
    this.relays.set(peer, relay)
    relay.pass(bytes)
  }

  /** Closes the relays and `listener.socket`, and tells the pool to close the host socket. */
  close(): void {
    if (this.closed) return
    this.closed = true
    this.waiting = []
    for (const relay of this.relays.values()) relay.close()
    this.relays.clear()
    try {
      this.socket?.close()
    } catch {
      // closed by the test already (that is how we got here)
    }
    toPool({ [LISTEN_KEY]: 'close', id: this.id })
  }
}
