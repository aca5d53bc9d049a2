// Setup file the pool gives netns workers that need it: with `strict` it fails
// tests that tried to reach the outside, with `keepTmp` it keeps /tmp, on
// Node < 20.6 (no --import preload) it adds the network hints; where netns is
// unsupported and skipped, it skips every test.
import { join, relative } from 'node:path'
import { afterAll, afterEach, beforeEach } from 'vitest'
import { formatAttempts, newAttempts, readAttempts, type Attempt } from './attempts.js'
import { annotateNetworkError } from './hints.js'
import { keepTmpOf, type KeepTmp } from './keep-tmp.js'

interface TaskLike {
  type?: string
  name?: string
  tasks?: TaskLike[]
  result?: { state?: string; errors?: unknown[] }
  filepath?: string
  file?: { filepath?: string }
}

function failed(task: TaskLike): boolean {
  return task.result?.state === 'fail' || (task.tasks ?? []).some(failed)
}

// onUnsupported: 'skip' on a machine without namespaces: netns files run unsandboxed, every test skipped.
const skipReason = process.env.VITEST_NETNS_SKIP
if (skipReason) beforeEach(({ skip }) => skip(skipReason))

if (process.env.VITEST_NETNS === '1') {
  const strict = process.env.VITEST_NETNS_STRICT === '1'
  const keepTmp = (process.env.VITEST_NETNS_KEEP_TMP ?? 'never') as KeepTmp
  let beforeTest: Attempt[] = []

  if (strict) beforeEach(async () => void (beforeTest = (await readAttempts()) ?? []))

  // Vitest reads hook parameters like fixtures: they must be destructured.
  afterEach(async ({ task }) => {
    for (const error of task.result?.errors ?? []) annotateNetworkError(error as never, task.id)
    if (!strict) return
    const tried = newAttempts(beforeTest, (await readAttempts()) ?? [])
    if (tried.length) {
      throw new Error(
        `vitest-environment-netns (strict): this test tried to reach the outside: ${formatAttempts(tried)}. ` +
          'The attempts were blocked; mock them or remove them.',
      )
    }
  })

  const runDir = process.env.VITEST_NETNS_KEEP_TMP_DIR
  // eslint-disable-next-line no-empty-pattern
  if (runDir && keepTmp !== 'never') afterAll(({}, suite) => {
    const file = suite as unknown as TaskLike
    if (keepTmp === 'on-failure' && !failed(file)) return
    const root = process.env.VITEST_NETNS_ROOT ?? process.cwd()
    const absolute = file.filepath ?? file.file?.filepath ?? join(root, 'this file')
    const kept = keepTmpOf(absolute, root, runDir)
    console.warn(`vitest-environment-netns: kept /tmp of ${relative(root, absolute)} in ${kept}`)
  })
}
