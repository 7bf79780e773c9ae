/**
 * The docs say what the code does: cheap checks that fail when README.md,
 * docs/ARCHITECTURE.md or docs/FORMAT.md drift from the code they describe.
 *
 * - the record kinds of FORMAT.md §5.10 and §5.10.1 are `META_RECORD_KINDS`;
 * - README's exit-code table is `EXIT_CODES`, in both directions;
 * - README's command table is oclif's list of commands (and the files
 *   under packages/cli/src/commands), and nothing else;
 * - every section cited with `§` exists. Convention: a citation names its
 *   document (`docs/FORMAT.md §5.10`, `ARCHITECTURE.md §4.3`, or `FORMAT.md`
 *   / `ARCHITECTURE` without the path); the `§`s that follow it in one list
 *   (`§5.8, §5.9`, `§4.8 and §10`, `§10.1–§10.3`) cite the same document; a
 *   bare `§` cites FORMAT.md inside FORMAT.md and ARCHITECTURE.md anywhere
 *   else;
 * - every bound in ARCHITECTURE §16, and every magic number and format
 *   version in FORMAT.md §1, has the value its constant has;
 * - every module under packages/<pkg>/src is listed, by its path under
 *   src/, in its package's part of ARCHITECTURE §1.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, relative, resolve, sep } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { META_RECORD_KINDS } from '@cowvol/cow-core';
import { EXIT_CODES } from '@cowvol/cli';

const ROOT = resolve(import.meta.dirname, '..');
const read = (path: string): string => readFileSync(join(ROOT, path), 'utf8');

/** Every file under `dir` (relative to ROOT) whose name ends with `ext`, as paths relative to `dir`, `/`-separated. */
function filesUnder(dir: string, ext: string): string[] {
  const base = join(ROOT, dir);
  const found: string[] = [];
  const walk = (at: string): void => {
    for (const entry of readdirSync(at, { withFileTypes: true })) {
      const path = join(at, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (entry.name.endsWith(ext)) found.push(relative(base, path).split(sep).join('/'));
    }
  };
  walk(base);
  return found.sort();
}

/** The text of the section whose heading line starts with `heading`, up to the next heading of the same or a higher level. */
function section(markdown: string, heading: string): string {
  const lines = markdown.split('\n');
  const start = lines.findIndex((line) => line.startsWith(heading));
  if (start < 0) throw new Error(`no heading "${heading}"`);
  const level = /^#+/.exec(heading)?.[0].length ?? 0;
  let end = start + 1;
  while (end < lines.length) {
    const hashes = /^(#+) /.exec(lines[end] ?? '')?.[1];
    if (hashes !== undefined && hashes.length <= level) break;
    end++;
  }
  return lines.slice(start, end).join('\n');
}

/** The cells of every table row of `text` (header and separator rows included). */
function tableRows(text: string): string[][] {
  return text
    .split('\n')
    .filter((line) => line.startsWith('|'))
    .map((line) =>
      line
        .split('|')
        .slice(1, -1)
        .map((cell) => cell.trim()),
    );
}

/** The `code` spans of a piece of markdown. */
const codeSpans = (text: string): string[] => [...text.matchAll(/`([^`]+)`/g)].map((m) => m[1] ?? '');

/** The section numbers of a document's headings (`## 4.`, `### 4.13`, `#### 5.10.1`). */
function sectionNumbers(markdown: string): Set<string> {
  return new Set([...markdown.matchAll(/^#{2,4} (\d+(?:\.\d+)*)\.? /gm)].map((m) => m[1] ?? ''));
}

/** A value as the bounds table writes it: `4096`, `4 MiB`, `64 KiB`, `2^52`. */
function documentedNumber(text: string): number {
  const power = /^(\d+)\^(\d+)$/.exec(text);
  if (power) return Number(power[1]) ** Number(power[2]);
  const sized = /^(\d+) (KiB|MiB|GiB)$/.exec(text);
  if (sized) return Number(sized[1]) * 1024 ** (['KiB', 'MiB', 'GiB'].indexOf(sized[2] ?? '') + 1);
  return /^\d+$/.test(text) ? Number(text) : NaN;
}

/** The numbers a constant's definition holds: `4 * 1024 * 1024`, `2 ** 52`, or each value of an object literal, in order. */
function definedNumbers(expression: string): number[] {
  const parts = expression.trim().startsWith('{') ? [...expression.matchAll(/:\s*([^,}]+)/g)].map((m) => m[1] ?? '') : [expression];
  return parts.map((part) => {
    const power = /^\s*(\d+) \*\* (\d+)\s*$/.exec(part);
    if (power) return Number(power[1]) ** Number(power[2]);
    const factors = part.split('*').map((f) => f.trim().replaceAll('_', ''));
    return factors.every((f) => /^\d+$/.test(f)) ? factors.reduce((product, f) => product * Number(f), 1) : NaN;
  });
}

/** The part of @oclif/core this test uses (a dependency of the CLI package, not of the repository root). */
interface OclifCore {
  Config: { load(options: { root: string }): Promise<{ commands: Array<{ id: string; hidden?: boolean; pluginName?: string }> }> };
}

interface Citation {
  file: string;
  doc: 'ARCHITECTURE' | 'FORMAT';
  section: string;
}

/** Every `§` citation of `text` (see the convention above). */
function citations(file: string, text: string): Citation[] {
  const fallback = file === 'docs/FORMAT.md' ? 'FORMAT' : 'ARCHITECTURE';
  const list = /(?:(?:docs\/)?(ARCHITECTURE|FORMAT)(?:\.md)?\s+)?§(\d+(?:\.\d+)*)((?:(?:\s*,\s*|\s+and\s+|\s+or\s+|\s*–\s*)§\d+(?:\.\d+)*)*)/g;
  const found: Citation[] = [];
  for (const m of text.matchAll(list)) {
    const doc = (m[1] ?? fallback) as Citation['doc'];
    for (const n of [m[2] ?? '', ...[...(m[3] ?? '').matchAll(/§(\d+(?:\.\d+)*)/g)].map((x) => x[1] ?? '')]) {
      found.push({ file, doc, section: n });
    }
  }
  return found;
}

describe('docs match the code', () => {
  it('FORMAT.md §5.10 lists exactly the journal record kinds of MetaRecord', () => {
    const records = section(read('docs/FORMAT.md'), '### 5.10 ');
    const tables = records.split(/\n(?=\| record \|)/).slice(1);
    expect(tables.length).toBeGreaterThan(0);
    const listed = tables.flatMap((table) =>
      tableRows(table.split('\n\n')[0] ?? '')
        .slice(2)
        .map((cells) => /^`([a-z]+)`$/.exec(cells[0] ?? '')?.[1] ?? `(not a kind: ${String(cells[0])})`),
    );
    expect(new Set(listed).size).toBe(listed.length);
    expect([...listed].sort()).toEqual([...META_RECORD_KINDS].sort());
  });

  it("README's exit-code table is EXIT_CODES, both ways", () => {
    const rows = tableRows(section(read('README.md'), '### Exit codes')).filter((cells) => /^\d+$/.test(cells[0] ?? ''));
    const documented: Record<string, number> = {};
    for (const cells of rows) {
      for (const code of codeSpans(cells[1] ?? '')) {
        expect(documented[code], `${code} listed twice`).toBeUndefined();
        documented[code] = Number(cells[0]);
      }
    }
    expect(documented).toEqual({ ...EXIT_CODES });
  });

  it("README's command table lists every command oclif finds, and nothing else", async () => {
    const cli = join(ROOT, 'packages/cli');
    const requireFromCli = createRequire(join(cli, 'package.json'));
    const oclif = (await import(pathToFileURL(requireFromCli.resolve('@oclif/core')).href)) as OclifCore;
    const config = await oclif.Config.load({ root: cli });
    // Commands a user sees: the CLI's own (one file each) and its plugins' (autocomplete); hidden ones are not documented.
    const visible = config.commands.filter((c) => c.hidden !== true);
    const fromOclif = visible.map((c) => c.id.split(':').join(' ')).sort();
    const own = visible
      .filter((c) => c.pluginName === '@cowvol/cli')
      .map((c) => c.id.split(':').join(' '))
      .sort();
    const fromFiles = filesUnder('packages/cli/src/commands', '.ts').map((f) => f.slice(0, -'.ts'.length).split('/').join(' '));
    expect(own).toEqual(fromFiles);
    const documented = tableRows(section(read('README.md'), '### Commands'))
      .slice(2)
      .map((cells) => /^`cowvol ([a-z -]+)`$/.exec(cells[0] ?? '')?.[1] ?? `(not a command: ${String(cells[0])})`);
    expect(new Set(documented).size).toBe(documented.length);
    expect([...documented].sort()).toEqual(fromOclif);
  });

  it('every § cited in sources, tests and docs names a section that exists', () => {
    const sections = {
      ARCHITECTURE: sectionNumbers(read('docs/ARCHITECTURE.md')),
      FORMAT: sectionNumbers(read('docs/FORMAT.md')),
    };
    const files = [
      ...readdirSync(join(ROOT, 'packages')).flatMap((pkg) =>
        ['src', 'test'].filter((dir) => existsSync(join(ROOT, 'packages', pkg, dir))).flatMap((dir) => filesUnder(`packages/${pkg}/${dir}`, '.ts').map((f) => `packages/${pkg}/${dir}/${f}`)),
      ),
      ...filesUnder('test', '.ts')
        .filter((f) => f !== 'docs-drift.test.ts') // its own comment shows the convention
        .map((f) => `test/${f}`),
      'README.md',
      'docs/ARCHITECTURE.md',
      'docs/FORMAT.md',
      'docs/PERFORMANCE.md',
    ];
    const all = files.flatMap((file) => citations(file, read(file)));
    expect(all.length).toBeGreaterThan(100);
    const missing = all.filter((c) => !sections[c.doc].has(c.section)).map((c) => `${c.file}: ${c.doc} §${c.section}`);
    expect(missing).toEqual([]);
  });

  it('ARCHITECTURE §16 gives every bound the value its constant has', () => {
    // The first table: constants. (The second lists options and derived limits.)
    const bounds = section(read('docs/ARCHITECTURE.md'), '## 16. ');
    const firstTable = bounds.slice(bounds.indexOf('\n|')).split('\n\n')[0] ?? '';
    const rows = tableRows(firstTable).slice(2);
    expect(rows.length).toBeGreaterThan(30);
    const wrong: string[] = [];
    for (const [constant = '', pkg = '', value = ''] of rows) {
      const name = /^`([A-Z_]+)`$/.exec(constant)?.[1] ?? '';
      const definitions = filesUnder(`packages/${pkg}/src`, '.ts').flatMap((file) => [
        ...read(`packages/${pkg}/src/${file}`).matchAll(new RegExp(`^(?:export )?const ${name}\\b[^=]*= ([^;]+);`, 'gm')),
      ]);
      const documented = value.split(', ').map(documentedNumber);
      if (name === '' || definitions.length !== 1) wrong.push(`${constant} (${pkg}): ${definitions.length} definitions`);
      else if (JSON.stringify(definedNumbers(definitions[0]?.[1] ?? '')) !== JSON.stringify(documented)) wrong.push(`${name} (${pkg}): documented ${value}, defined ${String(definitions[0]?.[1])}`);
    }
    expect(wrong).toEqual([]);
  });

  it("FORMAT.md §1's magic numbers and format versions are the constants' values", () => {
    const constants = section(read('docs/FORMAT.md'), '## 1. ');
    const rows = [section(constants, '### Magic numbers'), section(constants, '### Format versions')].flatMap((part) => tableRows(part).slice(2));
    expect(rows.length).toBeGreaterThan(10);
    const sources = readdirSync(join(ROOT, 'packages')).flatMap((pkg) => filesUnder(`packages/${pkg}/src`, '.ts').map((f) => read(`packages/${pkg}/src/${f}`)));
    const wrong: string[] = [];
    for (const [constant = '', value = ''] of rows) {
      const name = /^`([A-Z_]+)`$/.exec(constant)?.[1] ?? '';
      const definitions = sources.flatMap((text) => [...text.matchAll(new RegExp(`^export const ${name} = (0x[0-9a-f]+|\\d+);`, 'gm'))].map((m) => Number(m[1])));
      const documented = Number(/^`?(0x[0-9A-Fa-f]+|\d+)`?$/.exec(value)?.[1] ?? NaN);
      if (name === '' || definitions.length !== 1 || definitions[0] !== documented) wrong.push(`${constant} = ${value}: defined ${JSON.stringify(definitions)}`);
    }
    expect(wrong).toEqual([]);
  });

  it('ARCHITECTURE §1 lists every module of every package under its package', () => {
    const map = section(read('docs/ARCHITECTURE.md'), '## 1. ');
    const unlisted: string[] = [];
    for (const pkg of readdirSync(join(ROOT, 'packages')).sort()) {
      const part = section(map, `### \`packages/${pkg}\``);
      const listed = new Set(codeSpans(part));
      for (const file of filesUnder(`packages/${pkg}/src`, '.ts')) {
        if (!listed.has(file)) unlisted.push(`packages/${pkg}/src/${file}`);
      }
    }
    expect(unlisted).toEqual([]);
  });
});
