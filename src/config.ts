// Plugin options: their types, defaults and validation. Bad input fails when
// the config is loaded, before any test runs, with a message naming the fix.

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
   * How workers are started: `'native'` (the small C launcher built at install),
   * `'shell'` (util-linux `unshare`, `ip`, `mount`, `setpriv`: slower), or
   * `'auto'` (native when it was built). Default `'auto'`.
   */
  launcher?: 'auto' | 'native' | 'shell'
}

export interface ResolvedNetnsOptions {
  onUnsupported: 'error' | 'skip'
  tmpSize: string | undefined
  tmpNoexec: boolean
  launcher: 'auto' | 'native' | 'shell'
}

export class NetnsConfigError extends Error {
  constructor(message: string) {
    super(`vitest-environment-netns: ${message}`)
    this.name = 'NetnsConfigError'
  }
}

const KEYS = ['onUnsupported', 'tmpSize', 'tmpNoexec', 'launcher'] as const

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
  if (record.tmpNoexec !== undefined && typeof record.tmpNoexec !== 'boolean') {
    throw new NetnsConfigError(`option 'tmpNoexec' must be true or false; got ${JSON.stringify(record.tmpNoexec)}.`)
  }
  return {
    onUnsupported: oneOf('onUnsupported', record.onUnsupported, ['error', 'skip'], 'error'),
    tmpSize: resolveTmpSize(record.tmpSize),
    tmpNoexec: record.tmpNoexec === true,
    launcher: oneOf('launcher', record.launcher, ['auto', 'native', 'shell'], 'auto'),
  }
}
