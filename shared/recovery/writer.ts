// Carrying out a recovery plan: writes the data directory, the tablespaces, barman_wal/, the
// recovery settings and recovery.signal into an empty destination. Every data file is checked
// against the backup's manifest as it is written; a mismatch stops the recovery and removes
// what it wrote, so a damaged catalog copy never turns into a cluster that starts.

import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { dirname, isAbsolute, join } from 'node:path';
import { makeDirs } from '../dirs';
import { fsyncTree } from '../durable';
import { BarmanError, ErrorCode } from '../errors';
import { type RecoveryPlan, RECOVERY_WAL_DIR } from './plan';

export interface RecoverySource {
  /** plain bytes of a data file of the backup (path as in the manifest) */
  dataFile(path: string): AsyncIterable<Uint8Array>;
  /** plain bytes of an archived WAL file */
  walFile(name: string): AsyncIterable<Uint8Array>;
}

export interface WriteOptions {
  /** chown everything written to this user (when running as root) */
  owner?: { uid: number; gid: number };
  parallel?: number;
  progress?: (e: { phase: 'files' | 'wal'; done: number; total: number; bytes: number }) => void;
}

/** Refuses a destination that exists and is not empty (checked for the data dir and every tablespace). */
export async function checkEmptyDestination(path: string, what: string): Promise<void> {
  if (!isAbsolute(path)) throw new BarmanError(ErrorCode.DESTINATION, `${what} ${path} is not an absolute path`, 'Give an absolute path.');
  const entries = await fs.readdir(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return [];
    throw new BarmanError(ErrorCode.DESTINATION, `cannot read ${what} ${path} (${err.code})`, 'Check the path and permissions.');
  });
  if (entries.length > 0) {
    throw new BarmanError(ErrorCode.DESTINATION, `${what} ${path} exists and is not empty`, 'Recover into a new or empty directory (move the old one aside first); barman-ts never overwrites a data directory.');
  }
}

