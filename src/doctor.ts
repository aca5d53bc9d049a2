// `vitest-environment-netns doctor`: checks every requirement by trying it, and prints
// the exact fix for this system for each problem.
import { constants, existsSync, openSync, closeSync, readFileSync } from 'node:fs'
import { DEFAULT_UPLINK_POOL, resolveOptions } from './config.js'
import { explainProbeFailure } from './diagnostics.js'
import { formatCidr, overlaps, parseCidr } from './ipv4.js'
import { hostNetworks } from './routes.js'
import { tryUplink } from './uplink-host.js'
import { findTool, planLauncher, probe, LauncherUnavailableError, type ProbeResult } from './launcher.js'
import { nativeLauncher, SHELL_COST } from './launcher-binary.js'

export type Status = 'ok' | 'missing' | 'blocked' | 'not reached' | 'info'

export interface Check {
  feature: string
  status: Status
  detail: string
  fix?: string
}

export interface DoctorReport {
  /** Whether netns test files can run here. */
  ok: boolean
  distro: string
  mode: 'root' | 'rootless'
  checks: Check[]
}

type Distro = 'debian' | 'fedora' | 'arch' | 'alpine' | 'unknown'

function detectDistro(): { family: Distro; name: string } {
  const release = (() => {
    try {
      return readFileSync('/etc/os-release', 'utf8')
    } catch {
      return ''
    }
  })()
  const field = (key: string) => new RegExp(`^${key}="?([^"\\n]*)"?`, 'm').exec(release)?.[1] ?? ''
  const ids = `${field('ID')} ${field('ID_LIKE')}`
  const name = field('PRETTY_NAME') || 'unknown Linux'
  if (/\b(debian|ubuntu)\b/.test(ids)) return { family: 'debian', name }
  if (/\b(fedora|rhel|centos)\b/.test(ids)) return { family: 'fedora', name }
  if (/\barch\b/.test(ids)) return { family: 'arch', name }
  if (/\balpine\b/.test(ids)) return { family: 'alpine', name }
  return { family: 'unknown', name }
}

const PACKAGES: Record<string, Record<Distro, string>> = {
  compiler: { debian: 'gcc libc6-dev', fedora: 'gcc glibc-static', arch: 'gcc', alpine: 'build-base linux-headers', unknown: 'a C compiler and the Linux headers' },
  tools: { debian: 'util-linux iproute2 bash', fedora: 'util-linux iproute bash', arch: 'util-linux iproute2 bash', alpine: 'util-linux iproute2 bash', unknown: 'util-linux, iproute2 and bash' },
  pasta: { debian: 'passt', fedora: 'passt', arch: 'passt', alpine: 'passt', unknown: 'passt (pasta)' },
}

function install(distro: Distro, what: keyof typeof PACKAGES): string {
  const pkgs = PACKAGES[what]![distro]
  switch (distro) {
    case 'debian': return `sudo apt-get install ${pkgs}`
    case 'fedora': return `sudo dnf install ${pkgs}`
    case 'arch': return `sudo pacman -S ${pkgs}`
    case 'alpine': return `sudo apk add ${pkgs}`
    default: return `install ${pkgs} with your package manager`
  }
}

function readValue(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim()
  } catch {
    return undefined
  }
}

// Setup steps of the launcher, in order, as the probe names them.
const STEPS: Array<{ feature: string; steps: string[] }> = [
  { feature: 'user, net, mount, pid namespaces', steps: ['start', 'descriptors', 'unshare'] },
  { feature: 'uid/gid maps', steps: ['setgroups', 'uid_map', 'gid_map'] },
  { feature: 'loopback up', steps: ['loopback'] },
  { feature: 'mounts (private /tmp, /etc files)', steps: ['mount', 'etc', 'tmp', 'keep', 'share', 'sys', 'proc_sys'] },
  { feature: 'process chain, dropping privileges', steps: ['keyring', 'fork', 'capabilities', 'exec'] },
]

