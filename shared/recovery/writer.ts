// Carrying out a recovery plan: writes the data directory, the tablespaces, barman_wal/, the
// recovery settings and recovery.signal into an empty destination. Every data file is checked
// against the backup's manifest as it is written; a mismatch stops the recovery and removes
// what it wrote, so a damaged catalog copy never turns into a cluster that starts.
//
// What a backup names came from a database host, which may be compromised, so the writer trusts
// none of it: every path is checked before a byte is written (relative, no `..`, links never
// where files go), tablespace locations must be absolute and apart from the destination, from
// each other and from protected paths (the catalog), files are created with O_EXCL|O_NOFOLLOW,
// every directory on the way is checked to be a real directory (never a symlink), and the
// backup's own symlinks are made last, once nothing more is written.

import { createHash } from 'node:crypto';
import { constants, promises as fs } from 'node:fs';
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { checkSymlinks, readableBackupPath, safeRelativePath } from '../backup/paths';
import { makeDirs as makeMissingDirs } from '../dirs';
import { fsyncTree } from '../durable';
import { BarmanError, ErrorCode } from '../errors';
import { parseWalFileName } from '../wal/names';
import { type PlannedTablespace, type RecoveryPlan, RECOVERY_WAL_DIR } from './plan';

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
  /** places neither the destination nor a tablespace may be in or contain (the catalog, on the backup host) */
  protectedPaths?: Array<{ path: string; what: string }>;
}

/** a new file, never an existing one nor through a link */
const CREATE_NEW = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;

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

/** The path as the kernel would reach it: every symlink in the part that exists resolved. */
async function canonicalPath(path: string): Promise<string> {
  const rest: string[] = [];
  for (let p = resolve(path); ; p = dirname(p)) {
    try {
      return join(await fs.realpath(p), ...rest.reverse());
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if ((code !== 'ENOENT' && code !== 'ENOTDIR') || dirname(p) === p) return resolve(path);
      rest.push(basename(p));
    }
  }
}

/** `a` is `b` or lies below it. */
function within(a: string, b: string): boolean {
  const rel = relative(b, a);
  return rel === '' || (rel !== '..' && !rel.startsWith(`..${sep}`) && !isAbsolute(rel));
}

/**
 * Every refusal that the plan's content can cause, before anything is written: paths, WAL names,
 * symlinks, and where the tablespaces go. Returns the tablespaces with their locations resolved.
 */
async function checkPlan(plan: RecoveryPlan, dest: string, protectedPaths: Array<{ path: string; what: string }>): Promise<PlannedTablespace[]> {
  for (const f of plan.files) readableBackupPath(f.path);
  for (const d of plan.directories) safeRelativePath(d);
  for (const name of plan.wals) {
    if (!parseWalFileName(name)) throw new BarmanError(ErrorCode.INVALID_NAME, `"${name.slice(0, 100)}" is not a WAL file name`, 'Agent and receiver must run compatible versions of barman-ts.');
  }
  const symlinks = plan.symlinks ?? [];
  checkSymlinks(symlinks, plan.files.map((f) => f.path), plan.directories);

  const oids = new Set<string>();
  const tablespaces: PlannedTablespace[] = [];
  for (const t of plan.tablespaces) {
    if (!/^\d{1,10}$/.test(t.oid) || oids.has(t.oid)) throw new BarmanError(ErrorCode.INVALID_NAME, `tablespace ${t.name} has the OID "${String(t.oid).slice(0, 20)}", which is not a number or is given twice`, 'Agent and receiver must run compatible versions of barman-ts.');
    oids.add(t.oid);
    if (!isAbsolute(t.location)) throw new BarmanError(ErrorCode.DESTINATION, `tablespace ${t.name} location ${t.location} is not an absolute path`, `Give an absolute path: --tablespace ${t.name}:/new/location`);
    tablespaces.push({ ...t, location: resolve(t.location) });
  }
  // a tablespace link inside the backup may not be a symlink of its own (it is the location)
  for (const link of symlinks) {
    if (oids.has(/^pg_tblspc\/(\d+)$/.exec(link.path)?.[1] ?? '')) throw new BarmanError(ErrorCode.INVALID_NAME, `the backup names ${link.path} both as a tablespace and as a symlink`, 'Take a new backup.');
  }

  const places = [{ path: dest, what: `destination ${dest}`, canonical: await canonicalPath(dest) }];
  for (const t of tablespaces) places.push({ path: t.location, what: `tablespace ${t.name} location ${t.location}`, canonical: await canonicalPath(t.location) });
  for (let i = 0; i < places.length; i++) {
    const a = places[i]!;
    for (const b of places.slice(i + 1)) {
      if (within(a.canonical, b.canonical) || within(b.canonical, a.canonical)) {
        throw new BarmanError(ErrorCode.DESTINATION, `${b.what} overlaps ${a.what}`, 'Each tablespace needs a location of its own, outside the destination and outside every other tablespace: --tablespace name:/separate/location');
      }
    }
    for (const p of protectedPaths) {
      const guarded = await canonicalPath(p.path);
      if (within(a.canonical, guarded) || within(guarded, a.canonical)) {
        throw new BarmanError(ErrorCode.DESTINATION, `${a.what} overlaps ${p.what} ${p.path}`, `Recover somewhere outside ${p.path}; recovery never writes into ${p.what}.`);
      }
    }
  }
  return tablespaces;
}

