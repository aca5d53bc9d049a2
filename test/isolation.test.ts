// Outside-in: what a netns test file can and cannot see or do. Every check
// runs a real Vitest on a fixture project (fixtures/<name>/) and looks at what
// the fixture's tests recorded (fixtures/shared/record.ts) and whether they
// passed. Network safety: traffic only ever goes to loopback or to
// 198.51.100.0/24 and 203.0.113.0/24, which never leave the sandbox
// (and the fixture refuses to try those outside of it).
import dns from 'node:dns'
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, test } from 'vitest'
import { failures, ownNetNamespace, repoRoot, runFixture, type RunOptions, type RunResult } from './helpers'
import {
  answerHandshakes,
  copyFixture,
  countingServer,
  expectFilePassed,
  freePort,
  outDir,
  readRecord,
  statusOf,
  unique,
  waitFor,
  watchFixture,
} from './isolation-helpers'

const hostNet = ownNetNamespace()
const isRoot = process.getuid!() === 0
const nothingLeft = { portInUse: false, tmpFiles: [], globals: [] }

/** Directories this file creates (under the host's /tmp and fixtures/.out); removed at the end. */
const created: string[] = []
afterAll(() => {
  for (const dir of created) rmSync(dir, { recursive: true, force: true })
})

/** Runs a fixture once, however many tests look at the result. */
function once(fixture: string, options: () => Promise<RunOptions> | RunOptions = () => ({})): () => Promise<RunResult> {
  let run: Promise<RunResult> | undefined
  return () => (run ??= Promise.resolve(options()).then((o) => runFixture(fixture, o)))
}

/** Env for fixtures/shared/leftovers.ts: a port free on the host, and a name no other run uses. */
async function leftoverEnv(): Promise<Record<string, string>> {
  return { LEAK_PORT: String(await freePort()), LEAK_ID: unique('leak') }
}

/** The network fixture, run once for requirements 2 and 3. */
const network = once('network')

/** Whether the host's /tmp is mounted noexec (then no program can run from it). */
function hostTmpNoexec(): boolean {
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8').trim().split('\n').map((line) => line.split(' '))
  const tmp = mounts.filter((f) => f[4] === '/tmp').at(-1) ?? mounts.filter((f) => f[4] === '/').at(-1)
  return tmp?.[5]?.split(',').includes('noexec') ?? false
}

function expectRunPassed(result: RunResult): void {
  expect(result.code, failures(result)).toBe(0)
  expect(result.report?.numFailedTests, failures(result)).toBe(0)
}