function setupChecks(result: ProbeResult): Check[] {
  if (result.ok) return STEPS.map(({ feature }) => ({ feature, status: 'ok', detail: 'tried: works' }))
  const failedAt = STEPS.findIndex(({ steps }) => steps.includes(result.step ?? 'unshare'))
  const at = failedAt < 0 ? 0 : failedAt
  const { cause, fix } = explainProbeFailure(result)
  return STEPS.map(({ feature }, index): Check =>
    index < at
      ? { feature, status: 'ok', detail: 'tried: works' }
      : index === at
        ? { feature, status: 'blocked', detail: cause, fix }
        : { feature, status: 'not reached', detail: 'not tried: an earlier step failed' },
  )
}

function canOpen(path: string): boolean {
  try {
    closeSync(openSync(path, constants.O_RDWR))
    return true
  } catch {
    return false
  }
}

export async function runDoctor(): Promise<DoctorReport> {
  const { family, name } = detectDistro()
  const root = process.getuid?.() === 0
  const checks: Check[] = []

  const missingNs = ['user', 'net', 'mnt', 'pid'].filter((ns) => !existsSync(`/proc/self/ns/${ns}`))
  checks.push(
    missingNs.length
      ? { feature: 'kernel namespaces', status: 'missing', detail: `no ${missingNs.join(', ')} namespaces in this kernel`, fix: 'use a kernel with CONFIG_USER_NS, CONFIG_NET_NS, CONFIG_PID_NS (all mainstream distribution kernels; WSL2, not WSL1)' }
      : { feature: 'kernel namespaces', status: 'ok', detail: 'user, net, mnt, pid' },
  )
  const maxNs = readValue('/proc/sys/user/max_user_namespaces')
  checks.push(
    maxNs === '0'
      ? { feature: 'user.max_user_namespaces', status: 'blocked', detail: '0: user namespaces disabled', fix: "sudo sysctl -w user.max_user_namespaces=15000  (persist: echo 'user.max_user_namespaces=15000' | sudo tee /etc/sysctl.d/99-userns.conf)" }
      : { feature: 'user.max_user_namespaces', status: 'ok', detail: maxNs ?? 'not present' },
  )
  const clone = readValue('/proc/sys/kernel/unprivileged_userns_clone')
  if (clone !== undefined) {
    checks.push(
      clone === '0' && !root
        ? { feature: 'kernel.unprivileged_userns_clone', status: 'blocked', detail: '0: only root may create user namespaces', fix: "sudo sysctl -w kernel.unprivileged_userns_clone=1  (persist in /etc/sysctl.d/99-userns.conf)" }
        : { feature: 'kernel.unprivileged_userns_clone', status: 'ok', detail: clone },
    )
  }
  const apparmor = readValue('/proc/sys/kernel/apparmor_restrict_unprivileged_userns')
  if (apparmor !== undefined) {
    checks.push({ feature: 'kernel.apparmor_restrict_unprivileged_userns', status: apparmor === '1' && !root ? 'info' : 'ok', detail: apparmor === '1' ? '1: namespaces get no capabilities unless a profile allows them (see the setup rows)' : apparmor })
  }
  const seccomp = /^Seccomp:\s*(\d)/m.exec(readValue('/proc/self/status') ?? '')?.[1]
  checks.push({ feature: 'seccomp filter', status: seccomp === '2' ? 'info' : 'ok', detail: seccomp === '2' ? 'a filter is active (containers); the setup rows show whether it blocks namespaces' : 'none' })

  const options = resolveOptions({})
  let ok = false
  let recording = 'off'
  let sharing = 'off'
  let kind: 'native' | 'shell' | undefined
  const native = nativeLauncher()
  const compilerFix = `${install(family, 'compiler')}: the next run builds the launcher`
  try {
    const plan = planLauncher(options, [])
    kind = plan.kind
    checks.push(
      plan.kind === 'native'
        ? { feature: 'launcher', status: 'ok', detail: `native: ${plan.file} (${native.source === 'prebuilt' ? `prebuilt for linux-${process.arch}` : `built here from native/${native.why ? `: ${native.why}` : ''}`})` }
        : { feature: 'launcher', status: 'info', detail: `shell fallback: ${plan.why}. Cost: ${SHELL_COST}`, fix: compilerFix },
    )
    const result = await probe(plan)
    checks.push(...setupChecks(result))
    ok = result.ok
    recording = result.recording
    sharing = plan.kind === 'native' ? result.sharing : 'off'
  } catch (error) {
    if (!(error instanceof LauncherUnavailableError)) throw error
    checks.push({ feature: 'launcher', status: 'missing', detail: error.message, fix: `${compilerFix} (or ${install(family, 'tools')})` })
  }
  // With the shell launcher nothing is recorded whatever nf_tables can do: the launcher row says why.
  checks.push(
    recording === 'on'
      ? { feature: 'outside attempts recorded (nf_tables)', status: 'ok', detail: 'counted and rejected in the kernel' }
      : ok && kind === 'shell'
        ? { feature: 'outside attempts recorded (nf_tables)', status: 'not reached', detail: 'need the native launcher (see the launcher row)' }
        : ok
          ? { feature: 'outside attempts recorded (nf_tables)', status: 'missing', detail: recording, fix: 'load nf_tables and nft_reject_inet (sudo modprobe nft_reject_inet): a user namespace cannot load kernel modules' }
          : { feature: 'outside attempts recorded (nf_tables)', status: 'not reached', detail: 'not tried: the sandbox cannot be set up' },
  )
  // The connect filter (init answers the sandbox's connects): shared host ports, netns.listen(), the rootless
  // socket hand-over. Optional, so a note when missing.
  const FILTER = 'connect filter (seccomp user notification)'
  checks.push(
    sharing === 'on'
      ? { feature: FILTER, status: 'ok', detail: 'tried: works (hostPorts, shareHostPort, netns.listen(), rootless socket hand-over)' }
      : ok && sharing !== 'off'
        ? { feature: FILTER, status: 'info', detail: `${sharing}: hostPorts and shareHostPort fail, netns.listen() is refused, rootless uplinks relay everything`, fix: 'Linux 5.14 or later, with seccomp user notification allowed (not blocked by a container profile)' }
        : { feature: FILTER, status: 'not reached', detail: ok ? 'need the native launcher (see the launcher row)' : 'not tried: the sandbox cannot be set up' },
  )

  // Uplinks: tried for real when the sandbox works (a helper of its own, one throwaway sandbox).
  // They are optional, so problems here are notes, not failures.
  const uplinkOptions = { pool: DEFAULT_UPLINK_POOL, egressVia: 'auto' as const }
  if (!ok || kind !== 'native') {
    checks.push({ feature: 'uplinks', status: 'not reached', detail: ok ? 'need the native launcher (see the launcher row)' : 'not tried: the sandbox cannot be set up' })
  } else {
    const clash = hostNetworks().find((network) => overlaps(network, parseCidr(DEFAULT_UPLINK_POOL)!))
    const failure = await tryUplink(root ? 'root' : 'rootless', uplinkOptions)
    checks.push(
      failure
        ? { feature: 'uplinks', status: 'info', detail: `${failure.step} failed: ${failure.detail}`, fix: root ? 'uplinks need the veth driver and nf_tables NAT (modprobe veth nft_nat nft_masq)' : 'uplinks need nested user namespaces (user.max_user_namespaces above 2)' }
        : { feature: 'uplinks', status: 'ok', detail: root ? 'tried: veth into a sandbox, rules in the host namespace' : 'tried: hub namespace, veth into a sandbox' },
    )
    // Rootless, which way host services and forwards go: host sockets handed over, or the hub's relay (slower).
    if (!root && !failure) {
      checks.push(
        sharing === 'on'
          ? { feature: 'uplinks: host services and forwards', status: 'ok', detail: 'TCP: host sockets handed over by the connect filter (host-loopback speed); UDP and forwards asked after the server listens: relayed by the hub' }
          : { feature: 'uplinks: host services and forwards', status: 'info', detail: `relayed by the hub (about half host-loopback throughput): no socket hand-over, ${sharing.replace(/^unavailable: /, '')}`, fix: 'Linux 5.14 or later, with seccomp user notification allowed' },
      )
    }
    if (clash) checks.push({ feature: 'uplinks: default pool', status: 'info', detail: `${DEFAULT_UPLINK_POOL} overlaps ${formatCidr(clash)} here`, fix: "netns({ uplink: { pool: '10.201.0.0/16' } }) or another free block" })
  }
  if (!root) {
    // Past the machine (egress: 'nat' to the world) a rootless hub needs pasta or slirp4netns, and /dev/net/tun.
    const helper = findTool('pasta') ?? findTool('slirp4netns')
    const tun = existsSync('/dev/net/tun')
    const tunOk = canOpen('/dev/net/tun')
    checks.push(
      helper && tunOk
        ? { feature: 'uplinks: egress past this machine', status: 'ok', detail: `${helper}, /dev/net/tun usable` }
        : {
            feature: 'uplinks: egress past this machine',
            status: 'info',
            detail: !helper ? 'neither pasta nor slirp4netns on PATH' : tun ? '/dev/net/tun is not accessible to this user (mode 0600?)' : '/dev/net/tun is absent',
            fix: !helper ? install(family, 'pasta') : tun ? 'sudo chmod 0666 /dev/net/tun (the usual mode on desktop distributions)' : 'sudo modprobe tun',
          },
    )
  }
  return { ok, distro: name, mode: root ? 'root' : 'rootless', checks }
}

