// The Vitest environment `netns`. Vitest finds it by name (package
// vitest-environment-netns). The sandbox itself is made by the netns pool
// before this code runs; the environment checks that it really runs inside it.
import { sandboxFromEnv } from './sandbox.js'

/** The shape Vitest expects of an environment (its own type moved between Vitest 4 and 5). */
export interface NetnsEnvironment {
  name: 'netns'
  viteEnvironment: 'ssr'
  setup(): { teardown(): void }
}

export const MISSING_PLUGIN =
  "vitest-environment-netns: this file asks for the 'netns' environment, but the netns plugin is not enabled, so it would run " +
  "with the host's network and /tmp. Add the plugin once to your Vitest config:\n\n" +
  "  import { netns } from 'vitest-environment-netns/plugin'\n" +
  '  export default defineConfig({ plugins: [netns()], test: { /* ... */ } })\n'

export const environment: NetnsEnvironment = {
  name: 'netns',
  viteEnvironment: 'ssr',
  setup() {
    // onUnsupported: 'skip' on a machine without namespaces: the tests skip themselves.
    if (!process.env.VITEST_NETNS_SKIP && !sandboxFromEnv()) throw new Error(MISSING_PLUGIN)
    return { teardown() {} }
  },
}

export default environment
export type { NetnsSandbox } from './sandbox.js'
