/**
 * The lean start against oclif, end to end (docs/ARCHITECTURE.md §1, "The
 * lean start"): the same command lines, run once with the lean start
 * required (COWVOL_LEAN_START=require: bin/run.js fails where it declines)
 * and once through oclif (COWVOL_LEAN_START=0), give the same stdout,
 * stderr and exit code — successes, `--json` documents and failures with
 * their codes alike. And the lines the lean start must leave to oclif
 * (help, USAGE errors, a repeated flag) are left to it.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cowvol, cowvolOk, jsonOf, tempDir, type RunResult } from './helpers.js';

const LEAN = { COWVOL_LEAN_START: 'require' };
const OCLIF = { COWVOL_LEAN_START: '0' };

describe('the lean start gives what oclif gives', () => {
  let dir = '';
  let cleanup: () => Promise<void> = () => Promise.resolve();
  const vol = (): string => join(dir, 'vol.img');

  beforeAll(async () => {
    ({ dir, cleanup } = await tempDir('cowvol-lean-'));
    await cowvolOk(['create', vol(), '--size', '4M']);
    await cowvolOk(['write', vol(), '--offset', '8192'], Buffer.alloc(8192, 7));
    await cowvolOk(['snapshot', 'create', vol(), 'first', '--label', 'purpose=test']);
    await cowvolOk(['write', vol()], Buffer.alloc(4096, 9));
    await cowvolOk(['snapshot', 'create', vol(), 'second']);
  });
  afterAll(() => cleanup());

  /** What a run printed; Node's warnings name the process (`(node:1234)`), which differs between runs. */
  const shown = (r: RunResult): { code: number | null; stdout: string; stderr: string } => ({
    code: r.code,
    stdout: r.stdout.toString('utf8'),
    stderr: r.stderr.replace(/\(node:\d+\)/g, '(node:PID)'),
  });

  const lines = (): string[][] => [
    ['--version'],
    ['--version', 'ignored'],
    ['info', vol()],
    ['info', vol(), '--json'],
    ['snapshot', 'list', vol()],
    ['snapshot', 'list', vol(), '--json'],
    ['snapshot', 'info', vol(), 'first', '--json'],
    ['snapshot', 'diff', vol(), 'first', 'second', '--json'],
    ['read', vol(), '--offset', '8192', '--length', '16'],
    ['snapshot', 'read', vol(), 'first', '--offset=8192', '--length=4096'],
    ['check', vol(), '--json'],
    ['status', vol(), '--json'],
    // Failures: their codes, messages and JSON error documents.
    ['snapshot', 'info', vol(), 'missing', '--json'],
    ['snapshot', 'info', vol(), 'missing'],
    ['info', join(dir, 'absent.img')],
    ['info', join(dir, 'absent.img'), '--json'],
    ['read', vol(), '--offset', '5000'],
    ['snapshot', 'rename', vol(), 'missing', 'other'],
    ['snapshot', 'list', vol(), '--wait', 'soon'],
  ];

  it('for reports, reads and failures', async () => {
    for (const args of lines()) {
      const lean = await cowvol(args, { env: LEAN });
      const oclif = await cowvol(args, { env: OCLIF });
      expect(shown(lean), args.join(' ')).toEqual(shown(oclif));
    }
  });

  it('for changes: the same snapshot made either way', async () => {
    const a = await cowvol(['snapshot', 'create', vol(), 'by-lean', '--label', 'k=v', '--json'], { env: LEAN });
    const b = await cowvol(['snapshot', 'create', vol(), 'by-oclif', '--label', 'k=v', '--json'], { env: OCLIF });
    expect(a.code, a.stderr).toBe(0);
    const shape = (r: RunResult): unknown => {
      const { createdAt, id, name, ...rest } = JSON.parse(r.stdout.toString('utf8')) as Record<string, unknown>;
      return { createdAt: typeof createdAt, id: typeof id, name: typeof name, rest };
    };
    expect(shape(a)).toEqual(shape(b));
    // A positional right after a `multiple` flag's value is one more value for oclif: the lean start declines that line.
    const after = await cowvol(['snapshot', 'create', '--label', 'a=1', vol(), 'labelled'], { env: LEAN });
    expect(after.code).toBe(1);
    expect(after.stderr).toContain('COWVOL_LEAN_START=require');
  });

  it('never takes an argument from stdin, either way (oclif would fill a missing one from a stdin that is not a terminal)', async () => {
    // Live differs from `second` after this write, so a diff to `second` (stdin's text) would show.
    await cowvolOk(['write', vol(), '--offset', '65536'], Buffer.alloc(4096, 5));
    const alone = shown(await cowvol(['snapshot', 'diff', vol(), 'first', '--json'], { env: OCLIF }));
    expect(alone.stdout).toContain('65536');
    for (const env of [LEAN, OCLIF]) {
      // `to` is absent: the diff is to the live volume, whatever stdin holds.
      const piped = await cowvol(['snapshot', 'diff', vol(), 'first', '--json'], { env, input: Buffer.from('second\n') });
      expect(shown(piped), JSON.stringify(env)).toEqual(alone);
    }
    // A missing volume is USAGE (from oclif, the lean start declines the line), not a path read from stdin.
    const missing = await cowvol(['info'], { input: Buffer.from(`${vol()}\n`) });
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('USAGE');
    // A delete by filter with names on stdin deletes by the filter alone (no snapshot is older than 1000 days).
    for (const env of [LEAN, OCLIF]) {
      const del = await cowvol(['snapshot', 'delete', vol(), '--older-than', '1000d', '--json'], { env, input: Buffer.from('first\n') });
      expect(del.code, del.stderr).toBe(0);
      expect(jsonOf<{ deleted: unknown[] }>(del).deleted).toEqual([]);
    }
  });

  it('leaves help and USAGE errors to oclif', async () => {
    for (const args of [['--help'], ['snapshot', 'list', '--help'], ['snapshot', 'list'], ['info', vol(), '--nope'], ['help', 'info'], ['snapshot:list', vol()]]) {
      const lean = await cowvol(args, { env: LEAN });
      expect(lean.stderr, args.join(' ')).toContain('COWVOL_LEAN_START=require');
      // And without the knob the same line gets oclif's answer.
      const plain = shown(await cowvol(args));
      expect(plain, args.join(' ')).toEqual(shown(await cowvol(args, { env: OCLIF })));
    }
  });
});
