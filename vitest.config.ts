import { defineConfig } from 'vitest/config';

// Unit tests live beside their package (packages/*/test); cross-package,
// CLI, crash and differential tests live in test/. Tests never assert
// wall-clock times; timeouts only stop a hung run.
export default defineConfig({
  test: {
    include: ['packages/*/test/**/*.test.ts', 'test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 60_000,
    pool: 'forks',
    maxWorkers: 2,
    // Buffers given back to the write path's pool are filled with 0xdb, so a use after give reads wrong bytes (buffer-pool.ts).
    env: { COWVOL_BUFFER_POOL_POISON: '1' },
  },
});
