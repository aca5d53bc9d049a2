// `test` with this package's fixtures. Use it in netns files:
//   import { test, expect } from 'vitest-environment-netns/test'
//   test('offline', ({ netns }) => { ... })
import { test as base } from 'vitest'
import { readAttempts, recordingState, type Attempt } from './attempts.js'
import { sandboxFromEnv, type NetnsSandbox } from './sandbox.js'

export interface NetnsFixture extends NetnsSandbox {
  /** 'on' when outside attempts are recorded in the kernel, else why not. */
  recording: string
  /** Outside destinations this file's processes tried so far (blocked), with packet counts. */
  attempts(): Promise<Attempt[]>
}

export interface NetnsFixtures {
  /** The sandbox this file runs in. */
  netns: NetnsFixture
}

export const test = base.extend<NetnsFixtures>({
  // eslint-disable-next-line no-empty-pattern
  netns: async ({}, use) => {
    const sandbox = sandboxFromEnv()
    if (!sandbox) {
      throw new Error(
        "vitest-environment-netns: the 'netns' fixture only works in files whose environment is 'netns' " +
          "(add '// @vitest-environment netns' at the top of the file, or test.environment: 'netns'), with the netns() plugin enabled.",
      )
    }
    await use({ ...sandbox, recording: recordingState(), attempts: async () => (await readAttempts()) ?? [] })
  },
})

export const it = test
export { describe, expect, vi, beforeAll, afterAll, beforeEach, afterEach } from 'vitest'
export type { NetnsSandbox } from './sandbox.js'
export type { Attempt } from './attempts.js'
