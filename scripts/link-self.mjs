// Makes `vitest-environment-netns` resolvable by name from the fixtures and
// the example project, as it would be from a user's node_modules.
import { lstatSync, symlinkSync, mkdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const link = join(root, 'node_modules', 'vitest-environment-netns')
try {
  lstatSync(link)
} catch {
  mkdirSync(dirname(link), { recursive: true })
  symlinkSync('..', link, 'dir')
}
