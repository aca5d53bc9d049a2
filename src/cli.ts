#!/usr/bin/env node
// vitest-environment-netns: the package's command line (its bin). Parses the
// arguments strictly: `doctor [--json]`, `--version`, `--help`; anything else
// is an error naming it and what is accepted (exit 2).
import { readFileSync } from 'node:fs'

const NAME = 'vitest-environment-netns'
const USAGE = [
  `usage: ${NAME} doctor [--json]`,
  `       ${NAME} --version | --help`,
  '',
  '  doctor     checks whether netns test files can run here, and how to fix what blocks them',
  '             (exit 0: they can; 1: they cannot)',
  '    --json   the same report as JSON, for scripts',
].join('\n')

const COMMAND_OPTIONS = ['--json', '--help']
const TOP_OPTIONS = ['--version', '--help']

/** The version in this package's package.json (validated: it is read from a file). */
function version(): string {
  const manifest: unknown = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'))
  const value = (manifest as { version?: unknown } | null)?.version
  if (typeof value !== 'string' || !value) throw new Error(`${NAME}: its package.json has no version`)
  return value
}

function fail(problem: string): void {
  console.error(`${NAME}: ${problem}\n\n${USAGE}`)
  process.exitCode = 2
}

const [command, ...args] = process.argv.slice(2)
if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
  console.log(USAGE)
} else if (command === '--version' || command === '-v') {
  console.log(version())
} else if (command === 'doctor') {
  const unknown = args.find((arg) => !COMMAND_OPTIONS.includes(arg))
  if (unknown !== undefined) {
    fail(`${unknown.startsWith('-') ? 'unknown option' : 'unexpected argument'} '${unknown}' for doctor; its options are ${COMMAND_OPTIONS.join(', ')}.`)
  } else if (args.includes('--help')) {
    console.log(USAGE)
  } else {
    const { formatReport, runDoctor } = await import('./doctor.js')
    const report = await runDoctor()
    console.log(args.includes('--json') ? JSON.stringify(report, null, 2) : formatReport(report))
    process.exitCode = report.ok ? 0 : 1
  }
} else if (command.startsWith('-')) {
  fail(`unknown option '${command}'; the options are ${TOP_OPTIONS.join(', ')}.`)
} else {
  fail(`unknown command '${command}'; the command is doctor.`)
}
