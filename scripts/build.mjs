// Bundles each program into one CommonJS file under dist/: fast to start (one file to read and
// compile, no module resolution) and easy to copy where the postgres user can run it.
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { chmod, copyFile, cp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import Module from 'node:module';

const common = {
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  sourcemap: 'linked',
  legalComments: 'none',
  // native speed-ups that ws and msgpackr load when present, pino's worker-thread transports
  // that we never use, the native compression bindings the receiver loads on first use, and the
  // native CRC-32C both load when there (shared/checksum.ts falls back to JavaScript)
  external: ['bufferutil', 'utf-8-validate', 'msgpackr-extract', 'pg-native', '@mongodb-js/zstd', 'lz4-napi', '@node-rs/crc32'],
  // msgpackr's own switch, set in the bundles: without it msgpackr loads msgpackr-extract (a
  // native string extractor, with detect-libc reading the node binary's ELF header) whenever
  // a node_modules above dist/ has it, as in a checkout after npm ci: 23 ms more for
  // require('msgpackr') here, 11 ms of a push up to its connect (medians of 80). Our frame
  // headers are small maps whose strings it never extracts
  define: { 'process.env.MSGPACKR_NATIVE_ACCELERATION_DISABLED': '"true"' },
  banner: { js: '#!/usr/bin/env node' },
  logLevel: 'warning',
};

/** what Node's CommonJS loader puts around a module's text (Module.wrap), before and after it */
const CJS_WRAPPER = Module.wrap('\0').split('\0');

// Each program's bundle goes after agent/loader.cjs, which compiles it from a V8 code cache made
// here, by this Node, from a run that loads every module the command named loads and stops at the
// configuration (a cache another Node refuses costs nothing): PostgreSQL starts the agent once per
// WAL segment (a push), and the receiver's start is part of every recover's time.
async function buildLoaded(entry, out, cacheRun, plugins = []) {
  // whitespace and comments out (names stay, for stack traces; the linked source map has the
  // rest): the text every start reads, copies and hashes is a third smaller
  const bundled = await build({ ...common, banner: undefined, minifyWhitespace: true, entryPoints: [entry], outfile: out, write: false, plugins });
  // a function compiled from the cache cannot run import(): a bundle with one stops the build
  // (the AWS SDK, which has some, is a bundle of its own, loaded with require: below)
  const source = bundled.outputFiles.find((f) => f.path.endsWith('.cjs')).text;
  const map = bundled.outputFiles.find((f) => f.path.endsWith('.map'));
  if (/[^\w$.]import\(/.test(source)) throw new Error(`the ${entry} bundle has a dynamic import(); import statically (node: builtins cost nothing to import)`);
  // the loader takes the bundle from the text Node read, one-byte text when it is ASCII: it must
  // be. esbuild escapes everything else in strings, regular expressions and names (charset ascii,
  // its default), so what is left is in comments, where an escape changes nothing
  const ascii = source.replace(/[^\x00-\x7f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  if (ascii.includes('\x01')) throw new Error(`the ${entry} bundle holds U+0001, which the loader uses to write the ends of comments inside it`);
  // the bundle goes in already wrapped as Node wraps a CommonJS module (the loader compiles it as
  // it stands: no concatenation, whose result V8 would copy whole to flatten it)
  const wrapped = `${CJS_WRAPPER[0]}${ascii}${CJS_WRAPPER[1]}`;
  const sha256 = createHash('sha256').update(wrapped).digest('hex');
  const loader = (await readFile('agent/loader.cjs', 'utf8')).replace('__SOURCE_SHA256__', () => JSON.stringify(sha256));
  // the bundle goes in a comment, the body of the function that ends the file (agent/loader.cjs says why)
  await writeFile(out, `${loader}function bundle() {/*barman-bundle\n${wrapped.replaceAll('*/', '*\x01/')}*/}\n`, { mode: 0o755 });
  await chmod(out, 0o755);
  await writeFile(map.path, map.contents);
  await rm(`${out}.cache`, { force: true });
  try {
    execFileSync(process.execPath, [out, ...cacheRun], { env: { ...process.env, BARMAN_WRITE_CODE_CACHE: `${out}.cache` }, stdio: 'ignore' });
  } catch {
    // the command fails, as it should: the cache is written on the way out
  }
}

// a fresh clone has no dist/ yet (esbuild makes it only when it writes, and here we write)
await mkdir('dist', { recursive: true });
await buildLoaded('agent/cli.ts', 'dist/barman-agent.cjs', ['push', '-c', '/nonexistent/barman-agent.conf', '000000010000000000000001']);
// The AWS SDK is half the receiver's code and only a catalog on S3 uses it: it is a bundle of its
// own (below), which the receiver's bundle requires from node_modules beside it when the S3
// driver is first loaded, so no other command reads, hashes or caches it at each start.
const AWS_SDK_BUNDLE = 'barman-aws-sdk.cjs';
const awsSdkApart = {
  name: 'aws-sdk-apart',
  setup(b) {
    b.onResolve({ filter: /^\.\/aws-sdk$/ }, (args) => (args.importer.endsWith('receiver/storage/s3.ts') ? { path: AWS_SDK_BUNDLE, external: true } : undefined));
  },
};
await buildLoaded('receiver/cli.ts', 'dist/barman-receiver.cjs', ['recover', '-c', '/nonexistent/barman.conf', 'main', 'latest', '/nonexistent/recover'], [awsSdkApart]);

// The receiver loads its compression bindings (and both programs the CRC-32C one) from node_modules beside the bundle: each with its
// prebuilt binary package for this platform (an optional dependency). dist/ is then complete:
// copy it, node_modules included, wherever the receiver runs.
await rm('dist/node_modules', { recursive: true, force: true });
for (const mod of ['@mongodb-js/zstd', 'lz4-napi', '@node-rs/crc32']) {
  const pkg = JSON.parse(readFileSync(`node_modules/${mod}/package.json`, 'utf8'));
  for (const dep of [mod, ...Object.keys(pkg.optionalDependencies ?? {}), ...Object.keys(pkg.dependencies ?? {})]) {
    if (existsSync(`node_modules/${dep}`)) await cp(`node_modules/${dep}`, `dist/node_modules/${dep}`, { recursive: true, dereference: true });
  }
}
// and the AWS SDK's bundle (loaded with require, not from a code cache: its import()s may stay)
await build({ ...common, banner: undefined, minifyWhitespace: true, sourcemap: false, entryPoints: ['receiver/storage/aws-sdk.ts'], outfile: `dist/node_modules/${AWS_SDK_BUNDLE}` });

// the installed `barman-agent`: a POSIX sh launcher that answers push from the daemon's acks and
// get-wal from the fetch-ahead spool without starting Node, and runs barman-agent.cjs (beside it)
// for everything else
await copyFile('agent/launcher.sh', 'dist/barman-agent');
await chmod('dist/barman-agent', 0o755);
// the installed `barman-receiver` and `barman`: a POSIX sh launcher that runs barman-receiver.cjs
// (beside it) with glibc's malloc held to one arena (receiver/launcher.sh says why)
await copyFile('receiver/launcher.sh', 'dist/barman-receiver');
await chmod('dist/barman-receiver', 0o755);
