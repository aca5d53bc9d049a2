// Host sockets inside a sandbox (a netns.listen() listener, a shared port's
// connection) stay what they were handed in as: native code given one cannot
// disconnect it and connect it to another host service, neither with
// connect() nor with a TCP Fast Open send, nor bind it anew once it is back
// in TCP_CLOSE (fixtures/host-sockets).
import { expect, test } from 'vitest'
import { failures, runFixture } from './helpers.js'

test('no host socket in a sandbox becomes a new connection on the host', async () => {
  const result = await runFixture('host-sockets')
  expect(result.code, failures(result)).toBe(0)
  expect(result.report?.numPassedTests).toBe(5)
  // The unshared service was never reached, by any of the tries.
  expect(result.records['secret-reached']).toBe(0)
})