export async function writeRecovery(plan: RecoveryPlan, destArg: string, source: RecoverySource, opts: WriteOptions = {}): Promise<void> {
  await checkEmptyDestination(destArg, 'destination');
  const dest = resolve(destArg);
  const tablespaces = await checkPlan(plan, dest, opts.protectedPaths ?? []);
  const tablespaceByOid = new Map(tablespaces.map((t) => [t.oid, t]));
  for (const t of tablespaces) await checkEmptyDestination(t.location, `tablespace ${t.name} location`);
  const created: string[] = [];
  const own = async (p: string) => {
    if (opts.owner) await fs.lchown(p, opts.owner.uid, opts.owner.gid);
  };
  /** a destination or tablespace root, with the parents it needs */
  const makeRoot = async (p: string) => {
    let made: string[];
    try {
      made = await makeMissingDirs(p, 0o700);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? String(err);
      throw new BarmanError(ErrorCode.DESTINATION, `cannot create directory ${p} (${code})`, 'Recover into a directory on a writable local filesystem whose parent exists and that this user may write (not /proc or /sys).', { cause: err });
    }
    if (made.length) created.push(made[0]!);
    // chown every level mkdir created
    for (const d of made) await own(d);
  };
  /** directories below a root known to be real directories (made or checked by this run) */
  const checkedDirs = new Set<string>();
  /** Makes `rel` below `root` one level at a time, refusing any level that exists as something other than a directory (a symlink above all). */
  const makeDirs = async (root: string, rel: string) => {
    let p = root;
    for (const part of rel.split('/')) {
      p = join(p, part);
      if (checkedDirs.has(p)) continue;
      try {
        await fs.mkdir(p, { mode: 0o700 });
        await own(p);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        const st = await fs.lstat(p);
        if (!st.isDirectory()) {
          throw new BarmanError(ErrorCode.DESTINATION, `${p} is ${st.isSymbolicLink() ? 'a symbolic link' : 'not a directory'}; recovery writes through real directories only`, 'Something else changed the destination while recovery ran; recover again into a new, empty directory.');
        }
      }
      checkedDirs.add(p);
    }
  };
  /** where a manifest path lands: pg_tblspc/<oid>/... goes to the tablespace's location */
  const target = (rel: string): { root: string; rel: string } => {
    const m = /^pg_tblspc\/(\d+)(?:\/(.*))?$/.exec(rel);
    const ts = m ? tablespaceByOid.get(m[1]!) : undefined;
    if (ts) return { root: ts.location, rel: m![2] ?? '' };
    return { root: dest, rel };
  };
  /** Creates a new file at `rel` (its directories made first) and returns its handle and path. */
  const createFile = async (rel: string): Promise<{ fh: fs.FileHandle; path: string }> => {
    const t = target(rel);
    const dir = dirname(t.rel);
    if (dir !== '.') await makeDirs(t.root, dir);
    const path = join(t.root, t.rel);
    return { fh: await fs.open(path, CREATE_NEW, 0o600), path };
  };
  try {
    await makeRoot(dest);
    await fs.chmod(dest, 0o700);
    for (const t of tablespaces) {
      await makeRoot(t.location);
      await makeDirs(dest, 'pg_tblspc');
      const link = join(dest, 'pg_tblspc', t.oid);
      await fs.symlink(t.location, link);
      await own(link);
    }
    for (const d of plan.directories) {
      const t = target(d);
      if (t.rel) await makeDirs(t.root, t.rel);
    }

    let done = 0;
    let bytes = 0;
    let next = 0;
    const copyOne = async (file: RecoveryPlan['files'][number]) => {
      const { fh, path } = await createFile(file.path);
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

    await makeDirs(dest, RECOVERY_WAL_DIR);
    let walDone = 0;
    let walBytes = 0;
    for (const name of plan.wals) {
      const { fh, path } = await createFile(`${RECOVERY_WAL_DIR}/${name}`);
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
    // the backup's symlinks last: nothing is written after them, so nothing is written through them
    for (const link of plan.symlinks ?? []) {
      const t = target(link.path);
      const dir = dirname(t.rel);
      if (dir !== '.') await makeDirs(t.root, dir);
      const path = join(t.root, t.rel);
      await fs.symlink(link.target, path);
      await own(path);
    }
    // one pass at the end: the files were written without fsync, so the kernel could write them
    // back in bulk meanwhile; recovery.signal is last in, and nothing is reported done before this
    for (const root of [dest, ...tablespaces.map((t) => t.location)]) await fsyncTree(root);
  } catch (err) {
    // leave nothing half-recovered behind: remove what this run wrote (an empty dest stays, empty)
    for (const root of [dest, ...tablespaces.map((t) => t.location)]) {
      for (const e of await fs.readdir(root).catch(() => [] as string[])) await fs.rm(join(root, e), { recursive: true, force: true }).catch(() => undefined);
    }
    for (const p of created.reverse()) await fs.rm(p, { recursive: true, force: true }).catch(() => undefined);
    throw err;
  }
}

async function writeSmall(path: string, content: string, own: (p: string) => Promise<void>, replace = false): Promise<void> {
  const flags = replace ? constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW : CREATE_NEW;
  const fh = await fs.open(path, flags, 0o600);
  try {
    await fh.writeFile(content);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await own(path);
}
