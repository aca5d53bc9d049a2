// IPv4 addresses and CIDR blocks as plain numbers: the uplink pool, the
// egress allow-list, and the overlap check against the host's own networks.

export interface Cidr {
  /** Network address as an unsigned 32-bit number. */
  base: number
  prefix: number
}

export function parseAddress(text: string): number | undefined {
  const parts = text.split('.')
  if (parts.length !== 4) return undefined
  let value = 0
  for (const part of parts) {
    if (!/^(0|[1-9][0-9]{0,2})$/.test(part) || Number(part) > 255) return undefined
    value = value * 256 + Number(part)
  }
  return value
}

export function formatAddress(value: number): string {
  return [value >>> 24, (value >>> 16) & 255, (value >>> 8) & 255, value & 255].join('.')
}

export function mask(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0
}

/** `a.b.c.d/n` (or a bare address, as /32); undefined if it does not parse or has host bits set. */
export function parseCidr(text: string): Cidr | undefined {
  const [address, prefixText, ...rest] = text.split('/')
  if (rest.length || address === undefined) return undefined
  const base = parseAddress(address)
  const prefix = prefixText === undefined ? 32 : /^(0|[1-9][0-9]?)$/.test(prefixText) ? Number(prefixText) : NaN
  if (base === undefined || !(prefix >= 0 && prefix <= 32)) return undefined
  if ((base & ~mask(prefix)) >>> 0 !== 0) return undefined
  return { base, prefix }
}

export function formatCidr(cidr: Cidr): string {
  return `${formatAddress(cidr.base)}/${cidr.prefix}`
}

export function cidrSize(cidr: Cidr): number {
  return 2 ** (32 - cidr.prefix)
}

export function overlaps(a: Cidr, b: Cidr): boolean {
  const prefix = Math.min(a.prefix, b.prefix)
  return (a.base & mask(prefix)) >>> 0 === (b.base & mask(prefix)) >>> 0
}
