// The catalog of one PostgreSQL server, on the storage layer (receiver/storage/storage.ts): the
// only code that reads or writes catalog data. Where each thing is kept is layout.ts's to say;
// how bytes are kept (a directory or a bucket, compressed or not) is the storage's. Every
// receiver command reaches a server's catalog through openServerCatalog (open.ts).
//
// A stored WAL file's key carries the SHA-256 of its plain bytes: file and checksum appear
// together in one rename (one PUT on an object store), nothing can update one without the
// other, and a second push is compared by name. Files stored by versions before checksums
// (<segment>[.gz], <tli>.history, ...) are still found; they have no checksum until `cron` records one.

import { promises as fs } from 'node:fs';
import type { Compression } from '../../shared/config/receiver';
import { writeFileDurably } from '../../shared/durable';
import { BarmanError, ErrorCode } from '../../shared/errors';
import { Turns } from '../../shared/turns';
import { parseWalFileName, segmentPosition } from '../../shared/wal/names';
import type { Storage } from '../storage/storage';
import { CatalogLayout, type StoredWal } from './layout';
import { type CatalogLocker, LeaseCatalogLocker, PosixCatalogLocker } from './lock';

export type { StoredWal } from './layout';

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

export class ServerCatalog {
  readonly layout: CatalogLayout;
  private identityCache: ClusterIdentity | undefined;
  /** learnIdentity calls run one at a time: each merges into what the one before saved */
  private readonly identityTurns = new Turns();

  /**
   * `compression`: how this server's WAL and backup files are stored from now on (stored files
   * keep theirs). `barmanHome`: where this host keeps the server's local state.
   */
  constructor(readonly storage: Storage, readonly barmanHome: string, readonly server: string, readonly compression: Compression) {
    this.layout = new CatalogLayout(server);
  }

  /** The receiver host's own directory for this server (streaming, lock, keys); made on demand. */
  get localDir(): string {
    return this.layout.localDir(this.barmanHome);
  }

  async ensureLocalDir(): Promise<void> {
    await fs.mkdir(this.localDir, { recursive: true, mode: 0o750 });
  }

  /** A key (or a prefix: a directory) as a DBA finds it: a path under barman_home, or an object (a prefix) in the bucket. */
  where(key: string): string {
    return this.storage.driver.kind === 'posix' ? `${this.storage.location}/${key.replace(/\/$/, '')}` : `${key} in ${this.storage.location}`;
  }

  // ---- WAL ----

  /** Every stored copy of WAL file `name` (normally one). */
  private async walCopies(name: string): Promise<StoredWal[]> {
    const copies: StoredWal[] = [];
    for await (const obj of this.storage.list(this.layout.walCopiesPrefix(name))) {
      const stored = this.layout.parseWal(obj);
      if (stored?.name === name) copies.push(stored);
    }
    return copies;
  }

  /** The stored copy of an archived WAL file, whatever compression it was written with. */
  async findWal(name: string): Promise<StoredWal | undefined> {
    if (!parseWalFileName(name)) return undefined;
    const copies = await this.walCopies(name);
    // one copy per name; should a crash leave a copy from before checksums beside its successor, the successor wins
    return copies.find((c) => c.sha256 !== undefined) ?? copies[0];
  }

  /** The WAL files directly in wals/ (history and backup history files). */
  private async *topLevelWal(): AsyncIterable<StoredWal> {
    const prefix = this.layout.walPrefix;
    for await (const obj of this.storage.list(prefix)) {
      if (obj.plainKey.indexOf('/', prefix.length) >= 0) continue;
      const stored = this.layout.parseWal(obj);
      if (stored) yield stored;
    }
  }

  /** The archived timeline history files, by timeline. */
  async histories(): Promise<Map<number, StoredWal>> {
    const out = new Map<number, StoredWal>();
    for await (const stored of this.topLevelWal()) {
      const parsed = parseWalFileName(stored.name);
      if (parsed?.kind !== 'history') continue;
      if (!out.has(parsed.timeline) || stored.sha256 !== undefined) out.set(parsed.timeline, stored);
    }
    return out;
  }

