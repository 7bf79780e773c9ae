/** @cowvol/cli — the `cowvol` command line. Commands live in ./commands (oclif). */
export { EXIT_CODES, exitCodeFor } from './exit-codes.js';
export { parseSize, InvalidSizeError } from './size.js';
export { parseListen, isLoopback } from './endpoint.js';
