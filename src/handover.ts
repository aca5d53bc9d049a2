// The pool's end of the hand-over channel to one sandbox's init (rootless
// uplinks, native launcher): it names the test's uplink host services, so a
// TCP connect to the gateway's port gets a host socket connected to the host's
// service (native/share.c) instead of going through the hub's relay. One line
// each way per command; the launcher's init answers "ok" or "error <why>".
import type { Duplex } from 'node:stream'

/** The descriptor number the launcher is told (`--handover-fd`): after stdio, IPC, control and the uplink channel. */
export const HANDOVER_FD = 6

/** init answers at once; a channel that says nothing for this long is treated as gone (the relay still serves). */
const ANSWER_TIMEOUT_MS = 5_000
const MAX_ANSWER_LINE = 128

export class HandoverChannel {
  private buffered = ''
  private waiting: { resolve: (answer: string) => void; reject: (error: Error) => void; timer: NodeJS.Timeout }[] = []
  private closed: string | undefined

  constructor(private readonly channel: Duplex) {
    channel.setEncoding('utf8')
    channel.on('data', (chunk: string) => this.received(chunk))
    channel.on('error', () => this.close('the channel failed'))
    channel.on('close', () => this.close('the sandbox ended'))
  }

  /** From now on a TCP connect to gateway:port in the sandbox reaches 127.0.0.1:hostPort on the host. */
  service(gateway: string, port: number, hostPort: number): Promise<void> {
    if (!isAddress(gateway) || !isPort(port) || !isPort(hostPort)) {
      return Promise.reject(new Error(`internal error: bad host service ${gateway}:${port} -> ${hostPort}`))
    }
    return this.command(`service ${gateway} ${port} ${hostPort}`)
  }

  /**
   * A forward taken over at bind: init holds a host socket bound to 127.0.0.1:hostPort (0: any free port)
   * for the server that binds `port` (on the wildcard or `address`, the test's uplink address).
   * 'listening': a server listens on the port already, so the hub's relay must carry it.
   * Rejects with a HandoverRefused carrying init's errno name when it cannot hold the port.
   */
  async forward(port: number, hostPort: number, address: string): Promise<{ hostPort: number } | 'listening'> {
    if (!isAddress(address) || !isPort(port) || !(hostPort === 0 || isPort(hostPort))) {
      throw new Error(`internal error: bad forward ${address}:${port} <- ${hostPort}`)
    }
    const answer = await this.ask(`forward ${port} ${hostPort} ${address}`)
    if (answer === 'listening') return 'listening'
    const bound = /^ok ([1-9]\d{0,4})$/.exec(answer)
    if (bound && isPort(Number(bound[1]))) return { hostPort: Number(bound[1]) }
    const refused = /^error ([A-Z]+)(?: ([1-9]\d{0,4}))?$/.exec(answer)
    if (!refused) throw new Error(`the sandbox's init answered "${answer}" to a forward`)
    throw new HandoverRefused(refused[1]!, refused[2] === undefined ? undefined : Number(refused[2]))
  }

  /** The test's uplink is down: no host service is handed over any more. */
  clear(): Promise<void> {
    return this.command('clear')
  }

  private async command(line: string): Promise<void> {
    const text = await this.ask(line)
    if (text !== 'ok') throw new Error(`the sandbox's init refused "${line}": ${text.replace(/^error /, '')}`)
  }

  private ask(line: string): Promise<string> {
    if (this.closed) return Promise.reject(new Error(`hand-over channel closed: ${this.closed}`))
    const answer = new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => this.close(`no answer within ${ANSWER_TIMEOUT_MS} ms`), ANSWER_TIMEOUT_MS)
      this.waiting.push({ resolve, reject, timer })
    })
    this.channel.write(`${line}\n`)
    return answer
  }

  private received(chunk: string) {
    this.buffered += chunk
    let newline: number
    while ((newline = this.buffered.indexOf('\n')) >= 0) {
      const line = this.buffered.slice(0, newline)
      this.buffered = this.buffered.slice(newline + 1)
      const next = this.waiting.shift()
      if (!next) return this.close('an answer nobody asked for')
      clearTimeout(next.timer)
      next.resolve(line)
    }
    if (this.buffered.length > MAX_ANSWER_LINE) this.close('an over-long answer')
  }

  private close(why: string) {
    if (this.closed) return
    this.closed = why
    for (const { reject, timer } of this.waiting.splice(0)) {
      clearTimeout(timer)
      reject(new Error(`hand-over channel closed: ${why}`))
    }
    this.channel.destroy()
  }
}

/** init refused a forward: `errno` names why (EADDRINUSE, EACCES…). */
export class HandoverRefused extends Error {
  /** @param hostPort EBUSY: the host port the server listens on already. */
  constructor(
    readonly errno: string,
    readonly hostPort?: number,
  ) {
    super(`init refused the forward: ${errno}`)
  }
}

function isAddress(value: string): boolean {
  return /^\d{1,3}(\.\d{1,3}){3}$/.test(value)
}

function isPort(value: number): boolean {
  return Number.isInteger(value) && value >= 1 && value <= 65535
}