describe('1. each netns file has a network namespace of its own', () => {
  test("default config, three files at the same time: three live namespaces, none of them the host's", async () => {
    const result = await runFixture('basic')
    expectRunPassed(result)
    const nets = ['file1', 'file2', 'file3'].map((file) => result.records[file]?.netns.net)
    expect(nets.every((net) => /^net:\[\d+\]$/.test(net)), JSON.stringify(nets)).toBe(true)
    // The files waited for each other, so these namespaces existed together: distinct numbers are distinct namespaces.
    expect(new Set(nets).size).toBe(3)
    expect(nets).not.toContain(hostNet)
  })

  test('default config, files one after another: no file sees the server, /tmp file or global the file before it left', async () => {
    const result = await runFixture('leaks', { env: await leftoverEnv() })
    expectRunPassed(result)
    for (const file of ['first', 'second', 'third']) {
      expectFilePassed(result, `${file}.test.ts`)
      expect(result.records[file]).toMatchObject({ sandboxed: true, seen: nothingLeft })
      expect(result.records[file].net).not.toBe(hostNet)
    }
  })

  // The control below shows that this config does hand all files to one worker: without netns they share it.
  test('isolate: false with maxWorkers: 1 (one worker task for all files): still a fresh process and namespaces per file', async () => {
    const result = await runFixture('leaks', { args: ['--config', 'vitest.shared-worker.config.ts'], env: await leftoverEnv() })
    expectRunPassed(result)
    for (const file of ['first', 'second', 'third']) {
      expectFilePassed(result, `${file}.test.ts`)
      expect(result.records[file]).toMatchObject({ sandboxed: true, seen: nothingLeft })
      expect(result.records[file].net).not.toBe(hostNet)
    }
  })

  test('control: the same files in one plain worker (environment node, isolate: false) do see what the earlier ones left', async () => {
    // Shows that the leftover checks above can fail. These files write to the host's /tmp: clean up after them.
    const env = await leftoverEnv()
    try {
      const result = await runFixture('leaks', { args: ['--config', 'vitest.shared-worker.config.ts', '--environment', 'node'], env })
      expect(result.code, failures(result)).not.toBe(0)
      const order = ['first', 'second', 'third'].sort((a, b) => result.records[a].seen.globals.length - result.records[b].seen.globals.length)
      const [, second, third] = order.map((file) => result.records[file])
      expect(order.map((file) => result.records[file].net)).toEqual([hostNet, hostNet, hostNet])
      expect(second.seen).toEqual({ portInUse: true, tmpFiles: [expect.any(String)], globals: [order[0]] })
      expect(third.seen).toMatchObject({ portInUse: true, globals: [order[0], order[1]] })
      expect(third.seen.tmpFiles).toHaveLength(2)
    } finally {
      for (const file of ['first', 'second', 'third']) rmSync(`/tmp/netns-leftover-${env.LEAK_ID}-${file}`, { force: true })
    }
  })

  test("pool: 'threads': netns files run sandboxed, the node file in a worker thread in the host's namespace", async () => {
    const result = await runFixture('threads')
    expectRunPassed(result)
    const { 'netns-a': a, 'netns-b': b, host } = result.records
    expect([a.sandboxed, b.sandboxed, host.sandboxed]).toEqual([true, true, false])
    // All three files waited for each other: a and b are distinct live namespaces.
    expect(new Set([a.net, b.net, hostNet]).size).toBe(3)
    expect(a.interfaces).toEqual(['lo'])
    expect(host.net).toBe(hostNet)
    expect(host.isMainThread).toBe(false)
  })

  test('a docblock asking for netns in one file of a node project: only that file is sandboxed', async () => {
    const result = await runFixture('docblock')
    expectRunPassed(result)
    const { sandboxed, plain } = result.records
    expect(sandboxed).toMatchObject({ sandboxed: true, interfaces: ['lo'] })
    expect(sandboxed.net).not.toBe(hostNet)
    expect(plain).toMatchObject({ sandboxed: false, net: hostNet })
  })

  test('watch mode: after an edit, the re-run starts in a fresh namespace', async () => {
    const { dir, root } = copyFixture('watch', outDir, 'watch')
    created.push(dir)
    const recordDir = join(dir, 'records')
    mkdirSync(recordDir)
    const watcher = watchFixture(root, { NETNS_RECORD_DIR: recordDir, ...(await leftoverEnv()) })
    // Vitest prints one of these after each run: "PASS  Waiting for file changes..." or "FAIL  Tests failed. Watching for file changes...".
    const endedRuns = () => watcher.output().match(/(Waiting|Watching) for file changes/g)?.length ?? 0
    const passedRuns = () => watcher.output().match(/PASS {2}Waiting for file changes/g)?.length ?? 0
    try {
      const run1 = await waitFor('the first run', () => readRecord(recordDir, 'run1'), 60_000)
      await waitFor('the end of the first run', () => (endedRuns() >= 1 ? true : undefined), 60_000)
      const file = join(root, 'test', 'rerun.test.ts')
      writeFileSync(file, readFileSync(file, 'utf8').replace('const RUN = 1', 'const RUN = 2'))
      const run2 = await waitFor('the re-run after the edit', () => readRecord(recordDir, 'run2'), 60_000)
      await waitFor('the end of the re-run', () => (endedRuns() >= 2 ? true : undefined), 60_000)
      expect(passedRuns(), watcher.output()).toBe(2)
      expect(watcher.child.exitCode, watcher.output()).toBeNull() // still watching: it was a re-run, not a new Vitest
      expect(run1).toMatchObject({ sandboxed: true, seen: nothingLeft })
      // Run 1 left a listening server, a /tmp file and a global; run 2 sees none of them.
      expect(run2).toMatchObject({ sandboxed: true, seen: nothingLeft })
      expect([run1.net, run2.net]).not.toContain(hostNet)
    } finally {
      await watcher.stop()
    }
  })
})

