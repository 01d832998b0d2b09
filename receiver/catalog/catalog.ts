// The catalog of one PostgreSQL server under <barman_home>/<server>/ (docs/catalog.md). This is the only
// code that builds catalog paths:
//   wals/<first 16 hex>/<segment>-<sha256>[.gz]   archived segments (and .partial segments)
//   wals/<tli>.history-<sha256>, wals/<seg>.<off>.backup-<sha256>
//   streaming/                           the current partial segment (streaming)
//   base/<backup id>/                    backups
//   incoming/                            files not yet complete (temporary names only)
//   errors/                              rejected, conflicting or damaged files, kept, never dropped
//   identity.json                        system identifier, WAL segment size, PostgreSQL major version and
//                                        WAL magic of the cluster: learned from the first segment, stream or
//                                        backup, never assumed (segment names and sizes follow it)
//   streaming.json                       written when WAL was first streamed: from then on a stream is expected
//   drills.json                          the restore drills run of this server's backups, newest last
//   agent.json                           written when an agent daemon first attached: from then on one is expected
//   errors/reviewed/                     files of errors/ a DBA has dealt with (check no longer reports them)
//   catalog.lock                         who writes this catalog now (receiver/catalog/lock.ts)
//
// A stored WAL file's name carries the SHA-256 of its plain bytes: file and checksum appear
// together in one rename (one PUT on an object store), nothing can update one without the
// other, and a second push is compared by name. Files stored by versions before checksums
// (<segment>[.gz], <tli>.history, ...) are still found; they have no checksum until `cron` records one.

import { promises as fs } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Compression } from '../../shared/config/receiver';
import { BarmanError, ErrorCode } from '../../shared/errors';
import { parseWalFileName, walDirectoryOf } from '../../shared/wal/names';
import { ensureDir, fsyncDir } from '../storage/posix';
import { type CatalogLocker, PosixCatalogLocker } from './lock';

export interface ClusterIdentity {
  systemIdentifier: string;
  /** wal_segment_size in bytes */
  segmentSize: number;
  /** the page magic of its WAL; unknown until the first segment arrives (a backup or a stream may come first) */
  walMagic?: number;
  /** PostgreSQL major version (15, or 9.6) */
  pgVersion: number | undefined;
  firstSeenAt: string;
}

/** What one source (a segment's header, a stream's start, a backup's start) tells of the cluster. */
export type SeenIdentity = Omit<ClusterIdentity, 'firstSeenAt' | 'pgVersion'> & { pgVersion?: number };

const COMPRESSED_EXT: Record<Exclude<Compression, 'none'>, string> = { gzip: '.gz', lz4: '.lz4', zstd: '.zst' };

/** One restore drill: a backup recovered, started and checked on the backup host (receiver/drill/). */
export interface DrillRecord {
  /** ISO 8601: when it started */
  at: string;
  backupId: string;
  passed: boolean;
  /** seconds from the start of the restore to a ready, checked cluster; null when it never got there */
  rtoSeconds: number | null;
  /** --target-time, when one was given */
  targetTime?: string;
  checks: Array<{ name: string; ok: boolean; detail: string }>;
  /** why it failed (the file or the check), null when it passed */
  error: string | null;
}

/** drills.json keeps this many, newest last */
const MAX_DRILLS_KEPT = 100;

/** A stream was opened for the server once: `check` then expects a live one. */
export interface StreamingRecord {
  firstOpenedAt: string;
}

export interface StoredWal {
  /** the WAL file name, as PostgreSQL names it */
  name: string;
  path: string;
  compression: Compression;
  /** SHA-256 of the plain bytes, recorded with the file; undefined for a file stored before checksums */
  sha256: string | undefined;
}

const SHA256_SUFFIX = /-([0-9a-f]{64})$/;

/** What a file in wals/ holds: the WAL file name, its recorded checksum, how it is stored. */
export function parseStoredWalFile(file: string): Omit<StoredWal, 'path'> | undefined {
  let rest = file;
  let compression: Compression = 'none';
  for (const [c, ext] of Object.entries(COMPRESSED_EXT) as Array<[Exclude<Compression, 'none'>, string]>) {
    if (rest.endsWith(ext)) {
      rest = rest.slice(0, -ext.length);
      compression = c;
      break;
    }
  }
  const m = SHA256_SUFFIX.exec(rest);
  const sha256 = m?.[1];
  if (m) rest = rest.slice(0, m.index);
  return parseWalFileName(rest) ? { name: rest, sha256, compression } : undefined;
}

