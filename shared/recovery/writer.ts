// Carrying out a recovery plan: writes the data directory, the tablespaces, barman_wal/, the
// recovery settings and recovery.signal (standby.signal) into an empty destination, or, with
// `delta`, into an existing one, writing only the files that differ from the backup and removing
// what the backup does not have. Every data file is checked against the backup's manifest as it is
// written; a mismatch stops the recovery (a full one removes what it wrote), so a damaged catalog
// copy never turns into a cluster that starts.
//
// A restore that stops half-way (killed, power lost) must not leave a directory PostgreSQL would
// start as if complete: barman_restore.incomplete is written first and global/pg_control (removed
// first by a delta) last, after everything else is durable; PostgreSQL refuses a directory without
// pg_control, and a later `--delta` completes it. A directory with a live postmaster is refused.
//
// What a backup names came from a database host, which may be compromised, so the writer trusts
// none of it: every path is checked before a byte is written (relative, no `..`, links never
// where files go), tablespace locations must be absolute and apart from the destination, from
// each other and from protected paths (the catalog), files are created with O_EXCL|O_NOFOLLOW,
// every directory on the way is checked to be a real directory (never a symlink), and the
// backup's own symlinks are made last, once nothing more is written.

import { close, closeSync, constants, fchownSync, fsync, open, promises as fs, writeSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { type ChecksumAlgorithm, describeChecksum, fileChecksum, type FileChecksumValue, type ManifestFile } from '../backup/manifest';
import { checkSymlinks, readableBackupPath, safeRelativePath } from '../backup/paths';
import { makeDirs as makeMissingDirs } from '../dirs';
import { fsyncDir, fsyncTree } from '../durable';
import { eachAtOnce } from '../each-at-once';
import { BarmanError, ErrorCode } from '../errors';
import { parseWalFileName } from '../wal/names';
import { DirectOutput, directRefused, O_DIRECT, releaseSlabs, reserveSlabs, writeAll } from './direct-io';
import { type PlannedTablespace, type RecoveryPlan, RECOVERY_WAL_DIR, RESTORE_MARKER } from './plan';

export interface RecoverySource {
  /**
   * Plain bytes of a data file of the backup (path as in the manifest). A source that checksums the
   * bytes itself (the agent's fetch checks what arrives against the receiver's checksum, the one
   * the manifest records) says so with `hashes` and calls `hashed` with the algorithm and checksum
   * of exactly the bytes it yielded before its iteration ends; the writer then compares that one
   * with the manifest instead of checksumming the bytes a second time.
   */
  dataFile(path: string, hashed?: (checksum: string, algorithm: ChecksumAlgorithm) => void): AsyncIterable<Uint8Array>;
  /** dataFile() reports the checksum of what it yielded through `hashed` */
  hashes?: boolean;
  /** dataFile() yields a new buffer every time, never reusing one: the writer may hold several while they are written */
  freshChunks?: boolean;
  /** plain bytes of an archived WAL file */
  walFile(name: string): AsyncIterable<Uint8Array>;
}

/** How far the writer is: data files (checked or written), then WAL files. */
export interface RecoveryProgressEvent {
  phase: 'files' | 'wal';
  done: number;
  total: number;
  bytes: number;
  /** bytes of the phase's files, when known (the data files' sizes from the manifest) */
  totalBytes?: number;
  /** with delta: files found identical to the backup's, not written */
  unchanged?: number;
}

export interface WriteOptions {
  /** chown everything written to this user (when running as root) */
  owner?: { uid: number; gid: number };
  parallel?: number;
  progress?: (e: RecoveryProgressEvent) => void;
  /** places neither the destination nor a tablespace may be in or contain (the catalog, on the backup host) */
  protectedPaths?: Array<{ path: string; what: string }>;
  /** into an existing data directory: write only the files that differ from the backup, remove what it does not have */
  delta?: boolean;
  /** a standby's primary_conninfo: appended to postgresql.auto.conf here, so it (and its password) never leaves this host */
  primaryConninfo?: string;
}

/** What a recovery did: files written, files a delta found identical, entries it removed. */
export interface WriteSummary {
  written: number;
  writtenBytes: number;
  unchanged: number;
  removed: number;
}

type PlannedFile = RecoveryPlan['files'][number];

/**
 * Whether bytes are the file a manifest entry names: a running digest of the kind the entry
 * records, fed as the bytes stream, and the comparison at the end. Every "do these bytes match
 * the backup" decision of a recovery is made here and nowhere else.
 */
function manifestDigest(file: PlannedFile): { update(data: Uint8Array): void; result(): FileChecksumValue } | undefined {
  const algorithm = file.checksumAlgorithm;
  if (!algorithm) return undefined;
  const digest = fileChecksum(algorithm);
  return { update: (data) => digest.update(data), result: () => ({ algorithm, checksum: digest.digest() }) };
}

/** `size` bytes whose checksum is `got` are the file `file` names: its size, and its checksum where it records one. */
function matchesManifest(file: PlannedFile, size: number, got: FileChecksumValue | undefined): boolean {
  return size === file.size && matchesEntry(file, got);
}

/** chunks of one file a writer may have in the kernel's hands at once (a source with fresh chunks) */
const WRITE_AHEAD = 4;

/** files up to this size are written in the backup's order, after the bigger ones (a catalog stores them together, in that order) */
const SMALL_FILE = 2 * 1024 * 1024;

/** fsyncs of small files (and so their open files) in flight at once */
const SYNCS_IN_FLIGHT = 64;

/** WAL files copied at the same time */
const WAL_FILES_AT_ONCE = 4;

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
    if ((entries as string[]).includes(RESTORE_MARKER)) {
      throw new BarmanError(ErrorCode.DESTINATION, `${what} ${path} holds a restore that did not finish (${RESTORE_MARKER})`, 'Complete it: run the same command again with --delta (only what is missing or differs is written), or remove the directory and restore again.');
    }
    throw new BarmanError(ErrorCode.DESTINATION, `${what} ${path} exists and is not empty`, 'Recover into a new or empty directory (move the old one aside first), or add --delta to bring this data directory to the backup, writing only the files that differ.');
  }
}

