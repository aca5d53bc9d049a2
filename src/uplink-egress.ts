// Rootless egress past this machine: the hub reaches the world through pasta
// (or slirp4netns), started at the first uplink that needs it. Forwards and
// host services never need it (the hub relays them itself).
import { spawn, type ChildProcess } from 'node:child_process'
import { closeSync, openSync, readFileSync } from 'node:fs'
import type { ResolvedUplinkOptions } from './config.js'
import { findTool } from './launcher.js'

/** Whether /dev/net/tun can be opened by this user: pasta and slirp4netns need it. */
export function tunProblem(): string | undefined {
  try {
    closeSync(openSync('/dev/net/tun', 'r+'))
    return undefined
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    if (code === 'ENOENT') return '/dev/net/tun does not exist (load the tun module: modprobe tun)'
    return `/dev/net/tun cannot be opened by this user (${code}; it is usually mode 0666: chmod 0666 /dev/net/tun as root, or add a udev rule)`
  }
}

export async function startEgressHelper(hubPid: number, via: ResolvedUplinkOptions['egressVia'], daemon: ChildProcess): Promise<string | undefined> {
  if (via === 'none') return "egress beyond this machine is off (uplink.egressVia: 'none')"
  const pasta = via !== 'slirp4netns' ? findTool('pasta') : undefined
  const slirp = via !== 'pasta' && !pasta ? findTool('slirp4netns') : undefined
  if (!pasta && !slirp) {
    const wanted = via === 'auto' ? 'pasta (Debian/Ubuntu: apt-get install passt) or slirp4netns' : via
    return `egress beyond this machine needs ${wanted}, which is not on PATH`
  }
  const tun = tunProblem()
  if (tun) return `egress beyond this machine needs ${pasta ? 'pasta' : 'slirp4netns'}, but ${tun}`
  // setpriv --pdeathsig: the helper dies with Vitest even on SIGKILL (neither tool does by itself).
  const wrapper = findTool('setpriv')
  const command = pasta
    ? [pasta, '-f', '-q', '--config-net', '-I', 'pasta0', '-t', 'none', '-u', 'none', '-T', 'none', '-U', 'none', '--no-map-gw', String(hubPid)]
    : [slirp!, '--configure', '--mtu=65520', '--disable-host-loopback', String(hubPid), 'pasta0']
  const argv = wrapper ? [wrapper, '--pdeathsig', 'KILL', ...command] : command
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
  // Neither the process nor its pipe may keep Vitest from exiting: it dies with it (pdeathsig).
  child.unref()
  ;(child.stderr as unknown as { unref?: () => void }).unref?.()
  daemon.once('exit', () => child.kill('SIGKILL'))
  process.once('exit', () => child.kill('SIGKILL'))
  // Ready when the hub has a default route through it (read from the hub's own /proc/PID/net/route).
  const deadline = Date.now() + 5000
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      return `egress beyond this machine is unavailable: ${pasta ? 'pasta' : 'slirp4netns'} exited: ${(stderr.trim().split('\n').filter((l) => !l.includes('syslog')).pop() ?? String(child.exitCode)).replace(/[\s.]+$/, '')}`
    }
    try {
      if (/^pasta0\s+00000000\s/m.test(readFileSync(`/proc/${hubPid}/net/route`, 'utf8'))) return undefined
    } catch {
      // hub gone: the attach that asked will fail on its own
    }
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
  child.kill('SIGKILL')
  return `egress beyond this machine is unavailable: ${pasta ? 'pasta' : 'slirp4netns'} did not come up within 5 s`
}