const MARK: Record<Status, string> = { ok: 'ok', missing: 'MISSING', blocked: 'BLOCKED', 'not reached': '-', info: 'note' }

/** What the ready-made fixes depend on: only advice for what is detected here is shown. */
interface Platform {
  /** From /etc/os-release. */
  ubuntu: boolean
  /** kernel.apparmor_restrict_unprivileged_userns is 1 (Ubuntu 23.10+ and derivatives). */
  apparmorRestricts: boolean
  /** A seccomp filter on this process (a container runtime's, usually): Podman's when /run/.containerenv exists. */
  seccomp: 'Docker' | 'Podman' | undefined
  /** GITHUB_ACTIONS=true: a GitHub Actions runner. */
  githubActions: boolean
}

function detectPlatform(): Platform {
  const ids = /^ID(?:_LIKE)?="?([^"\n]*)"?/gm
  const release = readValue('/etc/os-release') ?? ''
  const ubuntu = [...release.matchAll(ids)].some((match) => /\bubuntu\b/.test(match[1]!))
  const seccomp = /^Seccomp:\s*2/m.test(readValue('/proc/self/status') ?? '')
  return {
    ubuntu,
    apparmorRestricts: readValue('/proc/sys/kernel/apparmor_restrict_unprivileged_userns') === '1',
    seccomp: seccomp ? (existsSync('/run/.containerenv') ? 'Podman' : 'Docker') : undefined,
    githubActions: process.env.GITHUB_ACTIONS === 'true',
  }
}

