// Module loading and attachments of netns files (issue 8, part 5). Vitest's
// main process loads a worker's modules and copies its attachments with the
// host's view of the filesystem; the sandbox's /tmp and /proc are its own. So
// the host's /tmp gets files with the names the fixture (fixtures/modules) uses,
// with other contents: a netns file must see its own, or a clear refusal,
// never the host's.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, test } from 'vitest'
import { outDir, runFixture, type RunResult } from './helpers'
import { expectFilePassed, unique } from './isolation-helpers'

const id = unique('netns-modules')
const hostFiles = {
  module: `/tmp/${id}.mjs`,
  own: `/tmp/${id}-own.mjs`,
  text: `/tmp/${id}.txt`,
  attachment: `/tmp/${id}-attach.txt`,
  frame: `/tmp/${id}-frame.js`,
}
mkdirSync(outDir, { recursive: true })
const linkDir = mkdtempSync(join(outDir, 'modules-link-'))
const link = join(linkDir, 'link.mjs')
writeFileSync(hostFiles.module, "export const who = 'host'\n")
writeFileSync(hostFiles.own, "export const who = 'host'\n")
writeFileSync(hostFiles.text, 'host secret\n')
writeFileSync(hostFiles.attachment, 'host attachment\n')
writeFileSync(hostFiles.frame, "const leaked = 'host-frame-secret'\n")
symlinkSync(hostFiles.module, link)
afterAll(() => {
  for (const file of Object.values(hostFiles)) rmSync(file, { force: true })
  rmSync(linkDir, { recursive: true, force: true })
})

let run: Promise<RunResult> | undefined
const fixtureRun = () => (run ??= runFixture('modules', { env: { MODULES_ID: id, MODULES_LINK: link } }))
async function records(): Promise<Record<string, any>> {
  const result = await fixtureRun()
  expectFilePassed(result, 'modules.test.ts')
  return result.records
}

const refusal = /vitest-environment-netns: /

describe("paths in the sandbox's private places load from the sandbox's view", () => {
  test("a module only the host's /tmp has is not found, and the host's is not loaded", async () => {
    const { hostModule } = await records()
    expect(hostModule).toMatchObject({ ok: false, code: 'ERR_MODULE_NOT_FOUND' })
    expect(hostModule.message).toContain(`/tmp/${id}.mjs`)
  })

  test("where both have a module of the same name, the sandbox's is loaded", async () => {
    const { ownModule } = await records()
    expect(ownModule).toEqual({ ok: true, value: 'sandbox' })
  })

  test('a module the test writes into its /tmp loads, with its relative import', async () => {
    const { generated } = await records()
    expect(generated).toEqual({ ok: true, value: 'gen:dep' })
  })
})

describe('what the sandbox cannot be served from its own view is refused, clearly', () => {
  test("?raw of a /tmp file: a refusal naming the path and the fix, not the host's content", async () => {
    const { raw } = await records()
    expect(raw.tmp.ok, JSON.stringify(raw.tmp)).toBe(false)
    expect(raw.tmp.message).toMatch(refusal)
    expect(raw.tmp.message).toContain(`/tmp/${id}.txt`)
    expect(raw.tmp.message).toContain('readFileSync')
    expect(raw.tmp.message).not.toContain('host secret')
  })

  test("?raw of /proc/1/comm: a refusal, not the host's pid 1", async () => {
    const { raw } = await records()
    const hostComm = readFileSync('/proc/1/comm', 'utf8').trim()
    expect(raw.proc.ok, JSON.stringify(raw.proc)).toBe(false)
    expect(raw.proc.message).toMatch(refusal)
    expect(raw.proc.message).toContain("the sandbox's own /proc")
    expect(raw.sandboxComm).not.toBe('')
    if (hostComm !== raw.sandboxComm) expect(raw.proc.message).not.toContain(hostComm)
  })

  test("a link outside /tmp into the host's /tmp is refused, as module, as ?raw and without its extension", async () => {
    const { link: linked } = await records()
    for (const outcome of [linked.module, linked.raw, linked.extensionless]) {
      expect(outcome.ok, JSON.stringify(outcome)).toBe(false)
      expect(outcome.message).toMatch(refusal)
      expect(outcome.message).toContain(`/tmp/${id}.mjs`)
      expect(outcome.message).not.toContain("who = 'host'")
    }
  })
})

test('fetch requests a test sends itself are checked the same, and malformed ones refused', async () => {
  const { craftedFetch } = await records()
  expect(Object.keys(craftedFetch)).toEqual(['plain', 'arrayLikeArguments', 'methodAsStringObject', 'methodAsArray', 'urlAsStringObject'])
  for (const [name, answer] of Object.entries<{ error?: string; result?: string }>(craftedFetch)) {
    expect(answer.result, `${name}: ${JSON.stringify(answer)}`).toBeUndefined()
    expect(answer.error, name).toMatch(refusal)
  }
})

describe('attachments', () => {
  test("annotate() with a path in /tmp attaches the sandbox's file, not the host's", async () => {
    const { annotate } = await records()
    expect(annotate).toEqual({ content: 'sandbox attachment\n', contentType: 'text/plain' })
  })

  test("an attachment request that names /tmp, sent past the worker's code, is refused by the pool", async () => {
    const { crafted } = await records()
    expect(crafted.content).toBeUndefined()
    expect(crafted.error).toMatch(refusal)
    expect(crafted.error).toContain(`/tmp/${id}-attach.txt`)
    expect(crafted.error).toContain('body')
  })
})

test("a failed test's code frame is not read from the host's /tmp", async () => {
  const result = await fixtureRun()
  const output = result.stdout + result.stderr
  expect(output).toContain('crafted frame error') // code-frame.test.ts failed, and Vitest printed its error
  expect(output).not.toContain('host-frame-secret')
})
