import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CowvolError } from '@cowvol/base';
import { MAX_LABELS, MAX_LABEL_VALUE_CHARS, Volume, escapeTerminalText, parseLabel, validateLabels } from '../src/index.js';

/**
 * Label rules (README "Labels"): values refuse every code point a terminal
 * would act on or reorder, keys refuse `__proto__`; everything else
 * round-trips as given.
 */
function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    if (err instanceof CowvolError) return err.code;
    throw err;
  }
  return 'ACCEPTED';
}

describe('label values', () => {
  it('refuses C0, DEL, every C1 control, line/paragraph separators, bidi controls and lone surrogates', () => {
    const refused: number[] = [];
    for (let c = 0; c <= 0x1f; c++) refused.push(c);
    for (let c = 0x7f; c <= 0x9f; c++) refused.push(c);
    refused.push(0x061c, 0x200e, 0x200f, 0x2028, 0x2029, 0x202a, 0x202b, 0x202c, 0x202d, 0x202e, 0x2066, 0x2067, 0x2068, 0x2069, 0xd800, 0xdfff);
    for (const c of refused) {
      const value = `a${String.fromCharCode(c)}b`;
      expect(
        codeOf(() => validateLabels({ k: value })),
        `U+${c.toString(16)}`,
      ).toBe('INVALID_LABEL');
      expect(
        codeOf(() => parseLabel(`k=${value}`)),
        `U+${c.toString(16)}`,
      ).toBe('INVALID_LABEL');
    }
  });

  it('accepts printable text, other scripts, emoji (a surrogate pair) and the characters next to the refused ranges', () => {
    for (const value of ['', 'nightly', 'höst', '日本語', 'a 🚀 b', '\u00a0nbsp', '\u00a1', '\u2027', '\u202f', '\u2065', '\u206a', 'x=y=z']) {
      expect(
        codeOf(() => validateLabels({ k: value })),
        JSON.stringify(value),
      ).toBe('ACCEPTED');
      expect(parseLabel(`k=${value}`)).toEqual(['k', value]);
    }
  });
});

describe('label keys', () => {
  it('refuses __proto__ whether given as key=value or as an own key of a parsed map; accepts other Object property names', () => {
    expect(codeOf(() => parseLabel('__proto__=x'))).toBe('INVALID_LABEL');
    expect(codeOf(() => validateLabels(JSON.parse('{"__proto__":"x"}') as Record<string, string>))).toBe('INVALID_LABEL');
    for (const key of ['constructor', 'toString', 'hasOwnProperty', '__proto_', 'prototype', 'valueOf']) {
      expect(parseLabel(`${key}=v`)).toEqual([key, 'v']);
    }
  });
});

describe('escapeTerminalText', () => {
  it('escapes exactly the refused code points, as \\u{XXXX}', () => {
    expect(escapeTerminalText('ok \u009b[2J \u202e \u0007 \ud800 ✓')).toBe('ok \\u{009B}[2J \\u{202E} \\u{0007} \\u{D800} ✓');
    expect(escapeTerminalText('plain, 日本語 and 🚀')).toBe('plain, 日本語 and 🚀');
  });
});

describe('labels against the volume block size (one journal record, FORMAT §6.7)', () => {
  /** The most labels the rules allow: MAX_LABELS values of MAX_LABEL_VALUE_CHARS characters. */
  const largest = Object.fromEntries(Array.from({ length: MAX_LABELS }, (_, i) => [`key-${String(i).padStart(2, '0')}`, 'v'.repeat(MAX_LABEL_VALUE_CHARS)]));

  it('a 4 KiB-block volume refuses them with INVALID_LABEL at create and at a label change, changing nothing; a 64 KiB-block volume takes them', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cowvol-labels-'));
    try {
      const small = await Volume.create(join(dir, 'small.img'), { sizeBytes: 1 << 20, blockSizeBytes: 4096 });
      try {
        await expect(small.createSnapshot('big', { labels: largest })).rejects.toMatchObject({ code: 'INVALID_LABEL' });
        expect(await small.listSnapshots()).toEqual([]);
        await small.createSnapshot('s', { labels: { keep: 'yes' } });
        await expect(small.setSnapshotLabels('s', largest)).rejects.toMatchObject({ code: 'INVALID_LABEL' });
        expect((await small.listSnapshots())[0]?.labels).toEqual({ keep: 'yes' });
      } finally {
        await small.close();
      }
      const large = await Volume.create(join(dir, 'large.img'), { sizeBytes: 1 << 20, blockSizeBytes: 65536 });
      try {
        await large.createSnapshot('big', { labels: largest });
        expect((await large.listSnapshots())[0]?.labels).toEqual(largest);
      } finally {
        await large.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
