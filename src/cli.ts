#!/usr/bin/env node
// vitest-netns: the package's command line. `vitest-netns doctor [--json]`.
import { formatReport, runDoctor } from './doctor.js'

const [command, ...args] = process.argv.slice(2)
if (command === 'doctor') {
  const report = await runDoctor()
  console.log(args.includes('--json') ? JSON.stringify(report, null, 2) : formatReport(report))
  process.exitCode = report.ok ? 0 : 1
} else {
  console.error('usage: vitest-netns doctor [--json]\n  Checks whether netns test files can run here, and how to fix what blocks them.')
  process.exitCode = command === undefined || command === '--help' || command === '-h' ? 0 : 2
}