export class ServerCatalog {
  readonly root: string;
  readonly walsDir: string;
  readonly incomingDir: string;
  readonly errorsDir: string;
  readonly streamingDir: string;
  readonly baseDir: string;
  private identityCache: ClusterIdentity | undefined;
  /** learnIdentity calls run one at a time: each merges into what the one before saved */
  private identityLock: Promise<unknown> = Promise.resolve();

  constructor(barmanHome: string, readonly server: string) {
    this.root = join(barmanHome, server);
    this.walsDir = join(this.root, 'wals');
    this.incomingDir = join(this.root, 'incoming');
    this.errorsDir = join(this.root, 'errors');
    this.streamingDir = join(this.root, 'streaming');
    this.baseDir = join(this.root, 'base');
  }

  async ensureLayout(): Promise<void> {
    for (const dir of [this.walsDir, this.incomingDir, this.errorsDir, this.streamingDir, this.baseDir]) await ensureDir(dir);
  }

  /** The directory of a WAL file: segments (and .partial) below their 16-hex directory, others in wals/. */
  private walDirOf(name: string): string {
    const parsed = parseWalFileName(name);
    if (!parsed) throw new RangeError(`not an archivable WAL file name: ${name}`);
    if (parsed.kind === 'history' || parsed.kind === 'backup') return this.walsDir;
    return join(this.walsDir, walDirectoryOf(name));
  }

  /** Where a WAL file with these plain bytes' SHA-256 is stored, compressed or not. */
  walPath(name: string, sha256: string, compression: Compression = 'none'): string {
    if (!/^[0-9a-f]{64}$/.test(sha256)) throw new RangeError(`not a SHA-256: ${sha256}`);
    const ext = compression !== 'none' ? COMPRESSED_EXT[compression] : '';
    return join(this.walDirOf(name), `${name}-${sha256}${ext}`);
  }

  /** The stored copy of an archived WAL file, whatever compression it was written with. */
  async findWal(name: string): Promise<StoredWal | undefined> {
    if (!parseWalFileName(name)) return undefined;
    const dir = this.walDirOf(name);
    const copies: StoredWal[] = [];
    for (const f of await fs.readdir(dir).catch(() => [] as string[])) {
      if (!f.startsWith(name)) continue;
      const stored = parseStoredWalFile(f);
      if (stored?.name === name) copies.push({ ...stored, path: join(dir, f) });
    }
    // one copy per name; should a crash leave a copy from before checksums beside its successor, the successor wins
    return copies.find((c) => c.sha256 !== undefined) ?? copies[0];
  }

  /** The archived timeline history files, by timeline. */
  async histories(): Promise<Map<number, StoredWal>> {
    const out = new Map<number, StoredWal>();
    for (const f of await fs.readdir(this.walsDir).catch(() => [] as string[])) {
      const stored = parseStoredWalFile(f);
      const parsed = stored && parseWalFileName(stored.name);
      if (parsed?.kind !== 'history') continue;
      if (!out.has(parsed.timeline) || stored!.sha256 !== undefined) out.set(parsed.timeline, { ...stored!, path: join(this.walsDir, f) });
    }
    return out;
  }

  /** Every stored WAL file without a recorded checksum (written before checksums existed). */
  async uncheckedWal(): Promise<StoredWal[]> {
    const out: StoredWal[] = [];
    for (const dir of [this.walsDir, ...(await this.segmentDirs()).map((d) => join(this.walsDir, d))]) {
      for (const f of await fs.readdir(dir).catch(() => [] as string[])) {
        const stored = parseStoredWalFile(f);
        if (stored && stored.sha256 === undefined) out.push({ ...stored, path: join(dir, f) });
      }
    }
    return out;
  }

  /** Records the checksum of a file stored before checksums: renamed to its checksummed name. */
  async recordChecksum(stored: StoredWal, sha256: string): Promise<StoredWal> {
    const path = this.walPath(stored.name, sha256, stored.compression);
    await fs.rename(stored.path, path);
    await fsyncDir(dirname(path));
    return { ...stored, path, sha256 };
  }

  /** Moves a stored WAL file out of the way into errors/ (a damaged copy about to be replaced). */
  async setAside(stored: StoredWal, reason: string): Promise<string> {
    await ensureDir(this.errorsDir);
    const aside = this.errorPath(stored.name, reason);
    await fs.rename(stored.path, aside);
    await fsyncDir(this.errorsDir);
    await fsyncDir(dirname(stored.path));
    return aside;
  }

