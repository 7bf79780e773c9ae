import { Args as OclifArgs } from '@oclif/core';

/**
 * The positional arguments of every cowvol command (README "Commands"):
 * oclif's `Args.string`, with `ignoreStdin` always set. Without it oclif
 * fills a missing argument from stdin whenever stdin is not a terminal
 * (trimmed, within 10 ms): `snapshot diff vol.img a < file` would diff
 * against a snapshot named by the file's text, and `cowvol write` with
 * its volume missing would take its data for the path. cowvol never takes
 * an argument from stdin — `write` and `import` read their data there — so
 * a missing required argument is always USAGE and a missing optional one
 * always absent (docs/ARCHITECTURE.md §1, "The lean start", which relies
 * on it too).
 */
export const Args = {
  // The same overloads as oclif's, so callers keep their typed results; TypeScript cannot name the spread across them.
  string: ((options: Record<string, unknown> = {}) => OclifArgs.string({ ...options, ignoreStdin: true } as never)) as unknown as typeof OclifArgs.string,
};
