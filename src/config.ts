// Plugin options: their types, defaults and validation. Bad input fails when
// the config is loaded, before any test runs, with a message naming the fix.
import { hostPathProblem, type HostPath } from './host-paths.js'
import { parseCidr } from './ipv4.js'

export interface UplinkPluginOptions {
  /** IPv4 block uplinks take their addresses from, one /30 each. Default `'10.200.0.0/16'`. */
  pool?: string
  /**
   * Rootless mode: how the hub namespace reaches past this machine for tests
   * with `egress: 'nat'`: `'auto'` (pasta, else slirp4netns), `'pasta'`,
   * `'slirp4netns'` or `'none'`. Forwards and host services never need it. Default `'auto'`.
   */
  egressVia?: 'auto' | 'pasta' | 'slirp4netns' | 'none'
}

export interface ResolvedUplinkOptions {
  pool: string
  egressVia: 'auto' | 'pasta' | 'slirp4netns' | 'none'
}

export interface NetnsOptions {
  /**
   * What to do when this machine cannot create the namespaces (user namespaces
   * disabled, AppArmor restriction, a container's seccomp profile):
   * `'error'` stops Vitest before any test runs; `'skip'` reports every test of
   * every netns file as skipped, with the reason. Default `'error'`.
   */
  onUnsupported?: 'error' | 'skip'
  /** Size limit of the private /tmp, as tmpfs takes it: bytes, or with k/m/g, or a % of RAM. Default: tmpfs's own (half of RAM). */
  tmpSize?: string | number
  /** Mount the private /tmp noexec. Default `false`. */
  tmpNoexec?: boolean
  /**
   * How workers are started: `'native'` (the small C launcher: shipped prebuilt for
   * linux-x64 and linux-arm64, else built from source at first use), `'shell'`
   * (util-linux `unshare`, `ip`, `mount`, `setpriv`: slower), or `'auto'` (native
   * when there is one). Default `'auto'`.
   */
  launcher?: 'auto' | 'native' | 'shell'
  /**
   * Count, in the kernel, every packet a netns file sends towards an outside
   * address, and report them at the end of the file. Outside TCP connects then
   * fail with ECONNREFUSED (reset) instead of ENETUNREACH. Default `true`.
   */
  recordAttempts?: boolean
  /** Fail every test that tried to reach an outside address (needs recordAttempts). Default `false`. */
  strict?: boolean
  /** Keep a netns file's private /tmp after it ends: `'never'`, `'on-failure'` or `'always'`. Default `'never'`. */
  keepTmp?: 'never' | 'on-failure' | 'always'
  /** Where kept /tmp trees go, one directory per run (the newest 5 are kept). Default `<root>/node_modules/.vitest-netns/kept-tmp`. */
  keepTmpDir?: string
  /**
   * Per-test uplinks (the `uplink` fixture): `true` (default), `false` to turn
   * them off (rootless runs then start no hub namespace), or options.
   */
  uplink?: boolean | UplinkPluginOptions
  /**
   * Which test files run in their own namespaces: `'netns'`, the files whose
   * environment is `netns` (Vitest's `node` environment in a sandbox), or
   * `'all'`, every file of the project, each in the environment Vitest chose
   * for it (config or docblock: `node`, `jsdom`, `happy-dom`, a custom one).
   * Default `'netns'`.
   */
  sandbox?: 'netns' | 'all'
  /**
   * TCP ports of the host's loopback that every netns sandbox reaches at the
   * same address: 127.0.0.1:port, localhost:port and [::1]:port inside are
   * the host's service. For ports known only at run time, call
   * shareHostPort() (vitest-environment-netns/host) in a global setup. Default `[]`.
   */
  hostPorts?: number[]
  /**
   * Host paths (typically under the host's /tmp) that appear at the same path
   * in every netns file, read-write unless `readOnly`. Paths a global setup
   * makes: `shareHostPath()` from 'vitest-environment-netns/host'. Default `[]`.
   */
  hostPaths?: Array<string | { path: string; readOnly?: boolean }>
  /**
   * When Vitest runs as root: `'file'` maps every uid and gid to itself and
   * keeps root's file capabilities (DAC_OVERRIDE, DAC_READ_SEARCH, CHOWN,
   * FOWNER, FSETID) in the sandbox, as in a plain run; `'none'` keeps uid 0
   * with no capability at all. No effect for other users. Default `'file'`.
   */
  rootCapabilities?: 'file' | 'none'
  /**
   * Whether tests may ask for sockets listening on the host's loopback with
   * `netns.listen()` (the pool makes them and hands them in). `false` refuses
   * every such request. Default `true`.
   */
  listen?: boolean
}

