// Messages between a netns worker (src/uplink.ts) and the pool's UplinkSession
// (src/uplink-host.ts): one JSON object per line over a socket the worker
// inherits (fd in VITEST_NETNS_UPLINK_FD), each carrying the request's `seq`.

export interface EgressRule {
  /** Destination block, `a.b.c.d/n`; `0.0.0.0/0` is everything. */
  cidr: string
  protocol?: 'tcp' | 'udp'
  port?: number
}

export type UplinkRequest =
  | { op: 'attach'; egress?: EgressRule[] }
  | { op: 'detach' }
  | { op: 'forward'; port: number; hostPort?: number; protocol: 'tcp' | 'udp' }
  | { op: 'hostService'; port: number; as?: number; protocol: 'tcp' | 'udp' }

export interface UplinkReply {
  address?: string
  gateway?: string
  interface?: string
  host?: string
  port?: number
  /** Something the test should know but that does not fail it (egress past the machine unavailable). */
  notice?: string
}

export type UplinkEnvelope = { seq: number; error?: string } & UplinkReply
