// Runs once per `vitest run`, before any worker: builds the two bundles and copies them into a
// "bin" folder under a fresh run root in the system temp dir, where the postgres OS user can read
// them even when the checkout itself sits in a folder it cannot enter (CI clones into /root/...).
// The run root is handed to the workers with `provide`; every cluster, receiver and catalog of the
// run lives below it, so one `rm -rf` at the end removes whatever a test left behind.

import { execFileSync } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { TestProject } from 'vitest/node';
import { KEEP_TMP } from './keep';

declare module 'vitest' {
  export interface ProvidedContext {
    barmanTest: { runRoot: string; binDir: string };
  }
}

const REPO = resolve(import.meta.dirname, '../..');

/** Copies `src` to `dest` and opens it to every user: dirs 0755, files 0644 (0755 if executable). */
function copyReadable(src: string, dest: string): void {
  cpSync(src, dest, { recursive: true, dereference: true });
  const open = (path: string): void => {
    const st = statSync(path);
    if (st.isDirectory()) {
      chmodSync(path, 0o755);
      for (const entry of readdirSync(path)) open(join(path, entry));
    } else {
      chmodSync(path, st.mode & 0o111 ? 0o755 : 0o644);
    }
  };
  open(dest);
}

export default function setup(project: TestProject): () => void {
  execFileSync(process.execPath, [join(REPO, 'scripts/build.mjs')], { cwd: REPO, stdio: 'inherit' });
  const runRoot = mkdtempSync(join(tmpdir(), 'barman-test-'));
  chmodSync(runRoot, 0o755);
  const binDir = join(runRoot, 'bin');
  for (const file of ['barman-agent', 'barman-agent.cjs', 'barman-agent.cjs.cache', 'barman-receiver.cjs', 'barman-receiver.cjs.cache', 'barman-agent.cjs.map', 'barman-receiver.cjs.map']) {
    copyReadable(join(REPO, 'dist', file), join(binDir, file));
  }
  // ws loads bufferutil (and it node-gyp-build) when it can find them; it works without
  for (const mod of ['bufferutil', 'node-gyp-build']) {
    const src = join(REPO, 'node_modules', mod);
    if (existsSync(src)) copyReadable(src, join(binDir, 'node_modules', mod));
  }
  // the receiver's compression bindings, which the build puts beside the bundles (dist/node_modules)
  for (const mod of readdirSync(join(REPO, 'dist', 'node_modules'))) copyReadable(join(REPO, 'dist', 'node_modules', mod), join(binDir, 'node_modules', mod));
  chmodSync(binDir, 0o755);
  project.provide('barmanTest', { runRoot, binDir });
  return () => {
    if (KEEP_TMP) console.log(`KEEP_TMP=1: clusters, catalogs and logs of this run are kept in ${runRoot}`);
    else rmSync(runRoot, { recursive: true, force: true });
  };
}