export interface ResolvedNetnsOptions {
  onUnsupported: 'error' | 'skip'
  tmpSize: string | undefined
  tmpNoexec: boolean
  launcher: 'auto' | 'native' | 'shell'
  recordAttempts: boolean
  strict: boolean
  keepTmp: 'never' | 'on-failure' | 'always'
  keepTmpDir: string | undefined
  uplink: ResolvedUplinkOptions | false
  sandbox: 'netns' | 'all'
  hostPorts: number[]
  hostPaths: HostPath[]
  rootCapabilities: 'file' | 'none'
  listen: boolean
}

export class NetnsConfigError extends Error {
  constructor(message: string) {
    super(`vitest-environment-netns: ${message}`)
    this.name = 'NetnsConfigError'
  }
}

const KEYS = ['onUnsupported', 'tmpSize', 'tmpNoexec', 'launcher', 'recordAttempts', 'strict', 'keepTmp', 'keepTmpDir', 'uplink', 'sandbox', 'hostPorts', 'hostPaths', 'rootCapabilities', 'listen'] as const
export const DEFAULT_UPLINK_POOL = '10.200.0.0/16'

function oneOf<T extends string>(key: string, value: unknown, allowed: readonly T[], fallback: T): T {
  if (value === undefined) return fallback
  if (typeof value === 'string' && (allowed as readonly string[]).includes(value)) return value as T
  throw new NetnsConfigError(
    `option '${key}' must be one of ${allowed.map((a) => `'${a}'`).join(', ')}; got ${JSON.stringify(value)}.`,
  )
}

function resolveTmpSize(value: unknown): string | undefined {
  if (value === undefined) return undefined
  if (typeof value === 'number' && Number.isInteger(value) && value > 0) return String(value)
  if (typeof value === 'string' && /^[1-9][0-9]*[kmgKMG%]?$/.test(value)) return value
  throw new NetnsConfigError(
    `option 'tmpSize' must be a positive whole number of bytes or a string such as '64m', '1g' or '10%'; got ${JSON.stringify(value)}.`,
  )
}

function resolveUplink(value: unknown): ResolvedUplinkOptions | false {
  if (value === false) return false
  if (value === undefined || value === true) value = {}
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new NetnsConfigError(`option 'uplink' must be true, false or an object such as { pool: '10.200.0.0/16' }; got ${JSON.stringify(value)}.`)
  }
  const record = value as Record<string, unknown>
  for (const key of Object.keys(record)) {
    if (key !== 'pool' && key !== 'egressVia') throw new NetnsConfigError(`unknown option 'uplink.${key}'. Known: pool, egressVia.`)
  }
  const pool = record.pool ?? DEFAULT_UPLINK_POOL
  const cidr = typeof pool === 'string' ? parseCidr(pool) : undefined
  if (!cidr || cidr.prefix > 30) {
    throw new NetnsConfigError(
      `option 'uplink.pool' must be an IPv4 block written as a.b.c.d/n with n at most 30 and no host bits set (e.g. '10.200.0.0/16'); got ${JSON.stringify(pool)}.`,
    )
  }
  return { pool: pool as string, egressVia: oneOf('uplink.egressVia', record.egressVia, ['auto', 'pasta', 'slirp4netns', 'none'], 'auto') }
}

/** Most ports the launcher takes (native/share.h SHARE_MAX_PORTS), hostPorts and shareHostPort together. */
export const MAX_SHARED_PORTS = 64

function resolveHostPorts(value: unknown): number[] {
  if (value === undefined) return []
  if (!Array.isArray(value)) {
    throw new NetnsConfigError(`option 'hostPorts' must be an array of TCP ports, e.g. hostPorts: [6379, 5432]; got ${JSON.stringify(value)}.`)
  }
  const seen = new Set<number>()
  for (const port of value) {
    if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) {
      throw new NetnsConfigError(`option 'hostPorts' takes whole numbers from 1 to 65535; got ${JSON.stringify(port)} in ${JSON.stringify(value)}.`)
    }
    if (seen.has(port)) throw new NetnsConfigError(`option 'hostPorts' lists port ${port} twice; list each port once.`)
    seen.add(port)
  }
  if (seen.size > MAX_SHARED_PORTS) throw new NetnsConfigError(`option 'hostPorts' lists ${seen.size} ports; at most ${MAX_SHARED_PORTS} can be shared.`)
  return [...seen]
}