/** The pid of a live postmaster that postmaster.pid in `dir` names; undefined when none (a stale file included). */
export async function livePostmaster(dir: string): Promise<number | undefined> {
  let text: string;
  try {
    const fh = await fs.open(join(dir, 'postmaster.pid'), constants.O_RDONLY | constants.O_NOFOLLOW);
    try {
      text = (await fh.read(Buffer.alloc(64), 0, 64, 0)).buffer.toString('utf8');
    } finally {
      await fh.close();
    }
  } catch {
    return undefined;
  }
  const pid = Number(/^\s*(\d{1,10})\s*(\n|$)/.exec(text)?.[1] ?? 0);
  if (!pid || pid === process.pid) return undefined;
  try {
    process.kill(pid, 0);
    return pid;
  } catch (err) {
    // another user's process (PostgreSQL run by postgres, we by someone else) is alive too
    return (err as NodeJS.ErrnoException).code === 'EPERM' ? pid : undefined;
  }
}

/**
 * What a destination must be before anything is fetched: never a directory a live postmaster runs
 * in; empty (or absent), unless `delta`, when it must be a directory (or absent).
 */
export async function checkDestination(path: string, what: string, delta: boolean): Promise<void> {
  if (!isAbsolute(path)) throw new BarmanError(ErrorCode.DESTINATION, `${what} ${path} is not an absolute path`, 'Give an absolute path.');
  const pid = await livePostmaster(path);
  if (pid !== undefined) {
    throw new BarmanError(ErrorCode.DESTINATION, `${what} ${path} belongs to a running PostgreSQL (postmaster.pid names process ${pid}, which is alive)`, `Stop it first (pg_ctl -D ${path} stop), then run this again.`);
  }
  if (!delta) return checkEmptyDestination(path, what);
  const st = await fs.stat(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw new BarmanError(ErrorCode.DESTINATION, `cannot read ${what} ${path} (${err.code})`, 'Check the path and permissions.');
  });
  if (st && !st.isDirectory()) throw new BarmanError(ErrorCode.DESTINATION, `${what} ${path} is not a directory`, 'Give the data directory to bring to the backup.');
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

