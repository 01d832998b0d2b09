// Which PostgreSQL binaries will start a recovered data directory, and whether they can: a data
// directory starts only under the major version that wrote it. `recover` (backup host) and
// `restore` (PostgreSQL host) check before writing a byte:
//   - binaries named with --pg-bindir, else $PG_BINDIR: they must be the backup's major version;
//   - none named: the server binaries this host has (pg_config --bindir, /usr/lib/postgresql/*/bin)
//     must include that version; a host with none at all (a backup host without PostgreSQL, the
//     directory to be started elsewhere) is not checked.

import { type ExecFileSyncOptionsWithStringEncoding, execFile, execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { BarmanError, ErrorCode } from '../errors';
import { majorOf, majorOfVersionLine, versionText } from './version';

export interface ServerBinaries {
  dir: string;
  major: number;
}

const RUN: ExecFileSyncOptionsWithStringEncoding = { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 10_000 };

/** `program args`' standard output, or undefined when it does not run or fails. */
function outputOf(program: string, args: string[]): Promise<string | undefined> {
  return new Promise((done) => {
    execFile(program, args, { encoding: 'utf8', timeout: 10_000 }, (err, stdout) => done(err ? undefined : stdout));
  });
}

/** The major version of the server in `dir` (`postgres --version`); undefined when there is no runnable postgres there. */
export function serverBinariesMajor(dir: string): number | undefined {
  const postgres = join(dir, 'postgres');
  if (!existsSync(postgres)) return undefined;
  try {
    // --version is answered before postgres' refusal to run as root
    return majorOfVersionLine(execFileSync(postgres, ['--version'], RUN));
  } catch {
    return undefined;
  }
}

/** serverBinariesMajor without blocking: the child runs while the caller reads. */
async function serverBinariesMajorAsync(dir: string): Promise<number | undefined> {
  const postgres = join(dir, 'postgres');
  if (!existsSync(postgres)) return undefined;
  const out = await outputOf(postgres, ['--version']);
  try {
    return out === undefined ? undefined : majorOfVersionLine(out);
  } catch {
    return undefined;
  }
}

/** The places SPEC §7 looks after pg_config's: /usr/lib/postgresql/<v>/bin, newest first. */
function packagedBinDirs(): string[] {
  const root = '/usr/lib/postgresql';
  if (!existsSync(root)) return [];
  return readdirSync(root).filter((v) => /^\d+(\.\d+)?$/.test(v)).sort((a, b) => Number(b) - Number(a)).map((v) => join(root, v, 'bin'));
}

/** The server binaries this host has where SPEC §7 looks (less $PG_BINDIR, which names them): pg_config's, then /usr/lib/postgresql/<v>/bin, newest first. */
export function localServerBinaries(): ServerBinaries[] {
  const dirs: string[] = [];
  try {
    dirs.push(execFileSync('pg_config', ['--bindir'], RUN).trim());
  } catch {
    // no pg_config on PATH
  }
  dirs.push(...packagedBinDirs());
  const found: ServerBinaries[] = [];
  for (const dir of new Set(dirs)) {
    const major = serverBinariesMajor(dir);
    if (major !== undefined) found.push({ dir, major });
  }
  return found;
}

/** localServerBinaries without blocking, every `--version` at once. */
async function localServerBinariesAsync(): Promise<ServerBinaries[]> {
  const bindir = (await outputOf('pg_config', ['--bindir']))?.trim();
  const dirs = [...new Set([...(bindir ? [bindir] : []), ...packagedBinDirs()])];
  const majors = await Promise.all(dirs.map(serverBinariesMajorAsync));
  return dirs.flatMap((dir, i) => (majors[i] === undefined ? [] : [{ dir, major: majors[i] }]));
}

/** The folder named for the binaries: `named` (--pg-bindir, pg_bindir =), else $PG_BINDIR; undefined: this host's are looked for. */
function explicitBinDir(named: string | undefined, env: NodeJS.ProcessEnv): string | undefined {
  return named ?? (env.PG_BINDIR || undefined);
}

/** What checkRecoveryBinaries needs to know of this host, found before the backup is known. */
export type BinariesProbe = { explicit: string; major: number | undefined } | { local: ServerBinaries[] };

/**
 * The binaries that would start a recovered directory (--pg-bindir `named`, else $PG_BINDIR, else
 * this host's), their versions asked without blocking: `recover` starts this before it reads the
 * catalog and checks the result (checkProbedBinaries) before it writes a byte.
 */
export async function probeRecoveryBinaries(named: string | undefined, env: NodeJS.ProcessEnv = process.env): Promise<BinariesProbe> {
  const explicit = explicitBinDir(named, env);
  if (explicit !== undefined) return { explicit, major: await serverBinariesMajorAsync(explicit) };
  return { local: await localServerBinariesAsync() };
}

/**
 * Refuses (PG_VERSION_MISMATCH) to recover backup `backupId` of server_version_num `pgVersion`
 * where the binaries that would start it are another major version (see the top of this file).
 * `named` is --pg-bindir (or, spelled `namedAs`, another way to name them: a drill's pg_bindir);
 * $PG_BINDIR stands in when it is not given. Returns the binaries that will do, when known.
 */
export function checkRecoveryBinaries(backupId: string, pgVersion: number, named: string | undefined, env: NodeJS.ProcessEnv = process.env, namedAs = '--pg-bindir'): ServerBinaries | undefined {
  const explicit = explicitBinDir(named, env);
  const probe: BinariesProbe = explicit !== undefined ? { explicit, major: serverBinariesMajor(explicit) } : { local: localServerBinaries() };
  return checkProbedBinaries(backupId, pgVersion, probe, named, namedAs);
}

/** checkRecoveryBinaries on what probeRecoveryBinaries found (`named` as given to it). */
export function checkProbedBinaries(backupId: string, pgVersion: number, probe: BinariesProbe, named: string | undefined, namedAs = '--pg-bindir'): ServerBinaries | undefined {
  const needed = majorOf(pgVersion);
  const backup = `backup ${backupId} was taken of PostgreSQL ${versionText(pgVersion)}`;
  if ('explicit' in probe) {
    const { explicit, major } = probe;
    const how = named !== undefined ? `${namedAs} ${named}` : `PG_BINDIR=${explicit}`;
    if (major === undefined) {
      throw new BarmanError(ErrorCode.USAGE, `${how}: no PostgreSQL server (postgres) runs from that folder`, `Name the folder of PostgreSQL ${needed}'s programs, e.g. /usr/lib/postgresql/${needed}/bin.`);
    }
    if (major !== needed) {
      throw new BarmanError(ErrorCode.PG_VERSION_MISMATCH, `${backup}; the binaries of ${how} are PostgreSQL ${major}, which cannot start it`, `Recover with PostgreSQL ${needed}'s binaries: install PostgreSQL ${needed} and name them with --pg-bindir (e.g. /usr/lib/postgresql/${needed}/bin).`);
    }
    return { dir: explicit, major };
  }
  const { local } = probe;
  if (local.length === 0) return undefined;
  const match = local.find((b) => b.major === needed);
  if (match) return match;
  const have = local.map((b) => `PostgreSQL ${b.major} (${b.dir})`).join(', ');
  throw new BarmanError(ErrorCode.PG_VERSION_MISMATCH, `${backup}; this host has ${have}, which cannot start it`, `Install PostgreSQL ${needed} and name its binaries with --pg-bindir (e.g. /usr/lib/postgresql/${needed}/bin), or recover on a host that runs PostgreSQL ${needed}.`);
}
