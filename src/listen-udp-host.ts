// The pool's side of netns.listen({ protocol: 'udp' }): the host UDP socket,
// bound to 127.0.0.1 or ::1, stays here in Vitest's process and is never
// handed in (a datagram socket can send to any address, so one in the sandbox
// would reach every UDP service of the host). Each host peer that writes gets
// a number; its datagrams go to the worker with it, and the worker's answers
// go back only to a peer in this table, only from this socket.
import type { Socket as UdpSocket, RemoteInfo } from 'node:dgram'
import { MAX_PEERS_PER_LISTENER } from './listen-protocol.js'
/** Answers waiting in the host socket's send queue; beyond it they are dropped, as UDP may. */
const MAX_QUEUED_SENDS = 256

interface Peer {
  address: string
  port: number
}

export class HostUdpListener {
  /** By number; a Map keeps insertion order, and a peer heard from again is moved to the end. */
  private readonly peers = new Map<number, Peer>()
  private readonly numbers = new Map<string, number>()
  private nextPeer = 1
  private closed = false

  /** @param deliver passes a host peer's datagram on to the worker (it may drop it under backpressure). */
  constructor(
    private readonly socket: UdpSocket,
    deliver: (peer: number, data: Buffer) => void,
  ) {
    socket.on('message', (data: Buffer, from: RemoteInfo) => deliver(this.remember(from), data))
    // Bound already: a later error (a send refused by the kernel) must not take Vitest's process down.
    socket.on('error', () => {})
  }

  /** The number of the peer at `from`, new ones added (the oldest forgotten beyond the limit). */
  private remember(from: RemoteInfo): number {
    const key = `${from.address}|${from.port}`
    let peer = this.numbers.get(key)
    if (peer !== undefined) {
      const known = this.peers.get(peer)!
      this.peers.delete(peer)
      this.peers.set(peer, known)
      return peer
    }
    peer = this.nextPeer++
    this.peers.set(peer, { address: from.address, port: from.port })
    this.numbers.set(key, peer)
    if (this.peers.size > MAX_PEERS_PER_LISTENER) {
      const [oldest, { address, port }] = this.peers.entries().next().value as [number, Peer]
      this.peers.delete(oldest)
      this.numbers.delete(`${address}|${port}`)
    }
    return peer
  }

  /** Sends the worker's answer to `peer`: false (nothing sent) for a peer not in the table or a full queue. */
  sendTo(peer: number, data: Uint8Array): boolean {
    const to = this.peers.get(peer)
    if (this.closed || !to || this.socket.getSendQueueCount() >= MAX_QUEUED_SENDS) return false
    try {
      this.socket.send(data, to.port, to.address, () => {})
    } catch {
      return false // parsed before, so not expected; but nothing from a worker may throw in Vitest's process
    }
    return true
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    this.peers.clear()
    this.numbers.clear()
    this.socket.close()
  }
}
