// How a namespaced worker is started: the native launcher (one exec, all
// setup done with syscalls) or, where it could not be built, a chain of
// util-linux tools doing the same steps. Both take the same inputs and both
// can be probed once up front, so a machine that cannot run them fails fast.
import { spawn } from 'node:child_process'
import { accessSync, constants, realpathSync } from 'node:fs'
import { dirname, join, sep } from 'node:path'
import type { ResolvedNetnsOptions } from './config.js'
import type { HostPath } from './host-paths.js'
import { COMPILER_FIX, nativeLauncher } from './launcher-binary.js'

export { packageRoot } from './launcher-binary.js'

export interface LaunchPlan {
  kind: 'native' | 'shell'
  /** Shell launcher with launcher: 'auto': why the native one is not used. */
  why?: string
  /** Spawn `file` with `[...prefix, program, ...args]`. */
  file: string
  prefix: string[]
  /** The child's descriptor on which the launcher answers attempt queries: spawn it as a pipe. */
  controlFd?: number
}

/** stdio index of the control socket: after stdin, stdout, stderr and Vitest's IPC channel. */
const CONTROL_FD = 4

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK)
    return true
  } catch {
    return false
  }
}

export function findTool(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':').concat(['/usr/sbin', '/sbin'])) {
    if (dir && isExecutable(join(dir, name))) return join(dir, name)
  }
  return undefined
}

/**
 * Paths under /tmp that a worker needs although its /tmp is private: the
 * project, the Node binary's install prefix, Vitest, this package. Reduced to
 * the outermost ones, since a bound directory brings its subtree.
 */
export function pathsToKeep(candidates: string[]): string[] {
  const real = new Set<string>()
  for (const path of candidates) {
    let p: string
    try {
      p = realpathSync(path)
    } catch {
      continue
    }
    if (p.startsWith('/tmp/') && p.length > 5) real.add(p)
  }
  const sorted = [...real].sort()
  return sorted.filter((p, i) => !sorted.slice(0, i).some((q) => p.startsWith(q + sep)))
}

/** The Node installation prefix (…/bin/node → …). */
export function nodePrefix(execPath = process.execPath): string {
  const bin = dirname(realpathSync(execPath))
  return bin.endsWith('/bin') ? dirname(bin) : bin
}