/** the file PostgreSQL cannot start without: written last, once everything else is durable */
const CONTROL_FILE = 'global/pg_control';

export async function writeRecovery(plan: RecoveryPlan, destArg: string, source: RecoverySource, opts: WriteOptions = {}): Promise<WriteSummary> {
  const delta = opts.delta === true;
  await checkDestination(destArg, 'destination', delta);
  const dest = resolve(destArg);
  const tablespaces = await checkPlan(plan, dest, opts.protectedPaths ?? []);
  const tablespaceByOid = new Map(tablespaces.map((t) => [t.oid, t]));
  for (const t of tablespaces) await checkDestination(t.location, `tablespace ${t.name} location`, delta);
  if (opts.primaryConninfo !== undefined && /[\0\r\n]/.test(opts.primaryConninfo)) {
    throw new BarmanError(ErrorCode.USAGE, '--primary-conninfo holds a line break or NUL character', 'Give the connection string on one line, e.g. --primary-conninfo "host=primary.example user=replicator".');
  }
  const summary: WriteSummary = { written: 0, writtenBytes: 0, unchanged: 0, removed: 0 };
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
  const absolute = (rel: string): string => {
    const t = target(rel);
    return t.rel ? join(t.root, t.rel) : t.root;
  };
  /** Creates a new file at `rel` (its directories made first) and returns its handle and path. */
  const createFile = async (rel: string, flags = 0): Promise<{ fh: fs.FileHandle; path: string }> => {
    const t = target(rel);
    const dir = dirname(t.rel);
    if (dir !== '.') await makeDirs(t.root, dir);
    const path = join(t.root, t.rel);
    return { fh: await fs.open(path, CREATE_NEW | flags, 0o600), path };
  };
  /**
   * Creates the file for a data file fetchFile writes: a big one (over SMALL_FILE) is opened with
   * O_DIRECT and given slabs to write it from when its size allows (direct-io.ts); a filesystem
   * that refuses the flag gets the file made again without it, and no later file tries.
   */
  const createBig = async (file: PlannedFile): Promise<{ fh: fs.FileHandle; path: string; slabs?: Buffer[] }> => {
    const slabs = file.size > SMALL_FILE ? reserveSlabs(file.size) : undefined;
    if (!slabs) return createFile(file.path);
    try {
      return { ...(await createFile(file.path, O_DIRECT)), slabs };
    } catch (err) {
      releaseSlabs(slabs);
      if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
      directRefused();
      // the kernel refuses O_DIRECT only once it has made the file: made again, without it
      await fs.unlink(absolute(file.path)).catch(() => undefined);
      return createFile(file.path);
    }
  };
  const control = plan.files.find((f) => f.path === CONTROL_FILE);
  const files = plan.files.filter((f) => f !== control);
  const totalBytes = files.reduce((n, f) => n + f.size, 0);
  /**
   * Fetches one data file of the backup into a new file, checked against the manifest as the bytes
   * stream (hashed while the previous chunk's write is in the kernel's hands: no second read).
   * Each chunk is written before the next is asked for, so a source may reuse its buffers. A big file
   * whose size is a multiple of 4 KiB is written with O_DIRECT, around the page cache (createBig).
   */
  const fetchFile = async (file: RecoveryPlan['files'][number]): Promise<string> => {
    const { fh, path, slabs } = await createBig(file);
    const direct = slabs ? new DirectOutput(fh, slabs, onBytes) : undefined;
    // the source's own checksum of what it yielded when it has one, else ours
    const hash = source.hashes ? undefined : manifestDigest(file);
    let reported: FileChecksumValue | undefined;
    let size = 0;
    const writes: Promise<void>[] = [];
    try {
      for await (const chunk of source.dataFile(file.path, (checksum, algorithm) => (reported = { algorithm, checksum }))) {
        if (size + chunk.length > file.size) throw mismatch(file, size + chunk.length);
        if (direct) {
          await direct.add(chunk);
          hash?.update(chunk);
          size += chunk.length;
          continue;
        }
        const written = writeAll(fh, chunk, size).then(() => onBytes(chunk.length));
        written.catch(() => undefined); // awaited below, in order; never an unhandled rejection meanwhile
        writes.push(written);
        hash?.update(chunk);
        size += chunk.length;
        // a source that may reuse its buffer gets it back only once written; one that never
        // does keeps the kernel busy with up to WRITE_AHEAD chunks while the next is decoded
        while (writes.length > (source.freshChunks ? WRITE_AHEAD : 0)) await writes.shift();
      }
      while (writes.length > 0) await writes.shift();
      await direct?.finish();
      checkFetched(file, size, hash ? hash.result() : reported);
      if (opts.owner) await fh.chown(opts.owner.uid, opts.owner.gid);
      // durable before its handle closes (no second open for it later); only the directories
      // are left for the pass at the end
      await fh.sync();
    } finally {
      // never close a handle a write is still using
      await Promise.allSettled(writes);
      await direct?.release();
      await fh.close();
    }
    summary.written++;
    summary.writtenBytes += size;
    return path;
  };
  /** fsyncs of small files still running on the thread pool (each keeps its file open until done) */
  const syncing = new Set<Promise<void>>();
  let syncFailure: { err: unknown } | undefined;
  /**
   * Fetches one small data file of the backup whole into memory, checks it against the manifest
   * and only then writes it: created on the thread pool, written (and chowned) with direct system
   * calls (for a file of a few kB they take microseconds, less than a round trip through the
   * thread pool), fsynced on the thread pool while the next file is fetched (SYNCS_IN_FLIGHT at
   * most; `syncing` holds each until done), and closed then.
   */
  const fetchSmall = async (file: PlannedFile): Promise<void> => {
    const hash = source.hashes ? undefined : manifestDigest(file);
    let reported: FileChecksumValue | undefined;
    let size = 0;
    const chunks: Uint8Array[] = [];
    for await (const chunk of source.dataFile(file.path, (checksum, algorithm) => (reported = { algorithm, checksum }))) {
      if (size + chunk.length > file.size) throw mismatch(file, size + chunk.length);
      // a source that may reuse its buffer: a copy is kept
      chunks.push(source.freshChunks ? chunk : Uint8Array.prototype.slice.call(chunk));
      hash?.update(chunk);
      size += chunk.length;
    }
    checkFetched(file, size, hash ? hash.result() : reported);
    const t = target(file.path);
    const dir = dirname(t.rel);
    if (dir !== '.') await makeDirs(t.root, dir);
    while (syncing.size >= SYNCS_IN_FLIGHT) await Promise.race(syncing);
    // created on the thread pool: a new directory entry may wait for the filesystem's journal,
    // which must not stall this thread (it hashes and writes everything else)
    const fd = await openFd(join(t.root, t.rel), CREATE_NEW, 0o600);
    try {
      let position = 0;
      for (const chunk of chunks) {
        for (let off = 0; off < chunk.length; ) {
          const n = writeSync(fd, chunk, off, chunk.length - off, position);
          off += n;
          position += n;
        }
      }
      if (opts.owner) fchownSync(fd, opts.owner.uid, opts.owner.gid);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    const synced = new Promise<void>((resolve) => fsync(fd, (err) => {
      if (err) syncFailure ??= { err };
      close(fd, (closeErr) => {
        if (closeErr) syncFailure ??= { err: closeErr };
        resolve();
      });
    }));
    syncing.add(synced);
    void synced.then(() => syncing.delete(synced));
    onBytes(size);
    summary.written++;
    summary.writtenBytes += size;
  };
  /** Waits for every small file's fsync; the first that failed is thrown. */
  const smallFilesDurable = async () => {
    while (syncing.size > 0) await Promise.all(syncing);
    if (syncFailure) throw syncFailure.err;
  };
  /** Refuses fetched bytes (`size` of them, checksum `got`: ours, or the source's) that are not the file the manifest names. */
  const checkFetched = (file: PlannedFile, size: number, got: FileChecksumValue | undefined) => {
    if (got === undefined && file.checksumAlgorithm) throw new BarmanError(ErrorCode.INTERNAL, `${file.path}: the restore's source gave no checksum for the bytes it sent`, 'This is a bug in barman-ts; please report it.');
    if (!matchesManifest(file, size, got)) throw mismatch(file, size, got);
  };
  const mismatch = (file: RecoveryPlan['files'][number], size: number, got?: FileChecksumValue) => new BarmanError(ErrorCode.CHECKSUM_MISMATCH, `backup ${plan.backupId}: ${file.path} in the catalog does not match its manifest (${size > file.size && got === undefined ? `more than its ${file.size} bytes` : `${size} bytes, ${describeChecksum(got?.algorithm, got?.checksum)}`}; manifest: ${file.size} bytes, ${describeChecksum(file.checksumAlgorithm, file.checksum)})`, `Run barman-receiver verify-backup ${plan.server} ${plan.backupId}; recover from another backup (list-backups).`);
  let done = 0;
  let bytes = 0;
  let lastReport = 0;
  const report = (force = false) => {
    const now = Date.now();
    if (!force && now - lastReport < 200) return;
    lastReport = now;
    opts.progress?.({ phase: 'files', done, total: files.length, bytes, totalBytes, ...(delta ? { unchanged: summary.unchanged } : {}) });
  };
  const onBytes = (n: number) => {
    bytes += n;
    report();
  };
  try {
    await makeRoot(dest);
    await fs.chmod(dest, 0o700);
    // first of all: the directory says it is incomplete, and PostgreSQL cannot start it
    await removeEntry(join(dest, RESTORE_MARKER));
    await writeSmall(join(dest, RESTORE_MARKER), `barman-ts: restore of backup ${plan.backupId} of ${plan.server} into this directory began ${new Date().toISOString()} and has not finished.\nPostgreSQL cannot start it (global/pg_control is written last). Complete it by running the restore again with --delta.\n`, own);
    // a delta takes pg_control away before it changes anything (when global/ is a planted link, the
    // sweep below removes the link itself: nothing is removed through it)
    if (delta && (await fs.lstat(join(dest, 'global')).catch(() => undefined))?.isDirectory()) {
      await removeEntry(join(dest, CONTROL_FILE));
      await fsyncDir(join(dest, 'global'));
    }

    // with delta: what the backup does not have goes, and so does anything where a file or
    // directory of the backup is not a real file or directory (a planted link above all); nothing
    // here is followed or opened through a link
    const keep = new Set<string>();
    const expectedDirs = new Set<string>([dest, ...tablespaces.map((t) => t.location)]);
    for (const d of plan.directories) expectedDirs.add(absolute(d));
    const expectedFiles = new Map<string, RecoveryPlan['files'][number]>();
    for (const f of files) {
      expectedFiles.set(absolute(f.path), f);
      for (let d = dirname(f.path); d !== '.'; d = dirname(d)) expectedDirs.add(absolute(d));
    }
    const sweep = async (dir: string): Promise<void> => {
      for (const entry of await fs.readdir(dir, { withFileTypes: true })) {
        const p = join(dir, entry.name);
        if (dir === dest && entry.name === RESTORE_MARKER) continue;
        if (entry.isDirectory() && expectedDirs.has(p) && !tablespaces.some((t) => t.location === p)) {
          await sweep(p);
        } else if (entry.isFile() && expectedFiles.has(p)) {
          keep.add(p);
        } else {
          await fs.rm(p, { recursive: true, force: true });
          summary.removed++;
        }
      }
    };
    if (delta) for (const root of [dest, ...tablespaces.map((t) => t.location)]) if (await isRealDir(root)) await sweep(root);

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

    const copyOne = async (file: RecoveryPlan['files'][number]) => {
      const path = absolute(file.path);
      if (keep.has(path)) {
        let read = 0;
        const same = await sameAsBackup(path, file, opts.owner, (n) => {
          read += n;
          onBytes(n);
        });
        if (same) {
          summary.unchanged++;
          done++;
          return;
        }
        // the file is fetched instead: its bytes count once
        bytes -= read;
        await fs.unlink(path);
      }
      if (file.size <= SMALL_FILE) await fetchSmall(file);
      else await fetchFile(file);
      done++;
    };
    // the big files largest first: the big relation segments start at once and the small files
    // fill the other workers meanwhile, so no big file is left to finish alone at the end; the
    // small ones in the backup's order, which is the order a catalog keeps them together in (its
    // bundles), so each stretch of them is read once
    const big = files.filter((f) => f.size > SMALL_FILE).sort((a, b) => b.size - a.size);
    const order = [...big, ...files.filter((f) => f.size <= SMALL_FILE)];
    let failure: { err: unknown } | undefined;
    await eachAtOnce(order, opts.parallel ?? 4, copyOne).catch((err: unknown) => (failure = { err }));
    // every file's fsync has ended (and closed its handle) before a failure is cleaned up
    await smallFilesDurable().catch((err: unknown) => (failure ??= { err }));
    if (failure) throw failure.err;
    report(true);

    if (plan.wals.length > 0) {
      await makeDirs(dest, RECOVERY_WAL_DIR);
      let walDone = 0;
      let walBytes = 0;
      // several at once: one segment's copy (read, decompress, check its checksum, write, fsync)
      // leaves a core idle while it waits for the disk or the thread pool, and a point-in-time
      // recovery may need hundreds of segments; each one's chunks are written in order
      // set the moment a segment fails, before its handle is closed and the failure reaches
      // eachAtOnce: no segment starts being read after it
      let walFailed = false;
      await eachAtOnce(plan.wals, WAL_FILES_AT_ONCE, async (name) => {
        if (walFailed) return;
        const { fh, path } = await createFile(`${RECOVERY_WAL_DIR}/${name}`);
        try {
          if (walFailed) return;
          for await (const chunk of source.walFile(name)) {
            walBytes += chunk.length;
            await fh.write(chunk);
          }
          await fh.sync();
        } catch (err) {
          walFailed = true;
          throw err;
        } finally {
          await fh.close();
        }
        await own(path);
        walDone++;
        opts.progress?.({ phase: 'wal', done: walDone, total: plan.wals.length, bytes: walBytes });
      });
    }

    await writeSmall(join(dest, 'backup_manifest'), plan.manifest, own);
    const autoConf = join(dest, 'postgresql.auto.conf');
    const existing = await fs.readFile(autoConf, 'utf8').catch(() => '');
    const primary = opts.primaryConninfo !== undefined ? `primary_conninfo = ${confQuote(opts.primaryConninfo)}\n` : '';
    await writeSmall(autoConf, `${existing}${existing && !existing.endsWith('\n') ? '\n' : ''}${plan.settings}${primary}`, own, true);
    await writeSmall(join(dest, plan.standby ? 'standby.signal' : 'recovery.signal'), '', own);
    // the backup's symlinks last: nothing is written after them, so nothing is written through them
    // (pg_control below goes into global/, a real directory no link can be: checked by makeDirs)
    for (const link of plan.symlinks ?? []) {
      const t = target(link.path);
      const dir = dirname(t.rel);
      if (dir !== '.') await makeDirs(t.root, dir);
      const path = join(t.root, t.rel);
      await fs.symlink(link.target, path);
      await own(path);
    }
    // every file was made durable on its own handle as it was completed (a delta's unchanged ones
    // too, as they were checked); the directories that name them, in one pass at the end
    for (const root of [dest, ...tablespaces.map((t) => t.location)]) await fsyncTree(root, { files: false });
    // and only now the file that makes the directory startable, then the marker goes
    if (control) {
      // durable as it is written (fetchFile), and so is its entry in global/
      const path = await fetchFile(control);
      await fsyncDir(dirname(path));
    }
    await fs.unlink(join(dest, RESTORE_MARKER));
    await fsyncDir(dest);
    return summary;
  } catch (err) {
    // a delta leaves the directory as it is: incomplete (the marker, no pg_control), for the next --delta to complete
    if (delta) throw err;
    // leave nothing half-recovered behind: remove what this run wrote (an empty dest stays, empty)
    for (const root of [dest, ...tablespaces.map((t) => t.location)]) {
      for (const e of await fs.readdir(root).catch(() => [] as string[])) await fs.rm(join(root, e), { recursive: true, force: true }).catch(() => undefined);
    }
    for (const p of created.reverse()) await fs.rm(p, { recursive: true, force: true }).catch(() => undefined);
    throw err;
  }
}

/** A directory itself, not a link to one (a root the user named may be a link: it is followed by stat, not here). */
async function isRealDir(path: string): Promise<boolean> {
  const st = await fs.stat(path).catch(() => undefined);
  return st?.isDirectory() === true;
}

/** Removes whatever is at `path` (a file, a link, a directory tree), following no link. */
async function removeEntry(path: string): Promise<void> {
  await fs.rm(path, { recursive: true, force: true });
}

/**
 * A file a delta found where the backup has one: identical (size and checksum of the manifest, in its algorithm)?
 * Opened without following a link (the caller saw a regular file, but it is checked again on the
 * handle); an identical file gets the mode (and owner) a fresh one would have.
 */
async function sameAsBackup(path: string, file: PlannedFile, owner: WriteOptions['owner'], onBytes: (n: number) => void): Promise<boolean> {
  if (!file.checksumAlgorithm) return false;
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch {
    return false;
  }
  try {
    const st = await fh.stat();
    if (!st.isFile() || st.size !== file.size) return false;
    const hash = manifestDigest(file)!;
    const buf = Buffer.allocUnsafe(Math.min(1 << 20, Math.max(1, file.size)));
    let pos = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
      onBytes(bytesRead);
    }
    if (!matchesManifest(file, pos, hash.result())) return false;
    if ((st.mode & 0o7777) !== 0o600) await fh.chmod(0o600);
    if (owner && (st.uid !== owner.uid || st.gid !== owner.gid)) await fh.chown(owner.uid, owner.gid);
    // it may be a file an interrupted restore wrote and never made durable: it is now
    await fh.sync();
    return true;
  } finally {
    await fh.close();
  }
}

/** open(2) on the thread pool: a file descriptor, for direct system calls after it. */
function openFd(path: string, flags: number, mode: number): Promise<number> {
  return new Promise((resolve, reject) => open(path, flags, mode, (err, fd) => (err ? reject(err) : resolve(fd))));
}

/** A value for postgresql.auto.conf as ALTER SYSTEM writes it: quotes and backslashes doubled. */
function confQuote(value: string): string {
  return `'${value.replace(/['\\]/g, (c) => c + c)}'`;
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

/**
 * Whether a file's bytes, of checksum `got`, are what manifest entry `file` records: the same
 * algorithm and value. An entry without a checksum is checked by its size alone (by the caller).
 */
export function matchesEntry(file: Pick<ManifestFile, 'checksumAlgorithm' | 'checksum'>, got: FileChecksumValue | undefined): boolean {
  if (!file.checksumAlgorithm) return true;
  return got !== undefined && got.algorithm === file.checksumAlgorithm && got.checksum === file.checksum;
}
