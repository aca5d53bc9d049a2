// The project's own tests. They run in Vitest's plain forks pool and start
// real Vitest runs on the example projects under fixtures/.
import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 60_000,
    // Each test starts whole Vitest runs: two at a time is what a 2-core machine takes.
    maxWorkers: 2,
  },
})