  /** The segment directories (timeline + log), oldest first. */
  private async segmentDirs(): Promise<string[]> {
    const dirs: string[] = [];
    for await (const d of this.storage.listDirs(this.layout.walPrefix)) if (this.layout.isSegmentDir(d)) dirs.push(d);
    return dirs.sort();
  }

  /** Every stored WAL file, segment directories first (oldest first), then wals/ itself. */
  private async *allWal(): AsyncIterable<StoredWal> {
    for await (const obj of this.storage.list(this.layout.walPrefix)) {
      const stored = this.layout.parseWal(obj);
      if (stored) yield stored;
    }
  }

  /** Every stored WAL file without a recorded checksum (written before checksums existed). */
  async uncheckedWal(): Promise<StoredWal[]> {
    const out: StoredWal[] = [];
    for await (const stored of this.allWal()) if (stored.sha256 === undefined) out.push(stored);
    return out;
  }

  /** Records the checksum of a file stored before checksums: stored again under its checksummed key, the old key removed. */
  async recordChecksum(stored: StoredWal, sha256: string): Promise<StoredWal> {
    const key = await this.storage.copy(stored.key, this.layout.walKey(stored.name, sha256));
    await this.storage.remove(stored.key);
    return { ...stored, key, sha256 };
  }

  /** Moves a stored WAL file out of the way into errors/ (a damaged copy about to be replaced); returns where it went. */
  async setAside(stored: StoredWal, reason: string): Promise<string> {
    const aside = await this.storage.copy(stored.key, this.layout.errorKey(stored.name, reason));
    await this.storage.remove(stored.key);
    return this.where(aside);
  }

  /** Every archived segment name, sorted (timeline, log, segment order = text order). */
  async listSegments(): Promise<string[]> {
    const out = new Set<string>();
    for (const d of await this.segmentDirs()) {
      for await (const obj of this.storage.list(`${this.layout.walPrefix}${d}/`)) {
        const name = this.layout.parseWal(obj)?.name;
        if (name && parseWalFileName(name)?.kind === 'segment') out.add(name);
      }
    }
    return [...out].sort();
  }

  /** The newest archived segment and when it arrived. */
  async lastSegment(): Promise<{ name: string; receivedAt: Date } | undefined> {
    const dirs = await this.segmentDirs();
    for (let i = dirs.length - 1; i >= 0; i--) {
      let last: StoredWal | undefined;
      for await (const obj of this.storage.list(`${this.layout.walPrefix}${dirs[i]}/`)) {
        // whole segments only: a .partial (a promotion's leftover) sorts after its segment
        const stored = this.layout.parseWal(obj);
        if (stored && parseWalFileName(stored.name)?.kind === 'segment' && (!last || stored.name >= last.name)) last = stored;
      }
      if (last) return { name: last.name, receivedAt: last.mtime };
    }
    return undefined;
  }

  /**
   * Removes archived segments (and .partial and .backup files) whose log/segment number is below
   * `oldest`'s, on every timeline; .history files always stay. Returns how many files went.
   */
  async removeWalBefore(oldest: string): Promise<number> {
    let removed = 0;
    const cut = segmentPosition(oldest);
    if (!cut) throw new RangeError(`not a segment name: ${oldest}`);
    for await (const stored of this.allWal()) {
      const position = segmentPosition(stored.name);
      if (position === undefined || position >= cut) continue;
      await this.storage.remove(stored.key);
      removed++;
    }
    return removed;
  }

  // ---- small records in the catalog ----

  private async readJson<T>(key: string): Promise<T | undefined | 'damaged'> {
    const found = await this.storage.find(key);
    if (!found) return undefined;
    try {
      return JSON.parse((await this.storage.readAll(found.key, 1024 * 1024)).toString('utf8')) as T;
    } catch (err) {
      if (err instanceof BarmanError && err.code === ErrorCode.STORAGE_NOT_FOUND) return undefined;
      if (err instanceof SyntaxError) return 'damaged';
      throw err;
    }
  }

