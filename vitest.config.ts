import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // builds the bundles once and copies them where the postgres user can run them
    globalSetup: ['test/harness/global-setup.ts'],
    // stops every cluster and receiver a test started, pass or fail
    setupFiles: ['test/harness/setup.ts'],
    // integration tests start real PostgreSQL clusters: one file at a time keeps 2 cores sane
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 120_000,
    reporters: ['default', ['json', { outputFile: 'test-results.json' }]],
  },
});