export async function writeRecovery(plan: RecoveryPlan, dest: string, source: RecoverySource, opts: WriteOptions = {}): Promise<void> {
  await checkEmptyDestination(dest, 'destination');
  const tablespaceByOid = new Map(plan.tablespaces.map((t) => [t.oid, t]));
  for (const t of plan.tablespaces) await checkEmptyDestination(t.location, `tablespace ${t.name} location`);
  const created: string[] = [];
  const own = async (p: string) => {
    if (opts.owner) await fs.lchown(p, opts.owner.uid, opts.owner.gid);
  };
  const mkdir = async (p: string) => {
    let made: string[];
    try {
      made = await makeDirs(p, 0o700);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? String(err);
      throw new BarmanError(ErrorCode.DESTINATION, `cannot create directory ${p} (${code})`, 'Recover into a directory on a writable local filesystem whose parent exists and that this user may write (not /proc or /sys).', { cause: err });
    }
    if (made.length) created.push(made[0]!);
    // chown every level mkdir created
    for (const d of made) await own(d);
  };
  /** where a manifest path lands: pg_tblspc/<oid>/... goes to the tablespace's location */
  const target = (rel: string): string => {
    const m = /^pg_tblspc\/(\d+)(?:\/(.*))?$/.exec(rel);
    const ts = m ? tablespaceByOid.get(m[1]!) : undefined;
    if (ts) return m![2] ? join(ts.location, m![2]) : ts.location;
    return join(dest, rel);
  };
  try {
    await mkdir(dest);
    await fs.chmod(dest, 0o700);
    for (const t of plan.tablespaces) {
      await mkdir(t.location);
      await mkdir(join(dest, 'pg_tblspc'));
      const link = join(dest, 'pg_tblspc', t.oid);
      await fs.symlink(t.location, link);
      await own(link);
    }
    for (const d of plan.directories) {
      if (/^pg_tblspc\/\d+$/.test(d) && tablespaceByOid.has(d.slice(10))) continue;
      await mkdir(target(d));
    }

    let done = 0;
    let bytes = 0;
    let next = 0;
    const copyOne = async (file: RecoveryPlan['files'][number]) => {
      const path = target(file.path);
      await mkdir(dirname(path));
      const fh = await fs.open(path, 'wx', 0o600);
      const hash = createHash('sha256');
      let size = 0;
      try {
        for await (const chunk of source.dataFile(file.path)) {
          hash.update(chunk);
          size += chunk.length;
          await fh.write(chunk);
        }
      } finally {
        await fh.close();
      }
      const sha = hash.digest('hex');
      if (size !== file.size || (file.sha256 && sha !== file.sha256)) {
        throw new BarmanError(ErrorCode.CHECKSUM_MISMATCH, `backup ${plan.backupId}: ${file.path} in the catalog does not match its manifest (${size} bytes, sha256 ${sha.slice(0, 12)}…; manifest: ${file.size} bytes, ${file.sha256.slice(0, 12)}…)`, `Run barman-receiver verify-backup ${plan.server} ${plan.backupId}; recover from another backup (list-backups).`);
      }
      await own(path);
      done++;
      bytes += size;
      if (done % 200 === 0 || done === plan.files.length) opts.progress?.({ phase: 'files', done, total: plan.files.length, bytes });
    };
    // the first failure stops every worker, and all of them have stopped before the clean-up
    // below runs (Promise.all would reject at once while the others kept writing files)
    let failure: { err: unknown } | undefined;
    await Promise.all(Array.from({ length: opts.parallel ?? 4 }, async () => {
      try {
        while (!failure && next < plan.files.length) await copyOne(plan.files[next++]!);
      } catch (err) {
        failure ??= { err };
      }
    }));
    if (failure) throw failure.err;

    const walDir = join(dest, RECOVERY_WAL_DIR);
    await mkdir(walDir);
    let walDone = 0;
    let walBytes = 0;
    for (const name of plan.wals) {
      const path = join(walDir, name);
      const fh = await fs.open(path, 'wx', 0o600);
      try {
        for await (const chunk of source.walFile(name)) {
          walBytes += chunk.length;
          await fh.write(chunk);
        }
      } finally {
        await fh.close();
      }
      await own(path);
      walDone++;
      opts.progress?.({ phase: 'wal', done: walDone, total: plan.wals.length, bytes: walBytes });
    }

    await writeSmall(join(dest, 'backup_manifest'), plan.manifest, own);
    const autoConf = join(dest, 'postgresql.auto.conf');
    const existing = await fs.readFile(autoConf, 'utf8').catch(() => '');
    await writeSmall(autoConf, `${existing}${existing && !existing.endsWith('\n') ? '\n' : ''}${plan.settings}`, own, true);
    await writeSmall(join(dest, 'recovery.signal'), '', own);
    // one pass at the end: the files were written without fsync, so the kernel could write them
    // back in bulk meanwhile; recovery.signal is last in, and nothing is reported done before this
    for (const root of [dest, ...plan.tablespaces.map((t) => t.location)]) await fsyncTree(root);
  } catch (err) {
    // leave nothing half-recovered behind: remove what this run wrote (an empty dest stays, empty)
    for (const root of [dest, ...plan.tablespaces.map((t) => t.location)]) {
      for (const e of await fs.readdir(root).catch(() => [] as string[])) await fs.rm(join(root, e), { recursive: true, force: true }).catch(() => undefined);
    }
    for (const p of created.reverse()) await fs.rm(p, { recursive: true, force: true }).catch(() => undefined);
    throw err;
  }
}

async function writeSmall(path: string, content: string, own: (p: string) => Promise<void>, replace = false): Promise<void> {
  const fh = await fs.open(path, replace ? 'w' : 'wx', 0o600);
  try {
    await fh.writeFile(content);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await own(path);
}