  private async writeJson(key: string, value: unknown): Promise<void> {
    await this.storage.put(key, Buffer.from(JSON.stringify(value, null, 2) + '\n'));
  }

  async identity(): Promise<ClusterIdentity | undefined> {
    if (this.identityCache) return this.identityCache;
    const read = await this.readJson<ClusterIdentity>(this.layout.identityKey);
    if (read === 'damaged') {
      throw new BarmanError(ErrorCode.STORAGE_CORRUPT, `${this.where(this.layout.identityKey)} is not valid JSON`, 'Restore it from another copy of the catalog, or move it away: the next WAL file or backup records the cluster again.');
    }
    this.identityCache = read;
    return this.identityCache;
  }

  async saveIdentity(identity: ClusterIdentity): Promise<void> {
    await this.writeJson(this.layout.identityKey, identity);
    this.identityCache = identity;
  }

  /**
   * Records what a segment, a stream or a backup says of the cluster: the first one sets the
   * identity, later ones must agree (system identifier, segment size, major version) and fill in
   * what was not known yet (the WAL magic). Refuses another cluster with WAL_FOREIGN.
   */
  learnIdentity(seen: SeenIdentity): Promise<ClusterIdentity> {
    return this.identityTurns.run(() => this.mergeIdentity(seen));
  }

