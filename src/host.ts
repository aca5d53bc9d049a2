// For code in the Vitest process (a global setup, say) that builds things the
// uplinks connect to, such as a fake upstream network: where the outer ends of
// the uplinks live, and how to run a command there with the right to change it.
//   import { uplinkHost, shareHostPort, shareHostPath } from 'vitest-environment-netns/host'
// shareHostPort: a TCP port of the host's loopback every sandbox reaches at the same address.
// shareHostPath: a host path (a global setup's fixture directory under /tmp) every sandbox sees at the same path.
import { registeredUplinkHost, type UplinkMode } from './uplink-host.js'

export { shareHostPath } from './host-paths.js'
export { shareHostPort } from './shared-ports.js'

export interface UplinkHost {
  /** `root`: the outer ends are in the host's network namespace. `rootless`: in the run's hub namespace. */
  mode: UplinkMode
  /** Rootless: the pid of the hub's helper (its namespaces are the hub's). Root: undefined. */
  hubPid: number | undefined
  /**
   * Argument prefix that runs a command in the uplinks' outer namespace with
   * the privileges to configure it: `[]` as root; `nsenter -t <hub> -U -n
   * --preserve-credentials --` rootless. E.g. `const [command, ...args] = [...enter, 'ip', '-br', 'link']`,
   * then `execFileSync(command, args)`.
   */
  enter: string[]
}

/** The run's uplink host, started if needed. Throws when the netns() plugin is not loaded or uplinks are off. */
export async function uplinkHost(): Promise<UplinkHost> {
  const start = registeredUplinkHost()
  if (!start) {
    throw new Error("vitest-environment-netns: no uplink host in this process: add the netns() plugin (with uplinks on) to the Vitest config.")
  }
  const daemon = await start()
  const rootless = daemon.mode === 'rootless'
  return {
    mode: daemon.mode,
    hubPid: rootless ? daemon.hubPid : undefined,
    enter: rootless ? ['nsenter', '-t', String(daemon.hubPid), '-U', '-n', '--preserve-credentials', '--'] : [],
  }
}
