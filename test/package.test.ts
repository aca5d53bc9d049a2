// What the published package holds, as `npm pack` lists it: what users need
// (dist/, docs/, the launcher's sources, LICENSE), none of our tests, fixtures
// or benchmarks; and a README whose links work on the registry's page.
import { execFileSync } from 'node:child_process'
import { existsSync, readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, test } from 'vitest'
import { repoRoot } from './helpers'

const REPO = 'https://github.com/vitest-environment-netns/vitest-environment-netns'
const manifest = JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8'))
const readme = readFileSync(join(repoRoot, 'README.md'), 'utf8')

/** The files `npm pack` would put in the tarball (dist/ is built by npm test before this runs). */
function packed(): string[] {
  const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: repoRoot, encoding: 'utf8', timeout: 60_000 })
  const [entry] = JSON.parse(out) as Array<{ files: Array<{ path: string }> }>
  return entry!.files.map((file) => file.path)
}

describe('the packed package', () => {
  const files = packed()

  test('holds LICENSE, README, the built modules of every export and the bin, docs/ and the launcher sources', () => {
    const exported = Object.values(manifest.exports as Record<string, string | Record<string, string>>)
      .flatMap((target) => (typeof target === 'string' ? [target] : Object.values(target)))
      .concat(Object.values(manifest.bin as Record<string, string>))
      .map((path) => path.replace(/^\.\//, ''))
    const docs = readdirSync(join(repoRoot, 'docs')).map((name) => `docs/${name}`)
    for (const path of ['LICENSE', 'README.md', 'package.json', 'native/netns-launch.c', 'scripts/build-launcher.mjs', ...exported, ...docs]) {
      expect(files, path).toContain(path)
    }
  })

  test('holds none of our tests, fixtures, benchmarks, CI scripts or TypeScript sources', () => {
    expect(files.filter((path) => /^(test|fixtures|bench|src|\.ci|coverage|node_modules)\//.test(path) || path.endsWith('.tgz'))).toEqual([])
  })

  test('package.json names the licence, repository, homepage, issues and keywords; the bin is the package name', () => {
    expect(manifest.license).toBe('MIT')
    expect(readFileSync(join(repoRoot, 'LICENSE'), 'utf8')).toMatch(/^MIT License\n\nCopyright \(c\) 2026 the vitest-environment-netns authors\n/)
    expect(manifest.repository).toEqual({ type: 'git', url: `git+${REPO}.git` })
    expect(manifest.homepage).toBe(`${REPO}#readme`)
    expect(manifest.bugs).toEqual({ url: `${REPO}/issues` })
    expect(manifest.keywords).toContain('vitest')
    expect(Object.keys(manifest.bin)).toEqual([manifest.name])
    // Yarn PnP keeps packages in zip files: the launcher must be a file on disk, and so must the modules workers load.
    expect(manifest.preferUnplugged).toBe(true)
  })
})

describe('the README, as the registry shows it', () => {
  test('links to docs/ are absolute, to files that exist', () => {
    expect(readme).not.toMatch(/\]\((\.\/)?docs\//)
    const targets = [...readme.matchAll(new RegExp(`\\]\\(${REPO}/blob/main/([^)#]+)`, 'g'))].map((match) => match[1]!)
    expect(targets.length).toBeGreaterThan(5)
    for (const target of targets) expect(existsSync(join(repoRoot, target)), target).toBe(true)
  })

  test('the README and docs name no path of our machines, and the bin by the package name', () => {
    const texts = ['README.md', ...readdirSync(join(repoRoot, 'docs')).map((name) => `docs/${name}`)]
    for (const path of texts) {
      const text = readFileSync(join(repoRoot, path), 'utf8')
      expect(text, path).not.toMatch(/\/work\/|\/home\/(netns-ci|netnsdev)\b/)
      expect(text, path).not.toMatch(/npx vitest-netns\b|`vitest-netns doctor/)
    }
  })
})