// Same steps as native/netns-launch.c, as a bash script run by unshare (bash:
// dash, Debian's sh, cannot name descriptors above 9 in a redirection).
// mount(8) insists on uid 0, so the outer user namespace maps us to root and a
// nested one maps back to the real uid just before the program starts.
// Differences: about ten process starts instead of one (hundreds of ms on
// small VMs), no attempt recording, the program is pid 1 of its namespace
// (every worker has the same pid), root keeps no capabilities whatever
// rootCapabilities says (unshare maps the whole id range only through
// newuidmap), and a fresh session keyring only with keyutils' keyctl (NETNS_KEYCTL).
const SHELL_SETUP = String.raw`set -e
# Descriptors: stdio, Vitest's IPC channel and the uplink channel; nothing else Vitest inherited.
keep=' 0 1 2 '
for name in NODE_CHANNEL_FD VITEST_NETNS_UPLINK_FD; do
  value=${'$'}{!name-}
  case $value in
    '') continue ;;
    0|[1-9]|[1-9][0-9]|[1-9][0-9][0-9]|[1-9][0-9][0-9][0-9]|[1-9][0-9][0-9][0-9][0-9]|[1-9][0-9][0-9][0-9][0-9][0-9]) ;;
    *) echo "netns-launch: descriptors: EINVAL: $name=$value is not a descriptor number (0 to 999999); unset it or pass a valid one" >&2; exit 125 ;;
  esac
  keep="$keep$value "
done
for f in /proc/$$/fd/*; do
  fd=${'$'}{f##*/}
  case $keep in *" $fd "*) ;; *) eval "exec $fd>&-" ;; esac
done
unset VITEST_NETNS_FD keep name value f fd
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro,nosuid,nodev,noexec /proc/sys
if [ -n "$NETNS_KEYCTL" ]; then "$NETNS_KEYCTL" new_session >/dev/null; fi
ip link set lo up
mount --make-rslave /
mount -t tmpfs -o size=512k,mode=0755,nosuid,nodev tmpfs /tmp
# The host's hosts file (whole lines, up to 256 KiB), plus a localhost line and one for the hostname only if missing.
copy_hosts() {
  local LC_ALL=C line name size=0 host has_localhost= has_host=
  host=$(hostname 2>/dev/null || true); host=${'$'}{host:-localhost}
  if [ -f /etc/hosts ] && [ -r /etc/hosts ]; then
    while IFS= read -r line || [ -n "$line" ]; do
      size=$((size + ${'$'}{#line} + 1))
      if [ "$size" -gt 262144 ]; then echo "# vitest-environment-netns: the rest of the host's file (over 262144 bytes) is left out"; break; fi
      printf '%s\n' "$line"
      set -f; set -- ${'$'}{line%%#*}; set +f
      if [ $# -gt 0 ]; then shift; fi
      for name; do
        if [ "${'$'}{name,,}" = localhost ]; then has_localhost=1; fi
        if [ "${'$'}{name,,}" = "${'$'}{host,,}" ]; then has_host=1; fi
      done
    done < /etc/hosts
  fi
  if [ -z "$has_localhost" ]; then printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n'; fi
  if [ -z "$has_host" ] && [ "${'$'}{host,,}" != localhost ]; then printf '127.0.1.1\t%s\n' "$host"; fi
}
copy_hosts > /tmp/hosts
printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' > /tmp/resolv.conf
printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\n' > /tmp/nsswitch.conf
for f in hosts resolv.conf nsswitch.conf; do
  if [ -f /etc/$f ]; then mount --bind /tmp/$f /etc/$f; mount -o remount,bind,ro /etc/$f; fi
done
umount -l /tmp
exec 9</tmp
mount -t tmpfs -o "mode=1777,nosuid,nodev$NETNS_TMP_OPTS" tmpfs /tmp
for rel in $NETNS_KEEP; do
  mkdir -p "/tmp/$rel"
  mount --no-canonicalize --rbind "/proc/self/fd/9/$rel" "/tmp/$rel"
done
while IFS=' ' read -r mode rel; do
  [ -n "$rel" ] || continue
  if [ -d "/proc/self/fd/9/$rel" ]; then mkdir -p "/tmp/$rel"; else case $rel in */*) mkdir -p "/tmp/${'$'}{rel%/*}" ;; esac; : > "/tmp/$rel"; fi
  mount --no-canonicalize --rbind "/proc/self/fd/9/$rel" "/tmp/$rel"
  if [ "$mode" = ro ]; then mount -o remount,bind,ro "/tmp/$rel"; fi
done <<< "$NETNS_SHARES"
exec 9<&-
unset NETNS_SHARES
if [ "$NETNS_UID" = 0 ]; then
  # uid 0 owns the host's kernel knobs outside /proc/sys: /sys (with its submounts), IRQ affinity, sysrq.
  mount --rbind /sys /sys
  while read -r _ _ _ _ point _; do
    case $point in /sys|/sys/*) mount -o remount,bind,ro "$point" ;; esac
  done < /proc/self/mountinfo
  for knob in /proc/irq /proc/bus /proc/sysrq-trigger; do
    if [ -e "$knob" ]; then mount --bind "$knob" "$knob"; mount -o remount,bind,ro "$knob"; fi
  done
fi
if [ "$NETNS_UID" = 0 ]; then
  exec setpriv --no-new-privs --inh-caps=-all --ambient-caps=-all --bounding-set=-all --securebits=+noroot,+noroot_locked -- "$@"
fi
exec unshare --user --map-user="$NETNS_UID" --map-group="$NETNS_GID" -- setpriv --no-new-privs -- "$@"
`

export class LauncherUnavailableError extends Error {}