function resolveHostPaths(value: unknown): HostPath[] {
  if (value === undefined) return []
  if (!Array.isArray(value)) {
    throw new NetnsConfigError(`option 'hostPaths' must be an array of paths or { path, readOnly } objects; got ${JSON.stringify(value)}.`)
  }
  return value.map((entry: unknown, index) => {
    const record = typeof entry === 'object' && entry !== null ? (entry as Record<string, unknown>) : undefined
    const path = record ? record.path : entry
    if (record) {
      for (const key of Object.keys(record)) {
        if (key !== 'path' && key !== 'readOnly') throw new NetnsConfigError(`unknown key 'hostPaths[${index}].${key}'. Known: path, readOnly.`)
      }
      if (record.readOnly !== undefined && typeof record.readOnly !== 'boolean') {
        throw new NetnsConfigError(`option 'hostPaths[${index}].readOnly' must be true or false; got ${JSON.stringify(record.readOnly)}.`)
      }
    }
    const problem = hostPathProblem(path)
    if (problem) throw new NetnsConfigError(`option 'hostPaths[${index}]' (${JSON.stringify(path)}) cannot be shared: ${problem}.`)
    return { path: path as string, readOnly: record?.readOnly === true }
  })
}

export function resolveOptions(options: unknown): ResolvedNetnsOptions {
  if (options === undefined || options === null) options = {}
  if (typeof options !== 'object' || Array.isArray(options)) {
    throw new NetnsConfigError(`netns() takes an options object, e.g. netns({ onUnsupported: 'skip' }); got ${JSON.stringify(options)}.`)
  }
  const record = options as Record<string, unknown>
  for (const key of Object.keys(record)) {
    if (!(KEYS as readonly string[]).includes(key)) {
      throw new NetnsConfigError(`unknown option '${key}'. Known options: ${KEYS.join(', ')} (see docs/configuration.md).`)
    }
  }
  for (const key of ['tmpNoexec', 'recordAttempts', 'strict', 'listen'] as const) {
    if (record[key] !== undefined && typeof record[key] !== 'boolean') {
      throw new NetnsConfigError(`option '${key}' must be true or false; got ${JSON.stringify(record[key])}.`)
    }
  }
  if (record.strict === true && record.recordAttempts === false) {
    throw new NetnsConfigError("option 'strict' needs attempt recording: remove 'recordAttempts: false' or 'strict: true'.")
  }
  if (record.keepTmpDir !== undefined && (typeof record.keepTmpDir !== 'string' || !record.keepTmpDir.startsWith('/') || record.keepTmpDir === '/tmp' || record.keepTmpDir.startsWith('/tmp/'))) {
    throw new NetnsConfigError(
      `option 'keepTmpDir' must be an absolute path outside /tmp (the sandbox's /tmp is its own); got ${JSON.stringify(record.keepTmpDir)}.`,
    )
  }
  return {
    onUnsupported: oneOf('onUnsupported', record.onUnsupported, ['error', 'skip'], 'error'),
    tmpSize: resolveTmpSize(record.tmpSize),
    tmpNoexec: record.tmpNoexec === true,
    launcher: oneOf('launcher', record.launcher, ['auto', 'native', 'shell'], 'auto'),
    recordAttempts: record.recordAttempts !== false,
    strict: record.strict === true,
    keepTmp: oneOf('keepTmp', record.keepTmp, ['never', 'on-failure', 'always'], 'never'),
    keepTmpDir: record.keepTmpDir as string | undefined,
    uplink: resolveUplink(record.uplink),
    sandbox: oneOf('sandbox', record.sandbox, ['netns', 'all'], 'netns'),
    hostPorts: resolveHostPorts(record.hostPorts),
    hostPaths: resolveHostPaths(record.hostPaths),
    rootCapabilities: oneOf('rootCapabilities', record.rootCapabilities, ['file', 'none'], 'file'),
    listen: record.listen !== false,
  }
}
