// Builds the launchers shipped in the package: prebuilt/linux-x64/netns-launch
// and prebuilt/linux-arm64/netns-launch, static (one binary serves glibc and
// musl distributions), with Debian's compilers (the cross toolchain for the
// other architecture). Run by `prepack`; a missing compiler stops the pack
// with the Debian package to install. Each binary is checked before it is kept:
// the right ELF machine, and no program interpreter (really static).
import { spawnSync } from 'node:child_process'
import { readFileSync, rmSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { BuildError, compile } from './build-launcher.mjs'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
export const prebuiltDir = join(root, 'prebuilt')

const TARGETS = [
  // On an x64 host the native gcc builds x64; elsewhere the cross compiler does.
  { arch: 'x64', machine: 62, cc: process.arch === 'x64' ? 'gcc' : 'x86_64-linux-gnu-gcc', packages: process.arch === 'x64' ? 'gcc libc6-dev' : 'gcc-x86-64-linux-gnu libc6-dev-amd64-cross' },
  { arch: 'arm64', machine: 183, cc: process.arch === 'arm64' ? 'gcc' : 'aarch64-linux-gnu-gcc', packages: process.arch === 'arm64' ? 'gcc libc6-dev' : 'gcc-aarch64-linux-gnu libc6-dev-arm64-cross' },
]

/** e_machine and whether a PT_INTERP header exists, from a 64-bit little-endian ELF file. */
export function elfInfo(path) {
  const data = readFileSync(path)
  if (data.length < 64 || data.readUInt32BE(0) !== 0x7f454c46 || data[4] !== 2 || data[5] !== 1) throw new BuildError(`${path} is not a 64-bit little-endian ELF file`)
  const machine = data.readUInt16LE(18)
  const phoff = Number(data.readBigUInt64LE(32))
  const phentsize = data.readUInt16LE(54)
  const phnum = data.readUInt16LE(56)
  if (phoff + phentsize * phnum > data.length) throw new BuildError(`${path}: program headers past the end of the file`)
  let interpreter = false
  for (let i = 0; i < phnum; i++) if (data.readUInt32LE(phoff + i * phentsize) === 3 /* PT_INTERP */) interpreter = true
  return { machine, interpreter }
}

function main() {
  if (process.platform !== 'linux') throw new BuildError('the prebuilt launchers are built on Linux (Debian or Ubuntu, with their cross compilers)')
  for (const target of TARGETS) {
    const output = join(prebuiltDir, `linux-${target.arch}`, 'netns-launch')
    const found = spawnSync(target.cc, ['--version'], { stdio: 'ignore' })
    if (found.error || found.status !== 0) {
      throw new BuildError(`no compiler for linux-${target.arch}: '${target.cc}' is not on PATH. Install it: apt-get install ${target.packages}`)
    }
    rmSync(output, { force: true })
    try {
      compile({ output, cc: target.cc, staticOnly: true, strip: true })
    } catch (error) {
      if (error instanceof BuildError) throw new BuildError(`linux-${target.arch}: ${error.message}\n(the static C library comes with: apt-get install ${target.packages})`)
      throw error
    }
    const { machine, interpreter } = elfInfo(output)
    if (machine !== target.machine || interpreter) {
      rmSync(output, { force: true })
      throw new BuildError(`linux-${target.arch}: ${target.cc} made ${interpreter ? 'a dynamic' : 'a'} binary for ELF machine ${machine}, not a static one for ${target.machine}`)
    }
    console.log(`vitest-environment-netns: built ${output} (static, ${readFileSync(output).length} bytes)`)
  }
}

try {
  main()
} catch (error) {
  if (!(error instanceof BuildError)) throw error
  console.error(`vitest-environment-netns: build-prebuilt: ${error.message}`)
  process.exitCode = 1
}