export function planLauncher(options: ResolvedNetnsOptions, keep: string[]): LaunchPlan {
  const native = options.launcher === 'shell' ? undefined : nativeLauncher()
  if (options.launcher === 'native' && !native?.path) {
    throw new LauncherUnavailableError(`launcher: 'native' is set, but ${native?.why ?? 'there is no native launcher'}. To fix: ${COMPILER_FIX}, or set launcher: 'auto'.`)
  }
  if (native?.path) {
    const prefix: string[] = []
    for (const path of keep) prefix.push('--keep', path)
    if (options.tmpSize) prefix.push('--tmp-size', options.tmpSize)
    if (options.tmpNoexec) prefix.push('--noexec')
    // Root's file powers in the sandbox (the launcher ignores it for other users).
    if (options.rootCapabilities === 'file' && process.getuid?.() === 0) prefix.push('--file-caps')
    if (options.recordAttempts) prefix.push('--record', '--control-fd', String(CONTROL_FD))
    prefix.push('--')
    return { kind: 'native', file: native.path, prefix, controlFd: options.recordAttempts ? CONTROL_FD : undefined }
  }
  const why = native?.why
  const missing = ['unshare', 'ip', 'mount', 'setpriv', 'bash'].filter((tool) => !findTool(tool))
  if (missing.length) {
    throw new LauncherUnavailableError(
      `${why ?? "launcher: 'shell' is set"}, and the shell launcher needs ${missing.join(', ')}, which ${missing.length > 1 ? 'are' : 'is'} not on PATH. ` +
        `To fix: ${why ? `${COMPILER_FIX}, or ` : ''}install the tools (Debian/Ubuntu: apt-get install util-linux iproute2 bash).`,
    )
  }
  const uid = process.getuid?.() ?? 0
  const gid = process.getgid?.() ?? 0
  const tmpOpts = `${options.tmpSize ? `,size=${options.tmpSize}` : ''}${options.tmpNoexec ? ',noexec' : ''}`
  const keepRel = keep.map((p) => p.slice('/tmp/'.length))
  if (keepRel.some((p) => /\s/.test(p))) {
    throw new LauncherUnavailableError(`the shell launcher cannot keep paths with spaces under /tmp (${keep.join(', ')}); build the native launcher.`)
  }
  // Optional: without keyutils the sandbox keeps Vitest's session keyring (docs/security.md).
  const keyctl = findTool('keyctl') ?? ''
  if (/[\s'"]/.test(keyctl)) throw new LauncherUnavailableError(`the shell launcher cannot run keyctl from ${keyctl} (spaces or quotes in the path); build the native launcher.`)
  const env = `NETNS_UID=${uid} NETNS_GID=${gid} NETNS_TMP_OPTS='${tmpOpts}' NETNS_KEEP='${keepRel.join(' ')}' NETNS_KEYCTL='${keyctl}'`
  // setpriv ties unshare to Vitest (pdeathsig survives the exec); --kill-child ties the sandbox to unshare.
  return {
    kind: 'shell',
    why,
    file: findTool('setpriv')!,
    prefix: [
      '--pdeathsig', 'KILL', '--', findTool('unshare')!,
      '--user', '--map-root-user', '--net', '--mount', '--pid', '--uts', '--ipc', '--fork', '--kill-child', '--mount-proc',
      '--', findTool('bash')!, '-c', `${env}; export NETNS_UID NETNS_GID NETNS_TMP_OPTS NETNS_KEEP NETNS_KEYCTL\n${SHELL_SETUP}`, 'netns-launch',
    ],
  }
}

/**
 * The native launcher's arguments with what this worker's init supervises:
 * the ports shared now, the connect filter for handed-in host sockets
 * (`guard`, netns.listen()), and the hand-over channel's descriptor (rootless
 * uplink host services). Nothing asked: unchanged.
 */
export function withSupervision(
  command: { file: string; args: string[] },
  supervision: { ports: readonly number[]; guard: boolean; handoverFd?: number },
): { file: string; args: string[] } {
  const flags: string[] = []
  if (supervision.ports.length) flags.push('--share-ports', supervision.ports.join(','))
  if (supervision.guard) flags.push('--guard')
  if (supervision.handoverFd !== undefined) flags.push('--handover-fd', String(supervision.handoverFd))
  if (!flags.length) return command
  const at = command.args.indexOf('--')
  const args = [...command.args]
  args.splice(at < 0 ? 0 : at, 0, ...flags)
  return { file: command.file, args }
}

/**
 * The command that starts one worker. With rootless uplinks, inside the hub's
 * user namespace, so the sandbox's user namespace is the hub's child and the
 * hub may give it an uplink.
 */
export function launchCommand(plan: LaunchPlan, hubPid?: number, shares: readonly HostPath[] = []): { file: string; args: string[] } {
  if (shares.length) plan = withShares(plan, shares)
  if (!hubPid) return { file: plan.file, args: plan.prefix }
  if (plan.kind === 'native') return { file: plan.file, args: ['--hub', String(hubPid), ...plan.prefix] }
  const nsenter = findTool('nsenter')
  if (!nsenter) return { file: plan.file, args: plan.prefix } // the uplink request will say why it cannot attach
  return { file: nsenter, args: [`--user=/proc/${hubPid}/ns/user`, '--preserve-credentials', '--', plan.file, ...plan.prefix] }
}

/** The plan with host paths bound in (shareHostPath, hostPaths), paths under /tmp only, parents first. */
function withShares(plan: LaunchPlan, shares: readonly HostPath[]): LaunchPlan {
  if (plan.kind === 'native') {
    const flags = shares.flatMap((share) => [share.readOnly ? '--share-ro' : '--share', share.path])
    const end = plan.prefix.lastIndexOf('--')
    return { ...plan, prefix: [...plan.prefix.slice(0, end), ...flags, ...plan.prefix.slice(end)] }
  }
  // One "rw|ro <path under /tmp>" line each; paths hold no newline (host-paths.ts), quotes are escaped.
  const lines = shares.map((share) => `${share.readOnly ? 'ro' : 'rw'} ${share.path.slice('/tmp/'.length)}`).join('\n')
  const script = plan.prefix.indexOf('-c') + 1
  const prefix = [...plan.prefix]
  prefix[script] = `NETNS_SHARES='${lines.replace(/'/g, `'\\''`)}'\n${prefix[script]}`
  return { ...plan, prefix }
}

export interface ProbeResult {
  ok: boolean
  /** 'on', 'unavailable: <why>', or 'off' (not asked for, or the shell launcher). */
  recording: string
  /** Shared host ports: 'on', or 'unavailable: <why>' (native launcher); 'off' for the shell launcher. */
  sharing: string
  /** The launcher's own words when it failed (stderr). */
  output: string
  /** Setup step that failed, as the native launcher names it (`unshare`, `uid_map`, `loopback`, …). */
  step?: string
  errno?: string
}

/** Runs the whole setup once, exactly as a worker start would, but starts `true` instead of a worker. */
export function probe(plan: LaunchPlan): Promise<ProbeResult> {
  const control = plan.prefix.indexOf('--control-fd') // no control socket is passed to the probe
  const options = control < 0 ? plan.prefix.slice(0, -1) : [...plan.prefix.slice(0, control), ...plan.prefix.slice(control + 2, -1)]
  const args = plan.kind === 'native' ? ['--probe', ...options] : [...plan.prefix, 'true']
  return new Promise((resolvePromise) => {
    const child = spawn(plan.file, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    let output = ''
    let stdout = ''
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()))
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()))
    child.on('error', (error) => resolvePromise({ ok: false, recording: 'off', sharing: 'off', output: String(error), step: 'exec' }))
    child.on('close', (code) => {
      const recording = /^recording (.*)$/m.exec(stdout)?.[1] ?? 'off'
      const sharing = /^sharing (.*)$/m.exec(stdout)?.[1] ?? 'off'
      if (code === 0) return resolvePromise({ ok: true, recording, sharing, output })
      const match = /netns-launch: ([a-z_]+): (E[A-Z?]+):/.exec(output)
      resolvePromise({ ok: false, recording, sharing, output: output.trim(), step: match?.[1] ?? shellStep(output), errno: match?.[2] ?? shellErrno(output) })
    })
  })
}

function shellStep(output: string): string | undefined {
  if (/unshare failed|unshare: unshare/.test(output)) return 'unshare'
  if (/uid_map|setgroups/.test(output)) return 'uid_map'
  if (/gid_map/.test(output)) return 'gid_map'
  if (/RTNETLINK|Cannot find device "lo"/.test(output)) return 'loopback'
  if (/mount/.test(output)) return 'mount'
  return undefined
}

function shellErrno(output: string): string | undefined {
  if (/Operation not permitted/.test(output)) return 'EPERM'
  if (/Permission denied/.test(output)) return 'EACCES'
  if (/No space left/.test(output)) return 'ENOSPC'
  if (/Invalid argument/.test(output)) return 'EINVAL'
  return undefined
}