describe('2. only loopback: lo, up, with 127.0.0.1/8 and ::1; servers on loopback work', () => {
  test('os.networkInterfaces() shows lo only, up, with 127.0.0.1/8 and ::1/128; netlink (ip link) lo and the black hole', async () => {
    const result = await network()
    expectFilePassed(result, 'interfaces.test.ts')
    const { names, lo, links, recording } = result.records.interfaces
    expect(names).toEqual(['lo'])
    expect(lo).toHaveLength(2)
    expect(lo).toEqual(
      expect.arrayContaining([
        { family: 'IPv4', cidr: '127.0.0.1/8', internal: true },
        { family: 'IPv6', cidr: '::1/128', internal: true },
      ]),
    )
    expect(links[0]).toEqual({ ifname: 'lo', flags: expect.arrayContaining(['UP', 'LOWER_UP']) })
    // With recording, outside routes end in `offline`, a veth whose peer (also here) stays down: no address on either.
    expect(links.slice(1).map((l: { ifname: string }) => l.ifname).sort()).toEqual(recording === 'on' ? ['offline', 'offline-peer'] : [])
    expect(links.find((l: { ifname: string }) => l.ifname === 'offline-peer')?.flags ?? []).not.toContain('UP')
  })

  test('HTTP servers on 127.0.0.1, ::1 and localhost answer fetch', async () => {
    const result = await network()
    expectFilePassed(result, 'loopback-servers.test.ts')
    expect(result.records['loopback-servers']).toEqual({
      ipv4: 'hello via 127.0.0.1',
      ipv6: 'hello via ::1',
      localhost: 'hello via localhost',
    })
  })
})

describe('3. no route elsewhere: outside addresses and names fail at once', () => {
  /** Without recordAttempts there is not even a route to lo for outside addresses: the kernel says ENETUNREACH. */
  const withoutRecording = once('network', () => ({ args: ['--config', 'vitest.no-record.config.ts', 'test/outside.test.ts'] }))

  test('TCP connect and UDP send to 198.51.100.0/24 and 203.0.113.0/24 are refused at once, not dropped (default options)', async () => {
    const result = await network()
    expect(statusOf(result, 'outside.test.ts', /TCP|UDP/), failures(result)).toEqual(['passed', 'passed', 'passed'])
    const { tcp, tcp2, udp } = result.records.outside
    for (const attempt of [tcp, tcp2, udp]) {
      // recordAttempts (default): EHOSTUNREACH from the black hole for TCP, EPERM for UDP; no route if it is unavailable.
      expect(['ENETUNREACH', 'ECONNREFUSED', 'EHOSTUNREACH', 'EPERM']).toContain(attempt.code)
    }
    // TCP: 10-20 ms as a rule, one SYN retransmit (1 s) when the first error met a locked socket; a drop would take minutes.
    for (const attempt of [tcp, tcp2]) expect(attempt.ms).toBeLessThan(5_000)
    expect(udp.ms).toBeLessThan(1_000)
  })

  test('with recordAttempts: false there is no route at all: ENETUNREACH for TCP and UDP, in well under 1 s', async () => {
    const result = await withoutRecording()
    expectRunPassed(result)
    const { tcp, tcp2, udp } = result.records.outside
    expect([tcp.code, tcp2.code, udp.code]).toEqual(['ENETUNREACH', 'ENETUNREACH', 'ENETUNREACH'])
    for (const attempt of [tcp, tcp2, udp]) expect(attempt.ms).toBeLessThan(1_000)
  })

  test('dns.lookup and dns.promises.resolve4 of an outside name fail in under 1 s', async () => {
    for (const result of [await network(), await withoutRecording()]) {
      expect(statusOf(result, 'outside.test.ts', /dns/), failures(result)).toEqual(['passed', 'passed'])
      const { lookup, resolve4 } = result.records.outside
      for (const attempt of [lookup, resolve4]) {
        expect(attempt.code).toEqual(expect.any(String))
        expect(attempt.ms).toBeLessThan(1_000)
      }
    }
  })

  test('localhost still resolves, to the addresses it has on the host', async () => {
    const result = await network()
    expectFilePassed(result, 'outside.test.ts')
    const onHost = (await dns.promises.lookup('localhost', { all: true })).map((a) => a.address).sort()
    expect(result.records.outside.localhost).toEqual(onHost)
  })
})

