// The Vite/Vitest plugin users add once: netns(options). When Vitest has
// resolved each project's config (CLI flags included), it checks once that
// namespaces can be created here, then routes the project's files through the
// netns pool.
import { fileURLToPath } from 'node:url'
import type { Plugin } from 'vite'
import type { TestProject } from 'vitest/node'
import { resolveOptions, type NetnsOptions, type ResolvedNetnsOptions } from './config.js'
import { unsupportedMessage } from './diagnostics.js'
import { LauncherUnavailableError, nodePrefix, packageRoot, pathsToKeep, planLauncher, probe, type LaunchPlan } from './launcher.js'
import { createNetnsPool, POOL_NAME, type ProjectPlan } from './pool.js'

export type { NetnsOptions } from './config.js'

const skipSetupFile = fileURLToPath(new URL('./skip-setup.js', import.meta.url))

// One probe per launcher command and Vitest process: projects and watch-mode restarts share it.
const probes = new Map<string, ReturnType<typeof probe>>()

function probeOnce(plan: LaunchPlan) {
  const key = [plan.file, ...plan.prefix].join('\0')
  let result = probes.get(key)
  if (!result) probes.set(key, (result = probe(plan)))
  return result
}

async function planProject(project: TestProject, options: ResolvedNetnsOptions): Promise<ProjectPlan> {
  const config = project.config as typeof project.config & { poolRunner?: ProjectPlan['userPoolRunner'] }
  const userPool = config.pool === POOL_NAME ? 'forks' : config.pool
  const userPoolRunner = config.poolRunner?.name === POOL_NAME ? undefined : config.poolRunner
  const mode = process.getuid?.() === 0 ? 'root' : 'rootless'
  const keep = pathsToKeep([config.root, project.vitest.config.root, process.cwd(), nodePrefix(), project.vitest.distPath, packageRoot])

  let failure: string
  try {
    const launch = planLauncher(options, keep)
    const result = await probeOnce(launch)
    if (result.ok) return { launch, userPool, userPoolRunner, mode }
    failure = unsupportedMessage(result)
  } catch (error) {
    if (!(error instanceof LauncherUnavailableError)) throw error
    failure = `vitest-environment-netns: cannot start namespaced workers: ${error.message}`
  }
  if (options.onUnsupported === 'error') throw new Error(failure)
  project.vitest.logger.warn(`${failure}\n  netns test files will be reported as skipped (onUnsupported: 'skip').`)
  config.setupFiles = [...config.setupFiles, skipSetupFile]
  return { skipReason: failure.split('\n')[0], userPool, userPoolRunner, mode }
}

/**
 * Runs test files whose environment is `netns` in their own user, network,
 * mount and PID namespaces. Add it once: `plugins: [netns()]`.
 */
export function netns(options?: NetnsOptions): Plugin {
  const resolved = resolveOptions(options)
  return {
    name: 'vitest-environment-netns',
    async configureVitest({ project }: { project: TestProject }) {
      const plan = await planProject(project, resolved)
      const pool = createNetnsPool(plan)
      const config = project.config as typeof project.config & { poolRunner?: unknown }
      config.pool = POOL_NAME
      config.poolRunner = pool
    },
  } as Plugin
}

export default netns
