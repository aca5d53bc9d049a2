// Which IPv4 networks a namespace already routes, read from /proc (no `ip`
// process): the host's own, which an uplink pool must not overlap, and the
// hub's, which decide whether an egress destination needs pasta.
import { readFileSync } from 'node:fs'
import { networkInterfaces } from 'node:os'
import { formatAddress, mask, overlaps, parseCidr, type Cidr } from './ipv4.js'

/** The destinations of a namespace's IPv4 routes, default route left out; /proc/PID/net/route shows PID's namespace. */
function routesIn(path: string): Cidr[] {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch {
    return []
  }
  const routes: Cidr[] = []
  for (const line of text.split('\n').slice(1)) {
    // Destination and mask are hex in host byte order (little endian on every Linux target of Node).
    const [iface, destination, , , , , , maskHex] = line.trim().split(/\s+/)
    if (!destination || !maskHex || destination === '00000000' || isUplinkInterface(iface!)) continue
    const toNumber = (hex: string) => Buffer.from(hex, 'hex').readUInt32LE(0)
    const prefix = toNumber(maskHex).toString(2).replace(/0/g, '').length
    const cidr = parseCidr(`${formatAddress(toNumber(destination))}/${prefix}`)
    if (cidr) routes.push(cidr)
  }
  return routes
}

/** Outer ends of uplinks (of this run or another one running now): not the host's own networks. */
function isUplinkInterface(name: string): boolean {
  return /^vn\d+$/.test(name)
}

/** Networks this host already has (interface addresses and routes): an uplink pool must not overlap them. */
export function hostNetworks(): Cidr[] {
  const found: Cidr[] = []
  for (const [name, addresses] of Object.entries(networkInterfaces())) {
    if (isUplinkInterface(name)) continue
    for (const address of addresses ?? []) {
      if (address.family !== 'IPv4' || !address.cidr) continue
      const [ip, prefix] = address.cidr.split('/')
      const host = parseCidr(ip!)
      if (!host || ip!.startsWith('127.')) continue
      found.push({ base: (host.base & mask(Number(prefix))) >>> 0, prefix: Number(prefix) })
    }
  }
  found.push(...routesIn('/proc/net/route'))
  return found
}

/**
 * Whether the hub already routes all of `cidr` itself (a fake upstream a
 * global setup attached to it, say): then no helper past the machine is needed.
 */
export function routedInHub(hubPid: number, cidr: string): boolean {
  const wanted = parseCidr(cidr)
  if (!wanted || wanted.prefix === 0) return false
  return routesIn(`/proc/${hubPid}/net/route`).some((route) => route.prefix <= wanted.prefix && overlaps(route, wanted))
}