describe("4. the host's loopback services are out of reach", () => {
  /** Runs the host-loopback fixture against a TCP server on the host's 127.0.0.1 and a host abstract unix socket. */
  async function againstHostServices(extraArgs: string[] = []) {
    const abstractName = unique('vitest-netns-test')
    const tcp = await countingServer({ port: 0, host: '127.0.0.1' })
    const abstract = await countingServer({ path: `\0${abstractName}` })
    try {
      const result = await runFixture('host-loopback', {
        args: extraArgs,
        env: { HOST_PORT: String(tcp.port), HOST_ABSTRACT: abstractName },
      })
      return { result, tcpConnections: tcp.connections(), abstractConnections: abstract.connections() }
    } finally {
      await Promise.all([tcp.close(), abstract.close()])
    }
  }

  test("connecting to the host's 127.0.0.1:<port> and abstract socket is refused; the host servers see no connection", async () => {
    const { result, tcpConnections, abstractConnections } = await againstHostServices()
    expectRunPassed(result)
    expectFilePassed(result, 'host-services.test.ts')
    expect(result.records['host-services']).toEqual({ tcp: 'ECONNREFUSED', abstract: 'ECONNREFUSED' })
    expect([tcpConnections, abstractConnections]).toEqual([0, 0])
  })

  test('control: the same file outside the sandbox (environment node) does reach both services', async () => {
    const { result, tcpConnections, abstractConnections } = await againstHostServices(['--environment', 'node'])
    expect(result.code).not.toBe(0)
    expect(result.records['host-services']).toEqual({ tcp: 'connected', abstract: 'connected' })
    expect([tcpConnections, abstractConnections]).toEqual([1, 1])
  })
})

