// Wrong blame and wrong hints, from outside: real Vitest runs of fixtures/uplink.
// - strict blames a test only for what it really tried: the last packets of a
//   connection an earlier test made through its uplink are not attempts (they
//   were counted, and the next test failed, once the uplink was down);
// - a network error in a test whose uplink is up gets a hint about that uplink
//   (a host service that is down, a port not asked for, an address its rules
//   refuse), not "this file runs without network access".
import { describe, expect, test } from 'vitest'
import { HINT } from '../src/hints'
import { failures, runFixture, type RunOptions, type RunResult } from './helpers'

function run(include: string, options: RunOptions = {}): Promise<RunResult> {
  return runFixture('uplink', { timeoutMs: 90_000, ...options, env: { NETNS_INCLUDE: include, NETNS_NO_UPSTREAM: '1', ...options.env } })
}

function result(run: RunResult, title: string) {
  const found = run.report?.testResults.flatMap((f) => f.assertionResults).find((a) => a.title === title)
  if (!found) throw new Error(`no test '${title}' in the report:\n${failures(run)}`)
  return found
}

/** The destinations a strict failure or the end-of-file report lists, sorted. */
function listed(text: string, after: RegExp): string[] {
  const list = after.exec(text)?.[1]
  return list ? list.split(', ').sort() : []
}

describe('strict blames only real attempts, on the test that made them', () => {
  test('the end of an earlier test\'s uplink connection is not blamed on later tests', async () => {
    const strict = await run('test/blame.test.ts', { env: { NETNS_STRICT: '1' } })
    const messages = (title: string) => result(strict, title).failureMessages.join('\n')
    // The connection an earlier test left open through its uplink is closed with the uplink down.
    expect(result(strict, 'talks to a host service and leaves the connection open').status, failures(strict)).toBe('passed')
    expect(result(strict, 'closes what the earlier test left open').status, messages('closes what the earlier test left open')).toBe('passed')
    expect(result(strict, 'does nothing on the network').status, messages('does nothing on the network')).toBe('passed')

    // A test that really connects outside, to an address or to the earlier test's gateway, is blamed for exactly that.
    const { gateway, port } = strict.records.blame
    const expected = ['203.0.113.9:81/tcp ×1', `${gateway}:${port}/tcp ×1`].sort()
    const tried = result(strict, 'connects outside itself')
    expect(tried.status).toBe('failed')
    expect(listed(messages('connects outside itself'), /this test tried to reach the outside: (.*?)\. The attempts/)).toEqual(expected)
    expect(result(strict, 'stays on loopback after it').status, messages('stays on loopback after it')).toBe('passed')
    // So is the file, at its end.
    expect(listed(strict.stdout + strict.stderr, /test\/blame\.test\.ts tried to reach outside destinations \(all blocked\): (.*)/)).toEqual(expected)
  })
})

describe('a network error in a test with an uplink gets a hint about that uplink', () => {
  test('a host service that is down, a gateway port not asked for, an address the rules refuse; no uplink: no network', async () => {
    const hints = await run('test/hint.test.ts')
    const message = (title: string) => {
      const found = result(hints, title)
      expect(found.status, failures(hints)).toBe('failed')
      return found.failureMessages.join('\n')
    }
    const { port, gateway } = hints.records.hint
    // Root: connect ECONNREFUSED <gateway>:<port>. Rootless: the hub accepts, then resets: ECONNRESET on connect (with the address) or on a write (without).
    const down = message('a host service that is down')
    expect(down).toMatch(new RegExp(`this test's uplink is up.* nothing listens on the host at port ${port} \\(uplink\\.hostService\\(${port}\\)\\)`))
    expect(down).toMatch(/start that service before the tests/)
    expect(down).not.toContain(HINT)

    const notAsked = message('a gateway port no host service was asked for')
    expect(notAsked).toContain(`this test's uplink is up, but port ${port} of its gateway ${gateway} is not a host service it asked for: call uplink.hostService(${port})`)
    expect(notAsked).not.toContain(HINT)

    const refused = message('an outside address the uplink does not let through')
    expect(refused).toContain("this test's uplink is up, but its rules do not let 203.0.113.9:81 through: it reaches only the host services and forwards the test asked for (egress: 'none')")
    expect(refused).not.toContain(HINT)

    // Without an uplink, the network really is missing.
    expect(message('an outside address, without an uplink')).toContain(HINT)
  })
})
