// Outside-in: descriptors that whatever started Vitest left open do not reach
// a netns worker or the programs it starts. Vitest runs under a bash wrapper
// that opens 200 on the host's /tmp (a directory fd: a way around the private
// /tmp) and 201 on a pipe; a marker file in the host's /tmp says whether the
// sandbox can read through them. Both launchers.
import { spawnSync } from 'node:child_process'
import { rmSync, writeFileSync } from 'node:fs'
import { afterAll, describe, expect, test } from 'vitest'
import { resolveOptions } from '../src/config'
import { planLauncher } from '../src/launcher'
import { failures, runFixture } from './helpers'
import { expectFilePassed, unique } from './isolation-helpers'

const marker = unique('netns-fd-marker')
writeFileSync(`/tmp/${marker}`, 'host secret\n')
afterAll(() => rmSync(`/tmp/${marker}`, { force: true }))

// The pipe's reader stays open in bash and in Vitest; its writer (a subshell) exits at once.
const wrapper = [
  'bash',
  '-c',
  'exec 200</tmp 201< <(printf "pipe secret\\n") && export HOST_PIPE=$(readlink /proc/$$/fd/201) && exec "$@"',
  'netns-fd-wrapper',
]

describe.each([
  ['native', 'vitest.config.ts'],
  ['shell', 'vitest.shell.config.ts'],
])('%s launcher', (_launcher, config) => {
  test('Vitest started with a directory fd on /tmp and a pipe open: the worker and its children hold only the documented descriptors', async () => {
    const result = await runFixture('descriptors', { args: ['--config', config], wrapper, env: { FD_MARKER: marker } })
    expectFilePassed(result, 'descriptors.test.ts')
    expect(result.code, failures(result)).toBe(0)
    const { worker, child, documented } = result.records.descriptors
    expect(worker.map((f: { fd: number }) => f.fd)).not.toContain(200)
    expect(child.map((f: { fd: number }) => f.fd).every((fd: number) => documented.includes(fd)), JSON.stringify(child)).toBe(true)
  })
})

describe.each(['native', 'shell'] as const)('%s launcher, a descriptor variable that is not a number', (launcher) => {
  test.each(['NODE_CHANNEL_FD', 'VITEST_NETNS_UPLINK_FD'])('%s=3x: refused with a message naming it, nothing started', (name) => {
    const plan = planLauncher(resolveOptions({ launcher, recordAttempts: false }), [])
    const result = spawnSync(plan.file, [...plan.prefix, 'sh', '-c', 'echo started'], {
      encoding: 'utf8',
      env: { ...process.env, [name]: '3x' },
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 30_000,
    })
    expect(result.stdout).toBe('')
    expect(result.stderr).toContain(`netns-launch: descriptors: EINVAL: `)
    expect(result.stderr).toContain(`${name}=3x is not a descriptor number`)
    expect(result.status).toBe(125)
  })
})