describe('5. a private /tmp per file', () => {
  /** A directory for this file's own use under the host's /tmp, removed in afterAll. */
  function hostTmpDir(prefix: string): string {
    const dir = mkdtempSync(`/tmp/${prefix}-`)
    created.push(dir)
    return dir
  }

  const marker = unique('m')
  /** Whether the host's /tmp had each file's marker while the sandboxes lived (or why that could not be checked). */
  let hostSaw: Record<string, boolean> | { error: string } = { error: 'not run' }
  /** The default run. While its sandboxes live, the host's /tmp is searched for their files (fixtures/shared/handshake.ts). */
  const defaultRun = once('private-tmp', async () => {
    const handshakeDir = mkdtempSync(join(outDir, 'handshake-'))
    const tmpdirElsewhere = mkdtempSync(join(outDir, 'tmpdir-'))
    created.push(handshakeDir, tmpdirElsewhere)
    let over = false
    const looking = answerHandshakes(handshakeDir, ['a', 'b'], (file) => existsSync(join('/tmp', file)), () => over)
    looking.then(
      (seen) => (hostSaw = seen),
      (error: Error) => (hostSaw = { error: error.message }),
    )
    return {
      // TMPDIR points elsewhere: the sandbox must still use /tmp.
      env: { TMP_MARKER: marker, NETNS_HANDSHAKE_DIR: handshakeDir, TMPDIR: tmpdirElsewhere },
      onSpawn: (child) => child.once('close', () => (over = true)),
    }
  })

  test('empty at start, writable, tmpfs mounted nosuid,nodev; os.tmpdir() is /tmp even with TMPDIR set elsewhere', async () => {
    const result = await defaultRun()
    expectRunPassed(result)
    for (const file of ['a', 'b']) {
      expectFilePassed(result, `${file}.test.ts`)
      const seen = result.records[file]
      // Empty but for what must be kept: nothing, unless this repository itself lives under /tmp.
      expect(seen.entries).toEqual(seen.kept)
      expect(seen.readBack).toBe(1 << 20)
      expect(seen.mount.fstype).toBe('tmpfs')
      expect(seen.mount.options).toEqual(expect.arrayContaining(['rw', 'nosuid', 'nodev']))
      expect(seen.mount.options).not.toContain('noexec')
      expect(seen.exec).toBe('ran') // not noexec unless asked for
      expect(seen.tmpdir).toBe('/tmp')
    }
  })

  test("invisible to the host: while the sandbox lives, its file is not in the host's /tmp", async () => {
    await defaultRun()
    expect(hostSaw).toEqual({ a: false, b: false })
  })

  test('invisible to the other file running at the same time', async () => {
    const result = await defaultRun()
    expect(result.records['a-after']).toEqual({ sawOther: false })
    expect(result.records['b-after']).toEqual({ sawOther: false })
  })

  test("gone after the run: nothing of it in the host's /tmp, and the next run starts with an empty /tmp again", async () => {
    const first = await defaultRun()
    expectRunPassed(first)
    expect(existsSync(join('/tmp', first.records.a.marker))).toBe(false)
    expect(existsSync(join('/tmp', first.records.b.marker))).toBe(false)
    const next = await runFixture('private-tmp', { env: { TMP_MARKER: marker } })
    expectRunPassed(next)
    expect([next.records.a.entries, next.records.b.entries]).toEqual([next.records.a.kept, next.records.b.kept])
  })

  test('tmpNoexec: true mounts /tmp noexec: a script written there cannot be run', async () => {
    const result = await runFixture('private-tmp', { args: ['--config', 'vitest.noexec.config.ts'] })
    expectRunPassed(result)
    for (const file of ['a', 'b']) {
      expect(result.records[file].mount.options).toEqual(expect.arrayContaining(['nosuid', 'nodev', 'noexec']))
      expect(result.records[file].exec).toBe('EACCES')
    }
  })

  test("a project living under the host's /tmp still runs; its workspace is bound into the otherwise empty private /tmp", async () => {
    const { dir, root } = copyFixture('private-tmp', '/tmp', 'vitest-netns-project')
    created.push(dir)
    // What an installed project has: a package.json, and vitest and this package in node_modules.
    writeFileSync(join(root, 'package.json'), JSON.stringify({ name: 'project-under-tmp', private: true, type: 'module' }))
    // Its tests import ../shared: a workspace holds both, and the sandbox gets the workspace (Vite's server.fs.allow).
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ private: true, workspaces: ['private-tmp', 'shared'] }))
    mkdirSync(join(root, 'node_modules'))
    symlinkSync(join(repoRoot, 'node_modules', 'vitest'), join(root, 'node_modules', 'vitest'), 'dir')
    symlinkSync(repoRoot, join(root, 'node_modules', 'vitest-environment-netns'), 'dir')
    const result = await runFixture(root)
    expectRunPassed(result)
    const top = dir.slice('/tmp/'.length)
    for (const file of ['a', 'b']) {
      expectFilePassed(result, `${file}.test.ts`)
      // Nothing but what was bound back in: the project, and Node if it too lives under /tmp.
      expect(result.records[file]).toMatchObject({ entries: result.records[file].kept, exec: 'ran' })
      expect(result.records[file].kept).toContain(top)
    }
  })

  // A host whose /tmp is mounted noexec cannot run a Node binary from there at all, sandbox or not.
  test.skipIf(hostTmpNoexec())("a Node binary living under the host's /tmp still runs the workers", async () => {
    const dir = hostTmpDir('vitest-netns-node')
    const node = join(dir, 'bin', 'node')
    mkdirSync(join(dir, 'bin'))
    copyFileSync(process.execPath, node)
    chmodSync(node, 0o755)
    const result = await runFixture('private-tmp', { node })
    expectRunPassed(result)
    const top = dir.slice('/tmp/'.length)
    for (const file of ['a', 'b']) {
      expectFilePassed(result, `${file}.test.ts`)
      expect(result.records[file]).toMatchObject({ execPath: node, entries: [top], kept: [top] })
    }
  })
})

