// Outside-in: per-test uplinks. Real Vitest runs of fixtures/uplink, whose
// global setup starts two real Redis servers and a prober on the host's
// loopback and a fake upstream network (198.51.100.0/24) hung off the
// uplinks' outer namespace. Everything stays on this machine.
import type { ChildProcess } from 'node:child_process'
import { execFileSync, spawn } from 'node:child_process'
import { closeSync, existsSync, openSync, readFileSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { describe, expect, test } from 'vitest'
import { findTool } from '../src/launcher'
import { failures, runFixture, type RunOptions, type RunResult } from './helpers'
import { processesOfRun, waitFor, waitUntilGone } from './leftovers'

const root = process.getuid?.() === 0
// The fixture's pool (fixtures/uplink/vitest.config.ts): the doctor's test may make uplinks of its own meanwhile, from 10.200.0.0/16.
const POOL = /^10\.213\.\d+\.\d+$/
// Refused at once, in the kernel (a reset, or no route): not ETIMEDOUT, what a silent drop gives after 3 s.
const REFUSED = ['ECONNREFUSED', 'ENETUNREACH', 'EHOSTUNREACH']

function run(options: RunOptions & { include?: string } = {}): Promise<RunResult> {
  return runFixture('uplink', { timeoutMs: 90_000, ...options, env: { NETNS_INCLUDE: options.include, ...options.env } })
}

/** The outer interface of the uplink whose test side had `address`: vn<index of its /30>. */
function outerInterface(address: string): string {
  const n = address.split('.').reduce((acc, part) => acc * 256 + Number(part), 0)
  return `vn${Math.floor(n / 4)}`
}

/** Which of these interfaces still exist in the host's namespace (root mode puts outer ends there). */
function presentLinks(names: string[]): string[] {
  const all = execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' })
    .split('\n')
    .map((line) => /^\d+: ([^:@]+)/.exec(line)?.[1])
  return names.filter((name) => all.includes(name))
}

function uplinkTables(): string[] {
  if (!root) return []
  return execFileSync('nft', ['list', 'tables'], { encoding: 'utf8' })
    .split('\n')
    .filter((line) => {
      const pid = /vitest_netns_uplink_(\d+)/.exec(line)?.[1]
      return pid !== undefined && !existsSync(`/proc/${pid}`)
    })
}

function sameSlash30(a: string, b: string): boolean {
  const n = (ip: string) => ip.split('.').reduce((acc, part) => acc * 256 + Number(part), 0)
  return Math.floor(n(a) / 4) === Math.floor(n(b) / 4)
}

/**
 * Nothing of the run is left: processes, the outer ends of the uplinks its tests had (other
 * runs, of other test files or another checkout, may have uplinks of their own meanwhile),
 * tables of dead helpers.
 */
async function expectNothingLeft(result: RunResult, recordDir: string) {
  const left = await waitUntilGone(recordDir, 10_000)
  expect(left.map((p) => `${p.pid} ${p.comm}`), 'processes of the run (hub, helper, pasta, redis, sandboxes)').toEqual([])
  const addresses = JSON.stringify(result.records).match(/10\.213\.\d+\.\d+/g) ?? []
  const links = [...new Set(addresses.map(outerInterface))]
  // A veth goes with its sandbox's namespace, which the kernel frees asynchronously: wait a little.
  for (let i = 0; i < 50 && presentLinks(links).length; i++) await new Promise((resolve) => setTimeout(resolve, 100))
  expect(presentLinks(links), 'uplink interfaces left in the host namespace').toEqual([])
  expect(uplinkTables(), 'nft tables left').toEqual([])
}

describe('the uplink fixture', () => {
  test('host services, forwards and egress, each only as asked', async () => {
    const forwardingBefore = readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8')
    let recordDir = ''
    const result = await run({ onSpawn: (_, info) => (recordDir = info.recordDir) })
    expect(result.code, failures(result)).toBe(0)
    expect(result.stdout).toMatch(root ? /uplinks: veth in the host namespace/ : /uplinks: hub namespace/)
    const { hostService, afterHostService, forward, afterForward, badPorts, egressNone, egressAllow, egressNat, udp, concurrent } = result.records

    // hostService: a real Redis on the host's loopback, through the gateway.
    expect(hostService.uplink.interface).toBe('eth0')
    expect(hostService.uplink.address).toMatch(POOL)
    expect(sameSlash30(hostService.uplink.address, hostService.uplink.gateway)).toBe(true)
    expect(hostService.service.host).toBe(hostService.uplink.gateway)
    expect(hostService.set.reply).toBe('+OK')
    expect(hostService.get.reply).toBe('works')
    expect(hostService.aliasPing.reply).toBe('+PONG')
    expect(hostService.cli).toBe('PONG')
    // Root: kernel DNAT, the socket's peer is the gateway. Rootless: the socket hand-over gives the test a host
    // socket connected to the service itself (native/share.c), not the hub's relay.
    expect(hostService.peer).toEqual(root
      ? { remoteAddress: hostService.uplink.gateway, remotePort: hostService.service.port }
      : { remoteAddress: '127.0.0.1', remotePort: hostService.service.port })
    expect(hostService.alias.port).toBe(16379)
    expect(hostService.routes).toMatch(/^eth0\s+00000000\s/m)
    // The other Redis was not asked for: refused at once, through the gateway and on the sandbox's own loopback.
    expect(hostService.otherViaGateway.error).toBe('ECONNREFUSED')
    expect(hostService.otherOnLoopback.error).toBe('ECONNREFUSED')

    // Down after the test: the next test of the same file is offline again.
    expect(afterHostService.gateway).toBe(hostService.uplink.gateway)
    expect(afterHostService.viaGateway.reply).toBeUndefined()
    expect(REFUSED, `afterHostService.viaGateway`).toContain(afterHostService.viaGateway.error)
    expect(afterHostService.routes).not.toMatch(/^eth0/m)

    // forward: a host-side client (the prober) reaches a server inside the test.
    expect(forward.forward.host).toBe('127.0.0.1')
    expect(forward.viaHost.reply).toMatch(/^ok inside saw /)
    expect(forward.chosen).toEqual({ host: '127.0.0.1', port: expect.any(Number) })
    expect(forward.taken.error).toMatch(/^vitest-environment-netns: forward: bind: EADDRINUSE: host port \d+ is in use$/)
    expect(afterForward.prober.error).toBe('ECONNREFUSED')
    // A real Redis inside, the host's redis-cli through forward, before and after the server binds. Root: both
    // listen in the sandbox behind DNAT. Rootless: the one forwarded before it bound got a host socket at its
    // bind (it listens on the host's loopback, not in the sandbox); the other is behind the hub's relay.
    const { forwardRedis } = result.records
    expect(forwardRedis.beforeReady && forwardRedis.afterReady).toBe(true)
    expect(forwardRedis.viaBefore.reply).toBe('ok PONG')
    expect(forwardRedis.viaAfter.reply).toBe('ok PONG')
    expect(forwardRedis.listening).toEqual(root ? [16380, 16381] : [16381])
    expect(badPorts.zero).toMatch(/uplink\.forward\(0\): the port must be a whole number from 1 to 65535; got 0/)
    expect(badPorts.tooHigh).toMatch(/from 1 to 65535; got 65536/)
    expect(badPorts.fraction).toMatch(/hostService\(80\.5\).*from 1 to 65535/)
    expect(badPorts.hostPort).toMatch(/hostPort.*got -1/)
    expect(badPorts.protocol).toMatch(/protocol must be 'tcp' or 'udp'; got "sctp"/)

    // egress: none by default; an allow-list opens one port; 'nat' opens all. The upstream sees the masqueraded source.
    expect(egressNone.a.reply).toBeUndefined()
    expect(REFUSED, `egressNone.a`).toContain(egressNone.a.error)
    expect(egressAllow.allowed.reply).toBe('198.51.100.1 8080')
    expect(egressAllow.other.reply).toBeUndefined()
    expect(REFUSED, `egressAllow.other`).toContain(egressAllow.other.error)
    expect(egressNat.a.reply).toBe('198.51.100.1 8080')
    expect(egressNat.b.reply).toBe('198.51.100.1 8081')

    // UDP: kernel DNAT as root, the hub's datagram relay rootless. Either way the echo server
    // sees a loopback client, and each peer (two sockets at once) gets its own answers.
    expect(udp.hostService.error).toBeUndefined()
    expect(udp.hostService.service.host).toMatch(POOL)
    expect(udp.hostService.reply).toBe('echo hello from the test from 127.0.0.1')
    expect(udp.hostService.twoPeers).toEqual(['echo a from 127.0.0.1', 'echo b from 127.0.0.1'])
    expect(udp.hostService.again).toBe('ok')
    expect(udp.forward.error).toBeUndefined()
    expect(udp.forward.viaHost.reply).toBe('ok inside got hello from the host')
    expect(udp.forward.twoPeers.reply).toBe('ok inside got one | inside got two')
    // While it ran, the forward held its host port; rootless, the relay also held a host socket
    // per peer of the echo server and, in the hub, a socket at the gateway and one per host peer.
    const forwardPort = udp.forward.forward.port
    expect(udp.during.taken).toContain(forwardPort)
    if (!root) {
      expect(udp.during.echoPeers).toHaveLength(3)
      expect(udp.during.taken.sort()).toEqual([forwardPort, ...udp.during.echoPeers].sort())
      expect(udp.during.outerSockets).toBe(1 + 3)
    }
    // The next test of the file: the port is free, and nothing of the relays is left.
    const { afterUdp } = result.records
    expect(afterUdp.state.error).toBeUndefined()
    expect(afterUdp.state.taken).toEqual([])
    expect(afterUdp.state.outerSockets).toBe(0)
    // 300 test sockets one after the other, all answered; rootless, the hub kept 256 flows
    // (its limit per uplink: the least recently used went), each with its host socket.
    const { udpMany } = result.records
    expect(udpMany.answered).toBe(300)
    if (!root) expect(udpMany.state.taken).toHaveLength(256)

    // A connection left open through the uplink does not keep the file's veth alive (checked below).
    expect(result.records.leavesOpen.address).toMatch(POOL)
    // The connection it left open: rootless, the relay closed it with the test's uplink; as root
    // the link was only cut, and its file's release resets it. Either way the server has let go
    // of it by the end of the run.
    const { afterLeavesOpen, redisAtEnd } = result.records
    expect(afterLeavesOpen.clients).toMatch(/^id=/)
    if (!root) expect(afterLeavesOpen.clients).not.toContain('name=leftopen')
    expect(redisAtEnd.clients).toMatch(/^id=/)
    expect(redisAtEnd.clients).not.toContain('name=leftopen')

    // Two tests of one file at once share its uplink; it stays up until the last one ends.
    expect(concurrent.one).toMatch(POOL)
    expect(concurrent.two).toBe(concurrent.one)
    expect(concurrent['two-routes']).toMatch(/^eth0\s+00000000\s/m)
    expect(concurrent.after).not.toMatch(/^eth0/m)

    await expectNothingLeft(result, recordDir)
    expect(readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8'), 'the global ip_forward is never changed').toBe(forwardingBefore)
  })

  test('the util-linux launcher gives the same uplink', async () => {
    const result = await run({ include: 'test/host-service.test.ts', env: { NETNS_LAUNCHER: 'shell', NETNS_NO_UPSTREAM: '1' } })
    expect(result.code, failures(result)).toBe(0)
    expect(result.stdout).toMatch(/shell launcher/)
    expect(result.records.hostService.get.reply).toBe('works')
    expect(result.records.hostService.cli).toBe('PONG')
    // No connect filter without the native launcher: the hub's relay (or root's DNAT) carries it.
    expect(result.records.hostService.peer.remoteAddress).toBe(result.records.hostService.uplink.gateway)
    expect(result.records.hostService.otherViaGateway.error).toBe('ECONNREFUSED')
    expect(result.records.afterHostService.viaGateway.reply).toBeUndefined()
  })

  test('with uplink: false, a test asking for one fails saying uplinks are off', async () => {
    const result = await run({ args: ['--config', 'vitest.off.config.ts'], env: { NETNS_NO_UPSTREAM: '1' } })
    expect(result.code).not.toBe(0)
    expect(failures(result)).toMatch(/uplinks are off in this run: the netns\(\) plugin has uplink: false/)
    expect(result.stdout).toMatch(/uplinks: off/)
  })

  test('bad uplink options fail the test with the fix', async () => {
    const result = await run({ include: 'test/bad-options.test.ts', env: { NETNS_NO_UPSTREAM: '1' } })
    expect(result.code).not.toBe(0)
    const messages = Object.fromEntries(
      result.report!.testResults.flatMap((file) => file.assertionResults.map((t) => [t.title, t.failureMessages.join('\n')])),
    )
    expect(messages['host name in allow']).toMatch(/allow-list entry "example\.com:443" does not parse \(host names cannot be resolved in the sandbox: give addresses\); accepted forms/)
    expect(messages['host bits in allow']).toMatch(/allow-list entry "198\.51\.100\.7\/24" does not parse/)
    expect(messages['allow with egress none']).toMatch(/'allow' lists egress destinations: it needs egress: 'nat'/)
    expect(messages['misspelt option']).toMatch(/unknown uplink option 'egres'; known: egress, allow/)
  })

  test('a test that times out still takes its uplink down', async () => {
    const result = await run({ include: 'test/timeout.test.ts', env: { NETNS_NO_UPSTREAM: '1' } })
    expect(result.code).not.toBe(0)
    expect(failures(result)).toMatch(/Test timed out in 500ms/)
    const { afterTimeout } = result.records
    expect(afterTimeout.gateway).toMatch(POOL)
    expect(afterTimeout.viaGateway.reply).toBeUndefined()
    expect(REFUSED, `afterTimeout.viaGateway`).toContain(afterTimeout.viaGateway.error)
    expect(afterTimeout.routes).not.toMatch(/^eth0/m)
  })

  test('files at the same time get their own subnets and cannot reach each other', async () => {
    const result = await run({ include: 'test/parallel-*.test.ts', env: { NETNS_NO_UPSTREAM: '1' } })
    expect(result.code, failures(result)).toBe(0)
    const a = result.records['parallel-a']
    const b = result.records['parallel-b']
    expect(a.net).not.toBe(b.net)
    expect(sameSlash30(a.address, b.address)).toBe(false)
    expect(result.records['parallel-a-reach'].reply).toBeUndefined()
  })

  test('two Vitest runs at once never share a subnet or an interface', async () => {
    const runs = await Promise.all([0, 1].map(() => run({ include: 'test/parallel-*.test.ts', env: { NETNS_NO_UPSTREAM: '1' } })))
    const addresses = runs.flatMap((r) => [r.records['parallel-a'].address, r.records['parallel-b'].address])
    for (const r of runs) expect(r.code, failures(r)).toBe(0)
    const blocks = new Set(addresses.map((address: string) => address.split('.').slice(0, 3).join('.') + '.' + (Number(address.split('.')[3]) >> 2)))
    // As root every outer end is in the host's namespace: four different /30s (and so interface names).
    // Rootless runs each have a hub of their own, where the same subnet is no clash; within a run they differ.
    if (root) expect(blocks.size, `addresses ${addresses.join(', ')}`).toBe(4)
    else for (const r of runs) expect(sameSlash30(r.records['parallel-a'].address, r.records['parallel-b'].address)).toBe(false)
    // Four sandboxes, four network namespaces, in either mode.
    expect(new Set(runs.flatMap((r) => [r.records['parallel-a'].net, r.records['parallel-b'].net])).size).toBe(4)
  })

  test('a worker killed while its test holds an uplink and a forward leaves nothing', async () => {
    let recordDir = ''
    const result = await run({ include: 'test/crash.test.ts', env: { NETNS_NO_UPSTREAM: '1' }, onSpawn: (_, info) => (recordDir = info.recordDir) })
    expect(result.code).not.toBe(0)
    expect(result.stdout + result.stderr).toContain('Worker exited unexpectedly')
    const { crash } = result.records
    expect(crash.address).toMatch(POOL)
    await expectNothingLeft(result, recordDir)
    await new Promise<void>((resolve, reject) => {
      const server = createServer().once('error', reject).listen(crash.forward.port, '127.0.0.1', () => server.close(() => resolve()))
    })
  })

  test('SIGKILL of Vitest while a test holds an uplink leaves nothing', async () => {
    let recordDir = ''
    let holding: { forward: { port: number } } | undefined
    const result = await run({
      include: 'test/hold.test.ts',
      env: { NETNS_NO_UPSTREAM: '1' },
      onSpawn: (child: ChildProcess, info) => {
        recordDir = info.recordDir
        void waitFor('the holding record', () => {
          const file = join(recordDir, 'holding.record.json')
          if (child.exitCode !== null || child.signalCode !== null) throw new Error('Vitest exited first')
          return existsSync(file) ? file : undefined
        }, 60_000).then((file) => {
          holding = JSON.parse(readFileSync(file, 'utf8'))
          child.kill('SIGKILL')
        })
      },
    })
    expect(result.signal).toBe('SIGKILL')
    expect(holding?.forward.port).toBeGreaterThan(0)
    await expectNothingLeft(result, recordDir)
    // The forward's host port is free again.
    await new Promise<void>((resolve, reject) => {
      const server = createServer().once('error', reject).listen(holding!.forward.port, '127.0.0.1', () => server.close(() => resolve()))
    })
  })
})

describe('a helper that dies mid-run', () => {
  // As a crash would, but with a signal that leaves no core file: SIGUSR1 to the hub (rootless)
  // or to the helper (root), neither of which handles it. The next uplink request says how it
  // ended, with what it said, instead of only that it is gone.
  test('the next uplink request says how it ended', async () => {
    let killed = 0
    let recordDir = ''
    const result = await run({
      include: 'test/helper-dies.test.ts',
      env: { NETNS_NO_UPSTREAM: '1', NETNS_TEST_TIMEOUT: '30000' },
      onSpawn: (vitest: ChildProcess, info) => {
        recordDir = info.recordDir
        void waitFor('the holding record', () => {
          if (vitest.exitCode !== null || vitest.signalCode !== null) throw new Error('Vitest exited first')
          return existsSync(join(info.recordDir, 'helperDiesHolding.record.json')) || undefined
        }, 60_000).then(() => {
          killed = processesOfRun(info.recordDir).find((p) => p.comm === (root ? 'netns-uplink' : 'netns-hub'))!.pid
          process.kill(killed, 'SIGUSR1')
          writeFileSync(join(info.recordDir, 'killed'), '')
        })
      },
    })
    expect(killed).toBeGreaterThan(0)
    expect(result.code, 'the test fails').toBe(1)
    const { error } = result.records.helperDied
    expect(error).toContain('the uplink helper exited unexpectedly: ')
    if (root) expect(error).toContain('killed by SIGUSR1')
    else expect(error).toContain(`exit code 138; it said: netns-launch uplink: the hub (pid ${killed}) was killed by signal 10 (User defined signal 1)`)
    expect(error).toContain('Please report this')
    await expectNothingLeft(result, recordDir)
  })
})

describe('many short connections through a host service', () => {
  // Rootless, the hub relays them with sockets its host-side process makes and passes over; that
  // process closes its copy right after sending it. A connection that ended before that close
  // once left the relay reacting to the freed connection (the hub died). strace makes every such
  // close 20 ms late, so every connection here ends first. As root the kernel's DNAT carries them.
  test('all get through, and the helper still answers afterwards', async () => {
    let tracer: ChildProcess | undefined
    let traced: Promise<unknown> = Promise.resolve()
    let tracerSaid = ''
    const result = await run({
      include: 'test/many-connections.test.ts',
      env: { NETNS_NO_UPSTREAM: '1', NETNS_CONNECTIONS: '60', NETNS_WAIT_FOR: 'go', NETNS_TEST_TIMEOUT: '30000' },
      onSpawn: (vitest: ChildProcess, info) => {
        traced = (async () => {
          if (!root) {
            const hostSide = await waitFor('the uplink helper\'s host side', () => {
              if (vitest.exitCode !== null || vitest.signalCode !== null) throw new Error('Vitest exited first')
              const list = processesOfRun(info.recordDir)
              const hub = list.find((p) => p.comm === 'netns-hub')
              return hub && list.find((p) => p.pid === hub.ppid && p.comm === 'netns-uplink')
            }, 30_000)
            tracer = spawn('strace', ['-qq', '-p', String(hostSide.pid), '-e', 'trace=close', '-e', 'inject=close:delay_enter=20000', '-o', '/dev/null'])
            tracer.stderr!.on('data', (chunk: Buffer) => (tracerSaid += chunk))
            tracer.on('error', (error) => (tracerSaid += error.message))
            await waitFor(() => `strace to attach to ${hostSide.pid} (it said: ${tracerSaid})`, () => {
              const status = readFileSync(`/proc/${hostSide.pid}/status`, 'utf8')
              return /^TracerPid:\s*[1-9]/m.test(status) || undefined
            }, 10_000)
          }
          writeFileSync(join(info.recordDir, 'go'), '')
        })()
      },
    })
    tracer?.kill('SIGKILL')
    await traced
    expect(result.code, failures(result)).toBe(0)
    const { made, outcomes, after } = result.records.manyConnections
    expect(made).toBe(60)
    expect(outcomes).toEqual({ '+PONG': 60 })
    expect(after.reply, 'a later host service through the same helper').toBe('+PONG')
  })
})

/**
 * Root only: a host-local interface for 203.0.113.0/24 (its peer stays down: nothing is ever
 * sent), for egress to route through; `body` gets its name and a reader of its forwarding value.
 */
async function withEgressInterface(prefix: string, body: (ifname: string, forwarding: () => string) => Promise<void>) {
  const ifname = `${prefix}${process.pid}`.slice(0, 15)
  execFileSync('ip', ['link', 'add', ifname, 'type', 'veth', 'peer', 'name', `${ifname}p`])
  try {
    execFileSync('ip', ['addr', 'add', '203.0.113.1/24', 'dev', ifname])
    execFileSync('ip', ['link', 'set', ifname, 'up'])
    await body(ifname, () => readFileSync(`/proc/sys/net/ipv4/conf/${ifname}/forwarding`, 'utf8').trim())
  } finally {
    execFileSync('ip', ['link', 'del', ifname])
  }
}

describe('a killed helper', () => {
  // Root only: egress turns forwarding on for the interface routing to the destination; if the
  // helper is SIGKILLed it cannot turn it back, so the next run does, from /run/vitest-netns.
  test.skipIf(!root)('leaves forwarding changed, and the next run puts it back', async () => {
    await withEgressInterface('rc', async (ifname, forwarding) => {
      expect(forwarding()).toBe('0')
      let helperPid = 0
      const result = await run({
        include: 'test/hold-egress.test.ts',
        env: { NETNS_NO_UPSTREAM: '1' },
        onSpawn: (child: ChildProcess, info) => {
          void waitFor('the holding record', () => {
            if (child.exitCode !== null || child.signalCode !== null) throw new Error('Vitest exited first')
            return existsSync(join(info.recordDir, 'holdingEgress.record.json')) || undefined
          }, 60_000).then(() => {
            expect(forwarding(), 'forwarding on while the egress uplink is up').toBe('1')
            helperPid = processesOfRun(info.recordDir).find((p) => p.comm === 'netns-uplink')!.pid
            process.kill(helperPid, 'SIGKILL')
            child.kill('SIGKILL')
          })
        },
      })
      expect(result.signal).toBe('SIGKILL')
      expect(helperPid).toBeGreaterThan(0)
      expect(uplinkTables(), 'the table went with the helper (owner flag)').toEqual([])
      // The killed helper cannot put forwarding back; the next helper to start does. That may be
      // another run of this suite starting meanwhile (every root run starts one), or this one.
      const next = await run({ include: 'test/parallel-*.test.ts', env: { NETNS_NO_UPSTREAM: '1' } })
      expect(next.code, failures(next)).toBe(0)
      expect(forwarding()).toBe('0')
      expect(existsSync(`/run/vitest-netns/held.${ifname}.${helperPid}`)).toBe(false)
      expect(existsSync(`/run/vitest-netns/orig.${ifname}`)).toBe(false)
    })
  })
})

describe('two root runs needing forwarding on one interface', () => {
  test.skipIf(!root)('the first to end leaves it on for the other; the last puts it back', async () => {
    await withEgressInterface('rs', async (ifname, forwarding) => {
      // Run A starts first and ends first, while run B, started after it, still needs the interface.
      let b: ChildProcess | undefined
      let aHolds: Promise<unknown> | undefined
      const runA = run({
        include: 'test/hold-egress.test.ts',
        env: { NETNS_NO_UPSTREAM: '1', NETNS_HOLD_MS: '3000' },
        onSpawn: (_, info) => {
          aHolds = waitFor('run A to hold', () => existsSync(join(info.recordDir, 'holdingEgress.record.json')) || undefined, 60_000)
        },
      })
      await waitFor('run A to start', () => aHolds, 5000)
      await aHolds
      let bRecordDir = ''
      const runB = run({
        include: 'test/hold-egress.test.ts',
        env: { NETNS_NO_UPSTREAM: '1', NETNS_HOLD_MS: '60000' },
        onSpawn: (child: ChildProcess, info) => {
          b = child
          bRecordDir = info.recordDir
        },
      })
      await waitFor('run B to hold', () => (bRecordDir && existsSync(join(bRecordDir, 'holdingEgress.record.json'))) || undefined, 60_000)
      const a = await runA
      expect(a.code, failures(a)).toBe(0)
      const afterA = forwarding()
      b!.kill('SIGTERM')
      await runB
      expect(afterA, 'still on for run B, which still needs it').toBe('1')
      // Run B's helper was the last holder: it puts the value back as it exits.
      for (let i = 0; i < 50 && forwarding() !== '0'; i++) await new Promise((resolve) => setTimeout(resolve, 100))
      expect(forwarding()).toBe('0')
      expect(existsSync(`/run/vitest-netns/orig.${ifname}`)).toBe(false)
    })
  })
})

describe('bad uplink pools stop Vitest before any test runs', () => {
  const hostNetwork = (() => {
    const text = execFileSync('ip', ['-o', '-4', 'addr', 'show', 'scope', 'global'], { encoding: 'utf8' })
    const match = /inet (\d+\.\d+\.\d+)\.\d+\/24/.exec(text)
    return match ? `${match[1]}.0/24` : undefined
  })()

  const cases: Array<[string, RegExp]> = [
    ['10.200.0.1/16', /option 'uplink\.pool' must be an IPv4 block written as a\.b\.c\.d\/n with n at most 30 and no host bits set/],
    ['10.200.0.0/31', /n at most 30/],
    ['10.200.0.0/30', /has room for 1 uplink \(one \/30 each\), fewer than maxWorkers \(4\)\. Give a larger pool \(a \/28 or wider\)/],
  ]
  if (hostNetwork) cases.push([hostNetwork, new RegExp(`overlaps this host's network ${hostNetwork.replace(/\./g, '\\.')}.*Choose a free block`)])
  test.each(cases)('pool %s', async (pool, message) => {
    const result = await run({ args: ['--config', 'vitest.bad-pool.config.ts'], env: { NETNS_BAD_POOL: pool, NETNS_NO_UPSTREAM: '1' } })
    expect(result.code).not.toBe(0)
    expect(result.stdout + result.stderr).toMatch(message)
    expect(result.records['parallel-a'], 'no test ran').toBeUndefined()
  })
})

describe('rootless egress past the machine', () => {
  test.skipIf(root)('pasta when /dev/net/tun is usable, else a message saying why; hub-routed addresses work either way', async () => {
    let tunUsable = true
    try {
      closeSync(openSync('/dev/net/tun', 'r+'))
    } catch {
      tunUsable = false
    }
    const result = await run({ include: 'test/egress.test.ts', env: { NETNS_EGRESS_VIA: 'auto' } })
    expect(result.code, failures(result)).toBe(0)
    const output = result.stdout + result.stderr
    if (tunUsable) expect(output).not.toMatch(/egress beyond this machine/)
    else expect(output).toMatch(/uplink: egress beyond this machine needs pasta, but \/dev\/net\/tun cannot be opened by this user \(EACCES; it is usually mode 0666: chmod 0666 \/dev\/net\/tun/)
    expect(result.records.egressNat.a.reply).toBe('198.51.100.1 8080')
  })
})

describe('rootless egress past the machine, where it cannot work', () => {
  // slirp4netns asked for and not installed: egress past the machine cannot work. A run that never asks
  // for egress is not told about it (nor to install anything); the first test that asks is.
  test.skipIf(root || findTool('slirp4netns') !== undefined)('the start line does not say so; the first test that asks for egress does', async () => {
    const env = { NETNS_EGRESS_VIA: 'slirp4netns' }
    const quiet = await run({ include: 'test/host-service.test.ts', env })
    expect(quiet.code, failures(quiet)).toBe(0)
    expect(quiet.stdout).toContain('uplinks: hub namespace, host sockets handed over for TCP host services and forwards (the hub relays the rest))')
    expect(quiet.stdout + quiet.stderr).not.toMatch(/egress (past|beyond) this machine|install passt|slirp4netns/)
    const asked = await run({ include: 'test/egress.test.ts', env })
    expect(asked.code, failures(asked)).toBe(0)
    expect(asked.stdout + asked.stderr).toContain(
      'uplink: egress beyond this machine needs slirp4netns, which is not on PATH. Addresses reachable from the hub namespace still work.',
    )
  })
})

describe('IPv6 and the uplink', () => {
  // The outer rules are IPv4 rules: IPv6 must not cross the uplink at all. A listener on [::] in
  // this process stands for any host service listening on all addresses; the test with an uplink
  // tries it at the gateway's link-local address. Rootless, the gateway is the hub, where no host
  // service listens: there the addresses themselves are what is checked.
  test.skipIf(!existsSync('/proc/sys/net/ipv6'))('no IPv6 address on either end, and the gateway cannot be reached over IPv6', async () => {
    const server = createServer((socket) => socket.end('reached over IPv6\n'))
    await new Promise<void>((resolve) => server.listen(0, '::', () => resolve()))
    const port = (server.address() as { port: number }).port
    let outer: Promise<string[]> | undefined
    try {
      const result = await run({
        include: 'test/ipv6.test.ts',
        env: { NETNS_NO_UPSTREAM: '1', NETNS_V6_PORT: String(port), NETNS_TEST_TIMEOUT: '30000' },
        onSpawn: (_, info) => (outer = tellGateway(info.recordDir)),
      })
      expect(result.code, failures(result)).toBe(0)
      const { ipv6 } = result.records
      expect(ipv6.result.reply, JSON.stringify(ipv6)).toBeUndefined()
      expect(ipv6.result.error).toBeDefined()
      expect(ipv6.eth0, 'IPv6 addresses of eth0').toEqual([])
      expect(await outer, 'IPv6 addresses of the outer end').toEqual([])
    } finally {
      server.close()
    }
  })
})

/**
 * Once the test has its uplink, reads the outer end's IPv6 addresses (host or hub namespace),
 * waits for its link-local one to be usable, and tells the test (ipv6-gateway.json).
 */
async function tellGateway(recordDir: string): Promise<string[]> {
  const file = join(recordDir, 'ipv6-gateway.json')
  try {
    const ready = await waitFor('the IPv6 test to attach', () => {
      const path = join(recordDir, 'ipv6Ready.record.json')
      return existsSync(path) ? JSON.parse(readFileSync(path, 'utf8')) : undefined
    }, 60_000)
    const name = outerInterface(ready.address)
    const hub = root ? undefined : processesOfRun(recordDir).find((p) => p.comm === 'netns-hub')?.pid
    const addresses = () =>
      readFileSync(hub ? `/proc/${hub}/net/if_inet6` : '/proc/self/net/if_inet6', 'utf8')
        .split('\n')
        .map((line) => line.trim().split(/\s+/))
        .filter((fields) => fields[5] === name)
    for (let i = 0; i < 100 && addresses().some((fields) => parseInt(fields[4]!, 16) & 0x40); i++) await new Promise((r) => setTimeout(r, 50))
    const found = addresses().map((fields) => fields[0]!.replace(/(.{4})(?!$)/g, '$1:'))
    writeFileSync(file, JSON.stringify({ address: found.find((a) => a.startsWith('fe80:')) ?? null }))
    return found
  } catch (error) {
    writeFileSync(file, JSON.stringify({ address: null }))
    throw error
  }
}
