import { describe, expect, it } from 'vitest';
import { ERROR_CODES } from '@cowvol/base';
import { EXIT_CODES, exitCodeFor } from '../src/exit-codes.js';

// EXIT_CODES is typed Record<ErrorCode, number>, so the build refuses a code
// without an exit code; this pins the same at run time (a cast cannot hide a
// gap) and that the table has no code the union lacks (docs/ARCHITECTURE.md §10).
describe('EXIT_CODES', () => {
  it('has exactly the codes of the ErrorCode union, each with an exit code from 1 to 9', () => {
    expect(Object.keys(EXIT_CODES).sort()).toEqual([...ERROR_CODES].sort());
    for (const code of ERROR_CODES) {
      expect(exitCodeFor(code), code).toBeGreaterThanOrEqual(1);
      expect(exitCodeFor(code), code).toBeLessThanOrEqual(9);
    }
  });

  it('lists every code once in ERROR_CODES', () => {
    expect(new Set(ERROR_CODES).size).toBe(ERROR_CODES.length);
  });
});