// Both rootCapabilities choices: as root they differ ('file' keeps five file capabilities), and every escape fails in both.
// The shell launcher keeps no capabilities as root whatever the option says.
describe.each([
  ['default (rootCapabilities: file)', undefined, 'native'],
  ["rootCapabilities: 'none'", 'none', 'native'],
  ['shell launcher', undefined, 'shell'],
])('6. no privileges: same ids, no capabilities (as root by default: file ones only), the sandbox cannot be undone; %s', (_name, rootCaps, launcher) => {
  const privileges = once('privileges', () => ({
    env: { OUTER_UID: String(process.getuid!()), OUTER_GID: String(process.getgid!()), HOST_NETNS: hostNet, PRIV_ROOT_CAPS: rootCaps, PRIV_LAUNCHER: launcher },
  }))
  const fileCaps = isRoot && rootCaps !== 'none' && launcher !== 'shell'

  test('runs as the uid and gid of the outer test', async () => {
    const result = await privileges()
    expect(statusOf(result, 'privileges.test.ts', /uid and gid/), failures(result)).toEqual(['passed'])
    expect(result.records.privileges.ids).toEqual({ uid: process.getuid!(), euid: process.getuid!(), gid: process.getgid!(), egid: process.getgid!() })
  })

  test('CapEff (and every other capability set) is 0 (as root by default: the five file capabilities), NoNewPrivs is 1; also in programs it starts', async () => {
    const result = await privileges()
    expect(statusOf(result, 'privileges.test.ts', /no capabilities at all|same capabilities, no more/), failures(result)).toEqual(['passed', 'passed'])
    expect(result.records.privileges.status).toMatchObject({ CapEff: fileCaps ? '000000000000001f' : '0000000000000000', NoNewPrivs: '1' })
  })

  test('cannot write kernel knobs in /sys, or mount', async () => {
    const result = await privileges()
    expect(statusOf(result, 'privileges.test.ts', /\/sys knob|mount -t tmpfs/), failures(result)).toEqual(['passed', 'passed'])
  })

  test('cannot change interfaces, addresses or routes (ip link set lo down, ip route add, ip address add)', async () => {
    const result = await privileges()
    expect(statusOf(result, 'privileges.test.ts', /network setup/), failures(result)).toEqual(['passed', 'passed', 'passed'])
    expect(result.records.privileges['ip link set lo down'].status).not.toBe(0)
    expect(result.records.privileges['ip route add 203.0.113.0/24 dev lo'].status).not.toBe(0)
  })

  test('cannot unmount or remount /tmp', async () => {
    const result = await privileges()
    expect(statusOf(result, 'privileges.test.ts', /\/tmp cannot/), failures(result)).toEqual(['passed', 'passed'])
    expect(result.records.privileges['umount /tmp'].status).not.toBe(0)
  })

  test("cannot join the host's network namespace (nsenter --net=/proc/1/ns/net fails; no host process in view)", async () => {
    const result = await privileges()
    expect(statusOf(result, 'privileges.test.ts', /host's network namespace/), failures(result)).toEqual(['passed', 'passed'])
    expect(result.records.privileges['nsenter --net=/proc/1/ns/net true'].status).not.toBe(0)
    expect(result.records.privileges.visibleNetNamespaces).not.toContain(hostNet)
  })

  // Root differs: the kernel (Linux >= 5.12) only maps uid 0 into a new user
  // namespace for a process with CAP_SETFCAP, which the sandbox has dropped.
  // An ordinary user maps its own uid, which needs no capability.
  test.runIf(!isRoot)('as an ordinary user, a test can still create nested namespaces (unshare -r, unshare -rn)', async () => {
    const result = await privileges()
    expect(statusOf(result, 'privileges.test.ts', /nested namespaces/), failures(result)).toEqual(['passed', 'passed'])
    expect(result.records.privileges['unshare -r true']).toMatchObject({ status: 0 })
    expect(result.records.privileges['unshare -rn true']).toMatchObject({ status: 0 })
  })
})
