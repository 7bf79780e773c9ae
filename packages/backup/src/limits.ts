/**
 * `@cowvol/backup/limits`: what a command line needs before it loads the
 * rest of the package (and the AWS SDK with it): the `--jobs` bounds for its
 * flags and the argument error. The `cowvol` bundle's start module imports
 * only this; a backup command loads the package when it runs
 * (docs/PERFORMANCE.md, "CLI start"; docs/ARCHITECTURE.md §17).
 */
export { DEFAULT_JOBS, MAX_JOBS } from './pool.js';
export { BackupArgumentError } from './errors.js';
