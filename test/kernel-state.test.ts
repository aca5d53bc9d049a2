// Outside-in: kernel state a netns file does not share with the host. The
// host side makes what the sandbox must not see or change (a SysV shared
// memory segment and message queue, a key in the session keyring Vitest runs
// in) and checks afterwards that its hostname is what it was. Both launchers.
import { execFileSync, spawnSync } from 'node:child_process'
import { mkdirSync, readlinkSync, rmSync } from 'node:fs'
import { hostname } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { findTool } from '../src/launcher'
import { failures, outDir, repoRoot, runFixture } from './helpers'
import { expectFilePassed, unique } from './isolation-helpers'

const keyHelper = join(outDir, `session-key-${process.pid}`)
const ipc: { shm?: string; msg?: string } = {}
const hostnameBefore = hostname()

beforeAll(() => {
  mkdirSync(outDir, { recursive: true })
  execFileSync('cc', ['-O2', '-Wall', '-o', keyHelper, join(repoRoot, 'test', 'helpers', 'session-key.c')], { stdio: 'pipe' })
  ipc.shm = /id: (\d+)/.exec(execFileSync(findTool('ipcmk')!, ['-M', '4096'], { encoding: 'utf8' }))?.[1]
  ipc.msg = /id: (\d+)/.exec(execFileSync(findTool('ipcmk')!, ['-Q'], { encoding: 'utf8' }))?.[1]
})

afterAll(() => {
  rmSync(keyHelper, { force: true })
  if (ipc.shm) execFileSync(findTool('ipcrm')!, ['-m', ipc.shm])
  if (ipc.msg) execFileSync(findTool('ipcrm')!, ['-q', ipc.msg])
})

test('control: the key helper reads a key of its own session keyring', () => {
  const payload = unique('payload')
  const result = spawnSync(keyHelper, ['add', unique('netns-key'), payload, '--', 'sh', '-c', 'exec "$0" read "$NETNS_KEY_SERIAL"', keyHelper], {
    encoding: 'utf8',
  })
  expect(result.stdout.trim(), result.stderr).toBe(payload)
})

describe.each([
  ['native', 'vitest.config.ts'],
  ['shell', 'vitest.shell.config.ts'],
])('%s launcher', (launcher, config) => {
  test("hostname, sysctls, SysV IPC and the session keyring are the sandbox's own", async () => {
    expect(ipc.shm && ipc.msg).toBeTruthy()
    const payload = unique('payload')
    // Documented: without keyutils' keyctl the shell launcher keeps Vitest's session keyring.
    const keyExpect = launcher === 'shell' && !findTool('keyctl') ? 'readable' : 'unreadable'
    const result = await runFixture('kernel-state', {
      args: ['--config', config],
      wrapper: [keyHelper, 'add', unique('netns-key'), payload, '--'],
      env: {
        HOST_UTS: readlinkSync('/proc/self/ns/uts'),
        HOST_IPC: readlinkSync('/proc/self/ns/ipc'),
        HOST_SHM_ID: ipc.shm,
        HOST_MSG_ID: ipc.msg,
        SESSION_KEY_HELPER: keyHelper,
        KEY_PAYLOAD: payload,
        KEY_EXPECT: keyExpect,
      },
    })
    expect(hostname()).toBe(hostnameBefore)
    expectFilePassed(result, 'kernel-state.test.ts')
    expect(result.code, failures(result)).toBe(0)
    const facts = result.records['kernel-state']
    expect(['EROFS', 'EACCES', 'EPERM']).toContain(facts.hostnameWrite)
    expect(facts.shm).not.toContain(ipc.shm)
  })
})
