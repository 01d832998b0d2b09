// Where things are on this machine for a test run: the run root and the copied bundles (from the
// global setup), the PostgreSQL binaries, the postgres OS user, temporary folders and free ports.

import { execFileSync } from 'node:child_process';
import { chownSync, chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { inject } from 'vitest';
import { installPackagedPostgres } from '../../scripts/packaged-postgres';
import { localServerBinaries, serverBinariesMajor } from '../../shared/postgres/binaries';
import { track } from './resources';
import { removeTree } from './fs';

export function runPaths(): { runRoot: string; binDir: string } {
  const provided = inject('barmanTest');
  if (!provided) throw new Error('test/harness/global-setup.ts did not run; start the tests with `npm test` (or `npx vitest run`)');
  return provided;
}

export const agentBin = (): string => join(runPaths().binDir, 'barman-agent.cjs');
/** The installed `barman-agent`: the sh launcher (get-wal from the fetch-ahead spool without Node), which runs agentBin() for the rest. */
export const agentLauncher = (): string => join(runPaths().binDir, 'barman-agent');
export const receiverBin = (): string => join(runPaths().binDir, 'barman-receiver.cjs');

let pgBinDirCache: string | undefined;
/** As README says: $PG_BINDIR, else `pg_config --bindir`, else the newest /usr/lib/postgresql/<v>/bin. */
export function pgBinDir(): string {
  if (pgBinDirCache) return pgBinDirCache;
  const candidates: string[] = [];
  if (process.env.PG_BINDIR) candidates.push(process.env.PG_BINDIR);
  try {
    candidates.push(execFileSync('pg_config', ['--bindir'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim());
  } catch {
    // no pg_config on PATH
  }
  const root = '/usr/lib/postgresql';
  if (existsSync(root)) {
    const versions = readdirSync(root).filter((v) => /^\d+(\.\d+)?$/.test(v)).sort((a, b) => Number(b) - Number(a));
    candidates.push(...versions.map((v) => join(root, v, 'bin')));
  }
  const found = candidates.find((dir) => existsSync(join(dir, 'initdb')));
  if (!found) throw new Error(`no PostgreSQL binaries (initdb) found; looked in ${candidates.join(', ') || '(nothing)'}; set PG_BINDIR`);
  return (pgBinDirCache = found);
}

export const pgBin = (tool: string): string => join(pgBinDir(), tool);

const majorCache = new Map<string, number>();
/** The major version of the PostgreSQL binaries in `binDir` (postgres --version). */
export function pgMajorOf(binDir: string): number {
  let major = majorCache.get(binDir);
  if (major === undefined) {
    major = serverBinariesMajor(binDir);
    if (major === undefined) throw new Error(`no runnable PostgreSQL server in ${binDir} (postgres --version failed)`);
    majorCache.set(binDir, major);
  }
  return major;
}

/**
 * The binaries of PostgreSQL `major`: pgBinDir() when they are that version, else the machine's
 * own of that version (pg_config, /usr/lib/postgresql/<v>/bin), else the packaged ones
 * (package.json's pg12 ... pg18), copied below the run root once per run where postgres can run
 * them. The packaged ones are server programs only: no psql (Cluster.psql uses the pg client
 * then), pg_basebackup or pg_verifybackup.
 */
export function pgBinDirFor(major: number): string {
  if (pgMajorOf(pgBinDir()) === major) return pgBinDir();
  return localServerBinaries().find((b) => b.major === major)?.dir ?? installPackagedPostgres(major, runPaths().runRoot);
}

let postgresIds: { uid: number; gid: number } | undefined;
export function postgresUser(): { uid: number; gid: number } {
  if (!postgresIds) {
    const id = (flag: string) => Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8' }).trim());
    postgresIds = { uid: id('-u'), gid: id('-g') };
  }
  return postgresIds;
}

export type Owner = 'root' | 'postgres';

export function chownTo(path: string, owner: Owner): void {
  if (owner === 'postgres') {
    const { uid, gid } = postgresUser();
    chownSync(path, uid, gid);
  } else {
    chownSync(path, 0, 0);
  }
}

/**
 * A fresh folder below the run root, removed when its scope ends (the test, or the file when made
 * in beforeAll) unless KEEP_TMP=1. postgres may always traverse it; `owner` decides who writes.
 */
export function makeTempDir(label: string, owner: Owner = 'root', mode = 0o755): string {
  const dir = mkdtempSync(join(runPaths().runRoot, `${label}-`));
  chmodSync(dir, mode);
  chownTo(dir, owner);
  track({ what: `temp dir ${dir}`, dispose: () => removeTree(dir), keptPath: dir });
  return dir;
}

/** mkdir -p of a sub folder with the given owner and mode. */
export function makeDir(path: string, owner: Owner, mode = 0o755): string {
  mkdirSync(path, { recursive: true });
  chmodSync(path, mode);
  chownTo(path, owner);
  return path;
}

const handedOut = new Set<number>();
/** A TCP port nobody listens on right now (the kernel picks it; never the same one twice per worker). */
export async function freePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const srv = createServer();
      srv.once('error', reject);
      srv.listen(0, '127.0.0.1', () => {
        const { port: p } = srv.address() as { port: number };
        srv.close(() => resolve(p));
      });
    });
    if (!handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
}

/**
 * The environment of every program a test starts: nothing of the test runner's own (NODE_OPTIONS,
 * loaders, BARMAN_* of the developer's shell), so products behave as a user's shell would run them.
 * PG_BINDIR goes through: a run pointed at another PostgreSQL version is that version's host.
 */
export function productEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = { PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin', LANG: 'C.UTF-8' };
  if (process.env.TZ) env.TZ = process.env.TZ;
  if (process.env.PG_BINDIR) env.PG_BINDIR = process.env.PG_BINDIR;
  return { ...env, ...extra };
}
