// What a test can learn about its own sandbox: namespace identities (as in
// /proc/self/ns, comparable with `readlink /proc/PID/ns/net` on the host) and
// the private /tmp.
import { readlinkSync } from 'node:fs'

export interface NetnsSandbox {
  /** `net:[4026532…]`: this file's network namespace. */
  net: string
  user: string
  mnt: string
  /** The worker's pid here is its relay's host pid (native launcher; the shell launcher's is 1); pid 1 is the launcher's init, whose exit ends every process left. */
  pid: string
  /** The private /tmp (a tmpfs of this file's own). */
  tmpdir: string
  /** `root` when Vitest runs as root, else `rootless`. */
  mode: 'root' | 'rootless'
  uid: number
  gid: number
}

/** The sandbox this worker runs in, or undefined when it was not started by the netns pool. */
export function sandboxFromEnv(): NetnsSandbox | undefined {
  if (process.env.VITEST_NETNS !== '1') return undefined
  const ns = (name: string) => readlinkSync(`/proc/self/ns/${name}`)
  return {
    net: ns('net'),
    user: ns('user'),
    mnt: ns('mnt'),
    pid: ns('pid'),
    tmpdir: '/tmp',
    mode: process.env.VITEST_NETNS_MODE === 'root' ? 'root' : 'rootless',
    uid: process.getuid?.() ?? -1,
    gid: process.getgid?.() ?? -1,
  }
}
