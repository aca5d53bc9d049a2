// Builds the native launcher (native/netns-launch.c) with the machine's C
// compiler. Without a compiler the package still works: the launcher module
// falls back to a chain of util-linux tools (slower, see docs/how-it-works.md).
import { spawnSync } from 'node:child_process'
import { mkdirSync, existsSync, readdirSync, statSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const nativeDir = join(root, 'native')
const sources = readdirSync(nativeDir).filter((f) => /\.[ch]$/.test(f)).map((f) => join(nativeDir, f))
const output = join(root, 'build', 'netns-launch')
const quiet = process.argv.includes('--quiet')

if (process.platform !== 'linux') process.exit(0)
const newest = Math.max(...sources.map((f) => statSync(f).mtimeMs))
if (existsSync(output) && statSync(output).mtimeMs >= newest) process.exit(0)
mkdirSync(dirname(output), { recursive: true })

const compiler = process.env.CC || 'cc'
const base = ['-O2', '-Wall', '-o', output, ...sources.filter((f) => f.endsWith('.c'))]
// Static first: no dynamic loader at every worker start. Not every libc ships a static archive.
for (const extra of [['-static'], []]) {
  const result = spawnSync(compiler, [...extra, ...base], { stdio: quiet ? 'ignore' : 'inherit' })
  if (result.status === 0) {
    if (!quiet) console.log(`vitest-environment-netns: built ${output}${extra.length ? ' (static)' : ''}`)
    process.exit(0)
  }
}
console.warn(
  `vitest-environment-netns: could not build the native launcher with '${compiler}'. ` +
    'Workers will start through util-linux tools instead: much slower (about ten process starts per test file), and no attempt recording. ' +
    'Install a C compiler (Debian/Ubuntu: apt-get install gcc libc6-dev) and reinstall to get the fast path.',
)
