// Recognises failures caused by the missing network, so the report can say
// why at once instead of leaving the user to guess.
const ALWAYS = new Set(['ENETUNREACH', 'EHOSTUNREACH', 'EAI_AGAIN', 'ENOTFOUND'])
const LOOPBACK = /^(127\.|::1$|::ffff:127\.|localhost$)/

interface ErrorLike {
  code?: unknown
  address?: unknown
  syscall?: unknown
  hostname?: unknown
  cause?: unknown
  errors?: unknown
  message?: unknown
  stack?: unknown
}

function reason(error: ErrorLike | undefined, depth = 0): string | undefined {
  if (!error || typeof error !== 'object' || depth > 4) return undefined
  const code = typeof error.code === 'string' ? error.code : undefined
  const address = typeof error.address === 'string' ? error.address : undefined
  if (code && ALWAYS.has(code)) return `${code}${address ? ` ${address}` : typeof error.hostname === 'string' ? ` ${error.hostname}` : ''}`
  // With attempt recording, an outside TCP connect is reset (ECONNREFUSED) and a UDP send refused (EPERM).
  if (code === 'ECONNREFUSED' && address && !LOOPBACK.test(address)) return `${code} ${address}`
  if (code === 'EPERM' && (error.syscall === 'send' || error.syscall === 'connect')) return `${code} ${error.syscall}`
  const nested = [error.cause, ...(Array.isArray(error.errors) ? error.errors : [])]
  for (const inner of nested) {
    const found = reason(inner as ErrorLike, depth + 1)
    if (found) return found
  }
  return undefined
}

export const HINT =
  'vitest-environment-netns: this file runs without network access (a network namespace with only loopback). ' +
  'Mock the request (nock, msw), serve it on 127.0.0.1 inside the test, or run this file in another environment.'

/** Appends the hint to a (serialized) test error that a blocked network caused. Returns whether it did. */
export function annotateNetworkError(error: ErrorLike): boolean {
  const why = reason(error)
  if (!why || typeof error.message !== 'string' || error.message.includes(HINT)) return false
  const before = error.message
  error.message += `\n\n${HINT} (${why})`
  // Some reporters (json, junit) print the stack, which starts with the message.
  if (typeof error.stack === 'string') error.stack = error.stack.replace(before, error.message)
  return true
}
