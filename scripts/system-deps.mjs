// The system tools this repository's own commands need besides Node and npm,
// checked before they start (package.json's pretest and preexample):
//   example  a C compiler and libc headers: the uplink tests of fixtures/example
//            need the native launcher, which `npm run build` compiles in a clone;
//   test     that, plus every tool the tests and fixtures run (list below).
// As root with apt-get (Debian, Ubuntu), the missing packages are installed with
// one `apt-get install`, named first. Otherwise one line names what to install
// and the command stops: most test files start runs that need one of these
// tools, so skipping them would leave a green run that tested little.
//
//   node scripts/system-deps.mjs example|test
import { spawnSync } from 'node:child_process'
import { accessSync, constants, existsSync, readdirSync } from 'node:fs'
import { join } from 'node:path'

/** Each tool, the Debian package that ships it, and what needs it. */
const TOOLS = {
  example: [
    { tool: 'cc', pkg: 'gcc' }, // builds the native launcher and the tests' C helpers
    { file: '/usr/include/stdio.h', tool: 'libc headers', pkg: 'libc6-dev' }, // the same builds
  ],
  test: [
    { tool: 'redis-server', pkg: 'redis-server' }, // the uplink fixture's host services
    { tool: 'nft', pkg: 'nftables' }, // root-mode checks of the uplink tables
    { tool: 'pasta', pkg: 'passt' }, // rootless egress past the machine
    { tool: 'strace', pkg: 'strace' }, // slows the hub relay down in an uplink test
    { tool: 'curl', pkg: 'curl' }, // a child process reaching shared host ports
    { tool: 'keyctl', pkg: 'keyutils' }, // the shell launcher's fresh session keyring
    { tool: 'openssl', pkg: 'openssl' }, // the real-suite fixture's certificates
    { tool: 'ip', pkg: 'iproute2' }, // the shell launcher and the uplink fixtures
    ...['unshare', 'setpriv', 'nsenter', 'ipcmk', 'ipcs', 'ipcrm'].map((tool) => ({ tool, pkg: 'util-linux' })),
    { tool: 'mount', pkg: 'mount' }, // the shell launcher
    { tool: 'hostname', pkg: 'hostname' }, // the kernel-state fixture
  ],
}

const PREFIX = 'vitest-environment-netns'

function fail(message) {
  console.error(`\n${PREFIX}: ${message}\n`)
  process.exit(1)
}

const profile = process.argv[2]
if (process.argv.length !== 3 || !(profile in TOOLS)) fail(`usage: node scripts/system-deps.mjs example|test (got: ${process.argv.slice(2).join(' ') || 'nothing'})`)
if (process.platform !== 'linux') fail(`this project runs on Linux only (this is ${process.platform})`)

const wanted = profile === 'test' ? [...TOOLS.example, ...TOOLS.test] : TOOLS.example

/** Like the package's findTool: PATH, then the sbin directories an ordinary user's PATH lacks. */
function present({ tool, file }) {
  if (file) return existsSync(file)
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':').concat(['/usr/sbin', '/sbin'])) {
    try {
      if (dir) {
        accessSync(join(dir, tool), constants.X_OK)
        return true
      }
    } catch {}
  }
  return false
}

const missingNow = () => wanted.filter((entry) => !present(entry))
const packagesOf = (entries) => [...new Set(entries.map((entry) => entry.pkg))]
const hasApt = () => present({ tool: 'apt-get' })

const missing = missingNow()
if (missing.length === 0) process.exit(0)

const tools = missing.map((entry) => entry.tool).join(', ')
const packages = packagesOf(missing)
const command = `apt-get install ${packages.join(' ')}`
const root = process.getuid?.() === 0
const what = profile === 'test' ? 'npm test' : 'npm run example'

if (!root) {
  const how = hasApt() ? `install them with: sudo ${command}` : `install them with your package manager (Debian/Ubuntu packages: ${packages.join(' ')})`
  fail(`${what} needs tools that are not installed (${tools}): ${how}`)
}
if (!hasApt()) fail(`${what} needs tools that are not installed (${tools}), and there is no apt-get here: install them with your package manager (Debian/Ubuntu packages: ${packages.join(' ')})`)

function apt(args) {
  // Another apt-get may be running (unattended upgrades, a first boot): wait for its lock rather than fail.
  // dpkg's progress (a few hundred lines) is shown only when the install fails; apt's errors always.
  const result = spawnSync('apt-get', ['-o', 'DPkg::Lock::Timeout=300', ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
    timeout: 900_000,
  })
  if (result.status !== 0) console.error(`${(result.stdout ?? '').trim().split('\n').slice(-30).join('\n')}\n${result.error?.message ?? ''}`.trim())
  return result.status === 0
}

/** A fresh image may have no package lists at all, so there is nothing to install from. */
function hasPackageLists() {
  try {
    return readdirSync('/var/lib/apt/lists').some((name) => name.endsWith('_Packages') || name.endsWith('_Packages.lz4'))
  } catch {
    return false
  }
}

console.log(`${PREFIX}: installing the Debian packages the ${profile === 'test' ? 'tests need' : 'example needs'} (missing: ${tools}): ${command}`)
const install = ['install', '-y', '-qq', '--no-install-recommends', ...packages]
if (!hasPackageLists()) apt(['update', '-qq'])
// Stale package lists name files the mirror no longer has: update once and retry.
if (!apt(install) && !(apt(['update', '-qq']) && apt(install))) fail(`${command} failed (its error is above); install them and run again`)
const still = missingNow()
if (still.length) fail(`still missing after ${command}: ${still.map((entry) => entry.tool).join(', ')}`)
