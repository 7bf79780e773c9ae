/**
 * The control protocol's framing as pure functions (docs/FORMAT.md §11):
 * line cutting with its bound, request validation, and the round trip of
 * requests and responses. A fast-check property feeds random bytes cut
 * into random chunks (COWVOL_SEED replays; fast-check prints the seed of a
 * failure).
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CONTROL_PROTOCOL_VERSION, encodeControlRequest, encodeControlResponse, parseControlRequest, parseControlResponse, takeLines } from '@cowvol/nbd';

const seed = process.env.COWVOL_SEED === undefined ? undefined : Number(process.env.COWVOL_SEED);

describe('takeLines', () => {
  it('cuts complete lines across chunks and keeps the rest', () => {
    const first = takeLines(Buffer.alloc(0), Buffer.from('{"a":1}\n{"b"'));
    expect(first.lines.map(String)).toEqual(['{"a":1}']);
    expect(first.rest.toString()).toBe('{"b"');
    const second = takeLines(first.rest, Buffer.from(':2}\n\n'));
    expect(second.lines.map(String)).toEqual(['{"b":2}', '']);
    expect(second.rest.length).toBe(0);
    expect(second.overflow).toBe(false);
  });

  it('reports overflow for an unfinished line past the limit and for a complete one past it', () => {
    expect(takeLines(Buffer.alloc(0), Buffer.alloc(11, 0x61), 10).overflow).toBe(true);
    expect(takeLines(Buffer.alloc(0), Buffer.alloc(10, 0x61), 10).overflow).toBe(false);
    const long = takeLines(Buffer.alloc(0), Buffer.from(`ok\n${'x'.repeat(11)}\nafter\n`), 10);
    expect(long.overflow).toBe(true);
    expect(long.lines.map(String)).toEqual(['ok']);
  });

  it('any bytes in any chunks give the same lines as one chunk, and never a rest over the limit without overflow', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.array(fc.nat(300), { maxLength: 8 }), (bytes, cuts) => {
        const data = Buffer.from(bytes);
        const whole = takeLines(Buffer.alloc(0), data, 40);
        let rest: Buffer = Buffer.alloc(0);
        const lines: Buffer[] = [];
        let overflow = false;
        const points = [...new Set(cuts.map((c) => c % (data.length + 1)))].sort((a, b) => a - b);
        let from = 0;
        for (const at of [...points, data.length]) {
          const taken = takeLines(rest, data.subarray(from, at), 40);
          lines.push(...taken.lines);
          rest = taken.rest;
          from = at;
          if (taken.overflow) {
            overflow = true;
            break;
          }
          expect(taken.rest.length).toBeLessThanOrEqual(40);
        }
        if (!whole.overflow) expect(lines.map(String)).toEqual(whole.lines.map(String));
        expect(overflow).toBe(whole.overflow);
      }),
      seed === undefined ? {} : { seed },
    );
  });
});

describe('parseControlRequest', () => {
  it('accepts a version-1 request and defaults params to {}', () => {
    expect(parseControlRequest(Buffer.from('{"v":1,"id":7,"method":"status"}'))).toEqual({ ok: true, request: { id: 7, method: 'status', params: {} } });
    expect(parseControlRequest(encodeControlRequest({ id: 'a', method: 'snapshot.create', params: { name: 'n' } }).subarray(0, -1))).toEqual({
      ok: true,
      request: { id: 'a', method: 'snapshot.create', params: { name: 'n' } },
    });
  });

  it.each([
    ['not JSON', 'hello', null],
    ['not UTF-8', '\xff', null],
    ['an array', '[1]', null],
    ['no id', '{"v":1,"method":"status"}', null],
    ['a fractional id', '{"v":1,"id":1.5,"method":"status"}', null],
    ['another version', '{"v":2,"id":3,"method":"status"}', 3],
    ['no method', '{"v":1,"id":3}', 3],
    ['params not an object', '{"v":1,"id":3,"method":"status","params":[1]}', 3],
  ])('refuses %s with INVALID_ARGUMENT, echoing the id it found', (_what, text, id) => {
    const parsed = parseControlRequest(Buffer.from(text, 'latin1'));
    expect(parsed.ok).toBe(false);
    if (!parsed.ok) expect(parsed.response).toMatchObject({ id, error: { code: 'INVALID_ARGUMENT' } });
  });

  it('never throws on random bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
        expect(typeof parseControlRequest(Buffer.from(bytes)).ok).toBe('boolean');
      }),
      seed === undefined ? {} : { seed },
    );
  });
});

describe('responses', () => {
  it('round-trip results and errors; an unknown error code reads as INTERNAL; a bad line is undefined', () => {
    const ok = encodeControlResponse({ id: 1, result: { served: true } });
    expect(ok.at(-1)).toBe(0x0a);
    expect(JSON.parse(ok.toString())).toEqual({ v: CONTROL_PROTOCOL_VERSION, id: 1, result: { served: true } });
    expect(parseControlResponse(ok.subarray(0, -1))).toEqual({ id: 1, result: { served: true } });
    const err = encodeControlResponse({ id: 2, error: { code: 'SNAPSHOT_EXISTS', message: 'exists', details: { name: 'a' } } });
    expect(parseControlResponse(err.subarray(0, -1))).toEqual({ id: 2, error: { code: 'SNAPSHOT_EXISTS', message: 'exists', details: { name: 'a' } } });
    expect(parseControlResponse(Buffer.from('{"v":1,"id":3,"error":{"code":"NEW_CODE","message":"m"}}'))).toEqual({ id: 3, error: { code: 'INTERNAL', message: 'm' } });
    for (const bad of ['x', '{"v":2,"id":1,"result":1}', '{"v":1,"id":1}', '{"v":1,"id":1,"error":{}}']) expect(parseControlResponse(Buffer.from(bad))).toBeUndefined();
  });
});
