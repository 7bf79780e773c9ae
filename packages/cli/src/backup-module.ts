/**
 * @cowvol/backup as a whole, with the AWS SDK: the module a backup command
 * loads with `await import()` when it runs ({@link loadBackup}). The bundle
 * (scripts/bundle.mjs) makes it a chunk of its own, loaded by no other
 * command; the start module may import only @cowvol/backup's constants and
 * errors statically (docs/PERFORMANCE.md, "CLI start").
 */
export * from '@cowvol/backup';
