// Turns a failed namespace probe into one message that names the cause on
// this machine and the fix for that cause. The probe tells which step failed;
// the system files tell why.
import { existsSync, readFileSync } from 'node:fs'
import type { ProbeResult } from './launcher.js'

function readSysctl(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim()
  } catch {
    return undefined
  }
}

function seccompMode(): number {
  const status = readSysctl('/proc/self/status') ?? ''
  return Number(/^Seccomp:\s*(\d+)/m.exec(status)?.[1] ?? 0)
}

function inContainer(): string | undefined {
  if (existsSync('/.dockerenv')) return 'Docker'
  if (existsSync('/run/.containerenv')) return 'Podman'
  return undefined
}

/** A program's output as the end of a sentence: one full stop, whatever it ended with. */
function sentence(output: string): string {
  return `${output.trim().replace(/[\s.,;:]+$/, '')}.`
}

export interface Explanation {
  cause: string
  fix: string
}

/** Why the probe failed, and what to do about it on this machine. */
export function explainProbeFailure(result: ProbeResult): Explanation {
  const maxUserNs = readSysctl('/proc/sys/user/max_user_namespaces')
  const unprivClone = readSysctl('/proc/sys/kernel/unprivileged_userns_clone')
  const apparmor = readSysctl('/proc/sys/kernel/apparmor_restrict_unprivileged_userns')
  const container = inContainer()
  const root = process.getuid?.() === 0

  if (!existsSync('/proc/self/ns/user')) {
    return {
      cause: 'this kernel has no user namespaces (/proc/self/ns/user does not exist; built without CONFIG_USER_NS).',
      fix: 'use a kernel built with CONFIG_USER_NS=y (every mainstream distribution kernel is); WSL1 has none, WSL2 works.',
    }
  }
  if (result.step === 'unshare' || result.step === undefined) {
    if (maxUserNs === '0') {
      return {
        cause: 'user namespaces are disabled: /proc/sys/user/max_user_namespaces is 0.',
        fix: "run 'sudo sysctl -w user.max_user_namespaces=15000' (and add 'user.max_user_namespaces=15000' to /etc/sysctl.d/99-userns.conf to keep it).",
      }
    }
    if (unprivClone === '0' && !root) {
      return {
        cause: 'unprivileged user namespaces are disabled: /proc/sys/kernel/unprivileged_userns_clone is 0.',
        fix: "run 'sudo sysctl -w kernel.unprivileged_userns_clone=1' (and add it to /etc/sysctl.d/99-userns.conf to keep it).",
      }
    }
    if (result.errno === 'ENOSPC' || result.errno === 'EUSERS') {
      return {
        cause: `the limit on user namespaces is reached (max_user_namespaces=${maxUserNs ?? '?'}, or the nesting depth of 32).`,
        fix: "raise it: 'sudo sysctl -w user.max_user_namespaces=15000', or run Vitest less deeply nested in namespaces.",
      }
    }
    if (seccompMode() === 2) {
      return {
        cause: `a seccomp filter refuses unshare()${container ? ` (${container}'s default profile does this)` : ''}.`,
        fix:
          container === 'Podman'
            ? "run the container with '--security-opt seccomp=unconfined' (or a profile that allows unshare and mount)."
            : "run the container with '--security-opt seccomp=unconfined --security-opt apparmor=unconfined' (or a seccomp profile that allows unshare, mount and setns).",
      }
    }
  }
  if (apparmor === '1' && !root) {
    return {
      cause:
        'AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1, the default since Ubuntu 23.10): ' +
        `the namespace is created but has no capabilities, so '${result.step ?? 'setup'}' fails.`,
      fix:
        `allow it for Node with an AppArmor profile, e.g. /etc/apparmor.d/vitest-netns:\n` +
        `    abi <abi/4.0>,\n    include <tunables/global>\n    profile vitest-netns ${process.execPath} flags=(unconfined) {\n      userns,\n    }\n` +
        `  then 'sudo apparmor_parser -r /etc/apparmor.d/vitest-netns'. Or, for the whole machine: 'sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0'.`,
    }
  }
  if (result.step === 'exec' || /ENOENT|not found/.test(result.output)) {
    return {
      cause: `the launcher could not be started: ${sentence(result.output)}`,
      fix: 'reinstall the package (its launcher may have lost its executable bit, or sit on a noexec mount), or install util-linux and iproute2.',
    }
  }
  if (container && (result.step === 'mount' || result.step === 'tmp' || result.step === 'etc' || result.step === 'proc_sys' || result.step === 'sys')) {
    return {
      cause: `mounting inside the namespace is refused (${sentence(result.output).slice(0, -1)}); ${container} restricts mounts in nested namespaces.`,
      fix: "run the container with '--security-opt apparmor=unconfined --security-opt seccomp=unconfined'.",
    }
  }
  return {
    cause: `the namespace setup failed at step '${result.step ?? 'unknown'}': ${sentence(result.output || 'no output')}`,
    fix: 'check that unprivileged user namespaces work here (`unshare --user --map-current-user --net true`), then report this message.',
  }
}

/** The message for a machine where the probe failed; with onUnsupported: 'skip' already set, it does not suggest setting it. */
export function unsupportedMessage(result: ProbeResult, onUnsupported: 'error' | 'skip'): string {
  const { cause, fix } = explainProbeFailure(result)
  return (
    `vitest-environment-netns: cannot run netns test files on this machine: ${cause}\n` +
    `  Fix: ${fix}\n` +
    (onUnsupported === 'error' ? `  Or set netns({ onUnsupported: 'skip' }) to report netns files as skipped.\n` : '') +
    `  Run 'npx vitest-environment-netns doctor' for a full report.`
  )
}
