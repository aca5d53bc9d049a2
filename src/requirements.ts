// The Node and Vitest versions this plugin runs with: Vitest 4.1 on Node 20
// or newer, Vitest 5 on Node 22.12 or newer. Vitest 5 starts on an older Node
// and then crashes in its reporter at the first failing test (`Map.groupBy is
// not a function`), so the plugin stops the run at start with the reason.

/** [major, minor] of a version string such as '5.1.1' or 'v20.20.2'; undefined if it does not parse. */
function majorMinor(version: string): [number, number] | undefined {
  const match = /^v?(\d+)\.(\d+)/.exec(version)
  return match ? [Number(match[1]), Number(match[2])] : undefined
}

/** Why this Vitest cannot run on this Node, or undefined when it can (or a version does not parse). */
export function unsupportedRuntime(vitestVersion: string, nodeVersion: string): string | undefined {
  const vitest = majorMinor(vitestVersion)
  const node = majorMinor(nodeVersion)
  if (!vitest || !node || vitest[0] < 5) return undefined
  if (node[0] > 22 || (node[0] === 22 && node[1] >= 12)) return undefined
  return (
    `Vitest ${vitestVersion} needs Node 22.12 or newer, and this is Node ${nodeVersion.replace(/^v/, '')}: ` +
    'a failing test would crash its reporter (Map.groupBy is not a function). ' +
    'Run Vitest with Node 22.12 or newer, or use Vitest 4.1 (it runs on Node 20).'
  )
}