  errorPath(name: string, reason: string): string {
    const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\..*$/, '');
    return join(this.errorsDir, `${name}.${stamp}.${reason}`);
  }

  /** Where a conflicting copy of `name` is kept: one file per distinct content. */
  conflictPath(name: string, sha256: string): string {
    return join(this.errorsDir, `${name}.${sha256.slice(0, 16)}.conflict`);
  }

  /** Who writes this catalog now: a lock file beside it (receiver/catalog/lock.ts). */
  get lockPath(): string {
    return join(this.root, 'catalog.lock');
  }

  /**
   * The key a running serve accepts catalog changes (keep, delete, cron) with: it lives in
   * barman_home, so only the backup host can use it, never an agent, whose token also opens an
   * admin connection. Written by serve once it holds the lock, removed when it stops.
   */
  private get changeKeyPath(): string {
    return join(this.root, 'catalog.key');
  }

  async writeChangeKey(key: string): Promise<void> {
    await writeFileDurably(this.changeKeyPath, key + '\n', 0o600);
  }

  async readChangeKey(): Promise<string | undefined> {
    return fs.readFile(this.changeKeyPath, 'utf8').then((t) => t.trim(), () => undefined);
  }

  async removeChangeKey(): Promise<void> {
    await fs.rm(this.changeKeyPath, { force: true });
  }

  /** The one-writer lock of this catalog. */
  locker(): CatalogLocker {
    return new PosixCatalogLocker(this.server, this.root, this.lockPath);
  }

  /** Where `check` resumes its bounded WAL verification (local state, not catalog content). */
  private get walVerifyCursorPath(): string {
    return join(this.root, 'wal-verify.json');
  }

  /** The last segment `check` verified, if it stopped part-way through the WAL backups need. */
  async walVerifyCursor(): Promise<string | undefined> {
    try {
      const { last } = JSON.parse(await fs.readFile(this.walVerifyCursorPath, 'utf8')) as { last?: unknown };
      return typeof last === 'string' ? last : undefined;
    } catch {
      return undefined;
    }
  }

  async saveWalVerifyCursor(last: string): Promise<void> {
    await writeFileDurably(this.walVerifyCursorPath, JSON.stringify({ last, at: new Date().toISOString() }) + '\n');
  }

  private get identityPath(): string {
    return join(this.root, 'identity.json');
  }

  async identity(): Promise<ClusterIdentity | undefined> {
    if (this.identityCache) return this.identityCache;
    try {
      this.identityCache = JSON.parse(await fs.readFile(this.identityPath, 'utf8')) as ClusterIdentity;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    return this.identityCache;
  }

  async saveIdentity(identity: ClusterIdentity): Promise<void> {
    await writeFileDurably(this.identityPath, JSON.stringify(identity, null, 2) + '\n');
    this.identityCache = identity;
  }

  /**
   * Records what a segment, a stream or a backup says of the cluster: the first one sets the
   * identity, later ones must agree (system identifier, segment size, major version) and fill in
   * what was not known yet (the WAL magic). Refuses another cluster with WAL_FOREIGN.
   */
  learnIdentity(seen: SeenIdentity): Promise<ClusterIdentity> {
    const run = this.identityLock.then(() => this.mergeIdentity(seen));
    this.identityLock = run.catch(() => undefined);
    return run;
  }

  private async mergeIdentity(seen: SeenIdentity): Promise<ClusterIdentity> {
    const known = await this.identity();
    if (!known) {
      const identity: ClusterIdentity = { ...seen, pgVersion: seen.pgVersion, firstSeenAt: new Date().toISOString() };
      // the first thing a server's catalog ever hears may be a stream's start: nothing is laid out yet
      await this.ensureLayout();
      await this.saveIdentity(identity);
      return identity;
    }
    const foreign = (what: string) => new BarmanError(ErrorCode.WAL_FOREIGN, `${what}; refusing it for server ${this.server}`, `Check that the agent's server = ${this.server} is right; a new cluster (initdb, pg_upgrade) needs its own server section.`);
    if (known.systemIdentifier !== seen.systemIdentifier) throw foreign(`the cluster has system identifier ${seen.systemIdentifier}, this server's WAL comes from ${known.systemIdentifier}`);
    if (known.segmentSize !== seen.segmentSize) throw foreign(`the cluster's WAL segment size is ${seen.segmentSize} bytes, this server's is ${known.segmentSize}`);
    if (seen.pgVersion !== undefined && known.pgVersion !== undefined && seen.pgVersion !== known.pgVersion) throw foreign(`the cluster runs PostgreSQL ${seen.pgVersion}, this server's WAL comes from PostgreSQL ${known.pgVersion}`);
    if ((known.walMagic === undefined && seen.walMagic !== undefined) || (known.pgVersion === undefined && seen.pgVersion !== undefined)) {
      const filled = { ...known, walMagic: known.walMagic ?? seen.walMagic, pgVersion: known.pgVersion ?? seen.pgVersion };
      await this.saveIdentity(filled);
      return filled;
    }
    return known;
  }

  /** The cluster's WAL segment size, as learned; a catalog that has seen nothing of its cluster yet has none. */
  async segmentSize(): Promise<number> {
    const identity = await this.identity();
    if (!identity) {
      throw new BarmanError(ErrorCode.WAL_NOT_FOUND, `server ${this.server} has received no WAL and no backup yet, so its WAL segment size is not known`, 'Archive WAL first (archive_command = barman-agent push %p, or barman-agent daemon), then retry.');
    }
    return identity.segmentSize;
  }

  /** streaming.json: present once WAL was streamed for this server (remove it when streaming is turned off for good). */
  get streamingRecordPath(): string {
    return join(this.root, 'streaming.json');
  }

  async streamingRecord(): Promise<StreamingRecord | undefined> {
    let text: string;
    try {
      text = await fs.readFile(this.streamingRecordPath, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    try {
      return JSON.parse(text) as StreamingRecord;
    } catch {
      return { firstOpenedAt: '' }; // damaged, but there: streaming is still in use
    }
  }

  async saveStreamingRecord(record: StreamingRecord): Promise<void> {
    await writeFileDurably(this.streamingRecordPath, JSON.stringify(record, null, 2) + '\n');
  }

  /** The wals/<first 16 hex>/ directories, oldest first. */
  private async segmentDirs(): Promise<string[]> {
    const dirs = await fs.readdir(this.walsDir).catch(() => [] as string[]);
    return dirs.filter((d) => /^[0-9A-F]{16}$/.test(d)).sort();
  }

  /** Every archived segment name, sorted (timeline, log, segment order = text order). */
  async listSegments(): Promise<string[]> {
    const out: string[] = [];
    for (const d of await this.segmentDirs()) {
      for (const f of await fs.readdir(join(this.walsDir, d))) {
        const name = parseStoredWalFile(f)?.name;
        if (name && parseWalFileName(name)?.kind === 'segment') out.push(name);
      }
    }
    return [...new Set(out)].sort();
  }

  /** The newest archived segment and when it arrived. */
  async lastSegment(): Promise<{ name: string; receivedAt: Date } | undefined> {
    const dirs = await this.segmentDirs();
    for (let i = dirs.length - 1; i >= 0; i--) {
      // whole segments only: a .partial (a promotion's leftover) sorts after its segment
      const files = (await fs.readdir(join(this.walsDir, dirs[i]!))).filter((f) => parseWalFileName(parseStoredWalFile(f)?.name ?? '')?.kind === 'segment').sort();
      const last = files[files.length - 1];
      if (last) {
        const st = await fs.stat(join(this.walsDir, dirs[i]!, last));
        return { name: parseStoredWalFile(last)!.name, receivedAt: st.mtime };
      }
    }
    return undefined;
  }

  /**
   * Removes archived segments (and .partial and .backup files) whose log/segment number is below
   * `oldest`'s, on every timeline; .history files always stay. Returns how many files went.
   */
  async removeWalBefore(oldest: string): Promise<number> {
    let removed = 0;
    const cut = oldest.slice(8); // log + segment: a new timeline's segments continue the numbering
    for (const dir of await this.segmentDirs()) {
      const path = join(this.walsDir, dir);
      let changed = false;
      for (const f of await fs.readdir(path)) {
        const segment = parseWalFileName(parseStoredWalFile(f)?.name ?? '')?.segment;
        if (!segment || segment.slice(8) >= cut) continue;
        await fs.rm(join(path, f));
        removed++;
        changed = true;
      }
      if (changed) {
        if ((await fs.readdir(path)).length === 0) await fs.rmdir(path);
        await fsyncDir(this.walsDir);
      }
    }
    for (const f of await fs.readdir(this.walsDir).catch(() => [] as string[])) {
      const parsed = parseWalFileName(parseStoredWalFile(f)?.name ?? '');
      if (parsed?.kind === 'backup' && parsed.segment!.slice(8) < cut) {
        await fs.rm(join(this.walsDir, f));
        removed++;
      }
    }
    return removed;
  }


  // ---- the catalog as a whole, for check, metrics and drills ------------------------------------
  // What running a server for years asks of its catalog beyond WAL and backups: what it weighs at
  // rest, the room left on its filesystem, what waits in errors/, and the record of restore drills.

  /** Bytes of every file of this catalog at rest (compressed as stored). A walk of the whole catalog: callers cache it. */
  async bytesAtRest(): Promise<number> {
    let total = 0;
    const walk = async (dir: string): Promise<void> => {
      for (const e of await fs.readdir(dir, { withFileTypes: true }).catch(() => [])) {
        const path = join(dir, e.name);
        if (e.isDirectory()) await walk(path);
        else if (e.isFile()) total += (await fs.lstat(path).catch(() => undefined))?.size ?? 0;
      }
    };
    await walk(this.root);
    return total;
  }

  /** Free space (for an unprivileged writer) and size of the filesystem that holds the catalog. */
  async space(): Promise<{ availableBytes: number; totalBytes: number }> {
    const st = await fs.statfs(this.root);
    return { availableBytes: st.bavail * st.bsize, totalBytes: st.blocks * st.bsize };
  }

  /** Where a DBA moves files of errors/ once dealt with: kept, no longer reported. */
  get reviewedErrorsDir(): string {
    return join(this.errorsDir, 'reviewed');
  }

  /**
   * Files in errors/ nobody has dealt with yet (not moved to errors/reviewed/), oldest first, with
   * the WAL file each is a copy of and why it is there, as errorPath and conflictPath name them
   * (`damaged`, `conflict`, `streamed-invalid`, `streamed-conflict`; undefined for a file named otherwise).
   */
  async unreviewedErrors(): Promise<Array<{ file: string; wal: string | undefined; reason: string | undefined; at: Date }>> {
    const out: Array<{ file: string; wal: string | undefined; reason: string | undefined; at: Date }> = [];
    for (const e of await fs.readdir(this.errorsDir, { withFileTypes: true }).catch(() => [])) {
      if (!e.isFile()) continue;
      const st = await fs.stat(join(this.errorsDir, e.name)).catch(() => undefined);
      if (!st) continue;
      const m = /^(.+)\.(?:\d{8}T\d{6}|[0-9a-f]{16})\.([a-z-]+)$/.exec(e.name);
      const wal = m && parseWalFileName(m[1]!) ? m[1] : undefined;
      out.push({ file: e.name, wal, reason: wal ? m![2] : undefined, at: st.mtime });
    }
    return out.sort((a, b) => a.at.getTime() - b.at.getTime() || a.file.localeCompare(b.file));
  }

  get agentRecordPath(): string {
    return join(this.root, 'agent.json');
  }

  /** agent.json: present once an agent daemon attached for this server (remove it when the daemon is retired for good). */
  async agentRecord(): Promise<{ firstAttachedAt: string; host: string } | undefined> {
    try {
      return JSON.parse(await fs.readFile(this.agentRecordPath, 'utf8')) as { firstAttachedAt: string; host: string };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      return { firstAttachedAt: '', host: '' }; // damaged, but there: a daemon is still expected
    }
  }

  async saveAgentRecord(record: { firstAttachedAt: string; host: string }): Promise<void> {
    await writeFileDurably(this.agentRecordPath, JSON.stringify(record, null, 2) + '\n');
  }

  private get drillsPath(): string {
    return join(this.root, 'drills.json');
  }

  /** The restore drills recorded for this server, oldest first. */
  async drills(): Promise<DrillRecord[]> {
    let text: string;
    try {
      text = await fs.readFile(this.drillsPath, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    try {
      const records = JSON.parse(text) as unknown;
      return Array.isArray(records) ? (records as DrillRecord[]) : [];
    } catch {
      return [];
    }
  }

  /** Appends a drill's outcome (the catalog's writer only); the newest MAX_DRILLS_KEPT are kept. */
  async recordDrill(record: DrillRecord): Promise<void> {
    const all = [...(await this.drills()), record].slice(-MAX_DRILLS_KEPT);
    await writeFileDurably(this.drillsPath, JSON.stringify(all, null, 1) + '\n');
  }
}

/** Small files (JSON state, labels): temp + fsync + rename + directory fsync. */
export async function writeFileDurably(path: string, content: string | Uint8Array, mode = 0o640): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`;
  const fh = await fs.open(tmp, 'w', mode);
  try {
    await fh.writeFile(content);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fs.rename(tmp, path);
  await fsyncDir(join(path, '..'));
}