  private async mergeIdentity(seen: SeenIdentity): Promise<ClusterIdentity> {
    const known = await this.identity();
    if (!known) {
      const identity: ClusterIdentity = { ...seen, pgVersion: seen.pgVersion, firstSeenAt: new Date().toISOString() };
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

  /** Where the streaming record is, for a DBA who turns streaming off for good and removes it. */
  get streamingRecordLocation(): string {
    return this.where(this.layout.streamingRecordKey);
  }

  /** Present once WAL was streamed for this server (remove it when streaming is turned off for good). */
  async streamingRecord(): Promise<StreamingRecord | undefined> {
    const read = await this.readJson<StreamingRecord>(this.layout.streamingRecordKey);
    return read === 'damaged' ? { firstOpenedAt: '' } : read; // damaged, but there: streaming is still in use
  }

  async saveStreamingRecord(record: StreamingRecord): Promise<void> {
    await this.writeJson(this.layout.streamingRecordKey, record);
  }

  // ---- the catalog as a whole, for check, metrics and drills ------------------------------------
  // What running a server for years asks of its catalog beyond WAL and backups: what it weighs at
  // rest, the room left where it is stored, what waits in errors/, and the record of restore drills.

  /** Bytes of every object of this catalog at rest (compressed as stored). A listing of the whole catalog: callers cache it. */
  async bytesAtRest(): Promise<number> {
    let total = 0;
    for await (const obj of this.storage.list(this.layout.root)) total += obj.size;
    return total;
  }

  /**
   * Free space (for an unprivileged writer) and size of the filesystem that holds the catalog;
   * undefined on object storage, which has no such figure (its quota is the store's to say).
   */
  async space(): Promise<{ availableBytes: number; totalBytes: number } | undefined> {
    if (this.storage.driver.kind !== 'posix') return undefined;
    const st = await fs.statfs(this.storage.location);
    return { availableBytes: st.bavail * st.bsize, totalBytes: st.blocks * st.bsize };
  }

  /** Where a DBA moves files of errors/ once dealt with: kept, no longer reported. */
  get reviewedErrorsLocation(): string {
    return this.where(this.layout.reviewedErrorsPrefix);
  }

  /**
   * Files in errors/ nobody has dealt with yet (not moved to errors/reviewed/), oldest first, with
   * the WAL file each is a copy of and why it is there, as layout.errorKey and conflictKey name them
   * (`damaged`, `conflict`, `streamed-invalid`, `streamed-conflict`; undefined for a file named otherwise).
   */
  async unreviewedErrors(): Promise<Array<{ file: string; wal: string | undefined; reason: string | undefined; at: Date }>> {
    const out: Array<{ file: string; wal: string | undefined; reason: string | undefined; at: Date }> = [];
    const prefix = this.layout.errorsPrefix;
    for await (const obj of this.storage.list(prefix)) {
      const file = obj.key.slice(prefix.length);
      if (file.includes('/')) continue; // errors/reviewed/ and anything below
      const aside = this.layout.parseErrorKey(obj.plainKey);
      out.push({ file, wal: aside?.wal, reason: aside?.reason, at: obj.mtime });
    }
    return out.sort((a, b) => a.at.getTime() - b.at.getTime() || a.file.localeCompare(b.file));
  }

  /** Where agent.json is, for a DBA who retires the daemon for good and removes it. */
  get agentRecordLocation(): string {
    return this.where(this.layout.agentRecordKey);
  }

  /** agent.json: present once an agent daemon attached for this server (remove it when the daemon is retired for good). */
  async agentRecord(): Promise<{ firstAttachedAt: string; host: string } | undefined> {
    const read = await this.readJson<{ firstAttachedAt: string; host: string }>(this.layout.agentRecordKey);
    return read === 'damaged' ? { firstAttachedAt: '', host: '' } : read; // damaged, but there: a daemon is still expected
  }

  async saveAgentRecord(record: { firstAttachedAt: string; host: string }): Promise<void> {
    await this.writeJson(this.layout.agentRecordKey, record);
  }

  /** The restore drills recorded for this server, oldest first. */
  async drills(): Promise<DrillRecord[]> {
    const read = await this.readJson<unknown>(this.layout.drillsKey);
    return Array.isArray(read) ? (read as DrillRecord[]) : [];
  }

  /** Appends a drill's outcome (the catalog's writer only); the newest MAX_DRILLS_KEPT are kept. */
  async recordDrill(record: DrillRecord): Promise<void> {
    const all = [...(await this.drills()), record].slice(-MAX_DRILLS_KEPT);
    await this.storage.put(this.layout.drillsKey, Buffer.from(JSON.stringify(all, null, 1) + '\n'));
  }

  // ---- the one writer ----

  /** The one-writer lock of this catalog: on this host (posix), or a lease in the bucket (s3). */
  locker(): CatalogLocker {
    if (this.storage.driver.kind === 's3') return new LeaseCatalogLocker(this.server, this.storage, this.layout.leaseKey);
    return new PosixCatalogLocker(this.server, this.localDir, this.layout.lockPath(this.barmanHome));
  }

  /**
   * The key a running serve accepts catalog changes (keep, delete, cron) with: it lives in
   * barman_home, so only the backup host can use it, never an agent, whose token also opens an
   * admin connection. Written by serve once it holds the lock, removed when it stops.
   */
  async writeChangeKey(key: string): Promise<void> {
    await this.ensureLocalDir();
    await writeFileDurably(this.layout.changeKeyPath(this.barmanHome), key + '\n', 0o600);
  }

  async readChangeKey(): Promise<string | undefined> {
    return fs.readFile(this.layout.changeKeyPath(this.barmanHome), 'utf8').then((t) => t.trim(), () => undefined);
  }

  async removeChangeKey(): Promise<void> {
    await fs.rm(this.layout.changeKeyPath(this.barmanHome), { force: true });
  }

  // ---- check's cursor (local state, not catalog content) ----

  /** The last segment `check` verified, if it stopped part-way through the WAL backups need. */
  async walVerifyCursor(): Promise<string | undefined> {
    try {
      const { last } = JSON.parse(await fs.readFile(this.layout.walVerifyCursorPath(this.barmanHome), 'utf8')) as { last?: unknown };
      return typeof last === 'string' ? last : undefined;
    } catch {
      return undefined;
    }
  }

  async saveWalVerifyCursor(last: string): Promise<void> {
    await this.ensureLocalDir();
    await writeFileDurably(this.layout.walVerifyCursorPath(this.barmanHome), JSON.stringify({ last, at: new Date().toISOString() }) + '\n');
  }
}