/** Ready-made fixes for the environment detected here, shown when namespaces are blocked. */
function environmentFixes(platform: Platform): string[] {
  const fixes: string[] = []
  if (platform.apparmorRestricts || platform.ubuntu) {
    fixes.push(
      `${platform.ubuntu ? 'Ubuntu 23.10+/24.04' : 'This system'} (AppArmor): /etc/apparmor.d/vitest-netns, then \`sudo apparmor_parser -r /etc/apparmor.d/vitest-netns\`:`,
      `    abi <abi/4.0>,\n    include <tunables/global>\n    profile vitest-netns ${process.execPath} flags=(unconfined) {\n      userns,\n    }`,
    )
  }
  if (platform.seccomp === 'Podman') fixes.push('Podman: podman run --security-opt seccomp=unconfined …')
  else if (platform.seccomp) fixes.push('Docker: docker run --security-opt seccomp=unconfined --security-opt apparmor=unconfined …')
  if (platform.githubActions) {
    fixes.push('GitHub Actions (ubuntu-24.04), a step before the tests:', '    - run: sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0')
  }
  return fixes
}

export function formatReport(report: DoctorReport): string {
  const width = Math.max(...report.checks.map((c) => c.feature.length))
  const lines = [`vitest-environment-netns doctor: ${report.distro}, ${report.mode} mode, node ${process.version}`, '']
  for (const check of report.checks) lines.push(`  ${check.feature.padEnd(width)}  ${MARK[check.status].padEnd(7)}  ${check.detail}`)
  const problems = report.checks.filter((c) => c.fix)
  if (problems.length) {
    lines.push('', 'Fixes:')
    for (const c of problems) lines.push(`  ${c.feature}: ${c.fix}`)
  }
  const fixes = report.ok ? [] : environmentFixes(detectPlatform())
  if (fixes.length) lines.push('', ...fixes)
  lines.push('', report.ok ? 'netns test files can run here.' : 'netns test files cannot run here (see the fixes above).')
  return lines.join('\n')
}
