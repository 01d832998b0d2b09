// Bundles each program into one CommonJS file under dist/: fast to start (one file to read and
// compile, no module resolution) and easy to copy where the postgres user can run it.
import { build } from 'esbuild';
import { existsSync, readFileSync } from 'node:fs';
import { chmod, copyFile, cp, rm } from 'node:fs/promises';

const common = {
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  sourcemap: 'linked',
  legalComments: 'none',
  // native speed-ups that ws and msgpackr load when present, pino's worker-thread transports
  // that we never use, and the native compression bindings the receiver loads on first use
  external: ['bufferutil', 'utf-8-validate', 'msgpackr-extract', 'pg-native', '@mongodb-js/zstd', 'lz4-napi'],
  banner: { js: '#!/usr/bin/env node' },
  logLevel: 'warning',
};

for (const [entry, out] of [['agent/cli.ts', 'dist/barman-agent.cjs'], ['receiver/cli.ts', 'dist/barman-receiver.cjs']]) {
  await build({ ...common, entryPoints: [entry], outfile: out });
  await chmod(out, 0o755);
}

// The receiver loads its compression bindings from node_modules beside the bundle: each with its
// prebuilt binary package for this platform (an optional dependency). dist/ is then complete:
// copy it, node_modules included, wherever the receiver runs.
await rm('dist/node_modules', { recursive: true, force: true });
for (const mod of ['@mongodb-js/zstd', 'lz4-napi']) {
  const pkg = JSON.parse(readFileSync(`node_modules/${mod}/package.json`, 'utf8'));
  for (const dep of [mod, ...Object.keys(pkg.optionalDependencies ?? {}), ...Object.keys(pkg.dependencies ?? {})]) {
    if (existsSync(`node_modules/${dep}`)) await cp(`node_modules/${dep}`, `dist/node_modules/${dep}`, { recursive: true, dereference: true });
  }
}

// the installed `barman-agent`: a POSIX sh launcher that answers get-wal from the fetch-ahead spool
// without starting Node and runs barman-agent.cjs (beside it) for everything else
await copyFile('agent/launcher.sh', 'dist/barman-agent');
await chmod('dist/barman-agent', 0o755);
