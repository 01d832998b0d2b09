// The catalog of one PostgreSQL server under <barman_home>/<server>/ (docs/catalog.md). This is the only
// code that builds catalog paths:
//   wals/<first 16 hex>/<segment>[.gz]   archived segments, wals/<tli>.history, wals/<seg>.<off>.backup
//   streaming/                           the current partial segment (streaming)
//   base/<backup id>/                    backups
//   incoming/                            files not yet complete (temporary names only)
//   errors/                              rejected or conflicting files, kept, never dropped
//   identity.json                        system identifier, WAL segment size, PostgreSQL major version and
//                                        WAL magic of the cluster: learned from the first segment, stream or
//                                        backup, never assumed (segment names and sizes follow it)
//   streaming.json                       written when WAL was first streamed: from then on a stream is expected

import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import type { Compression } from '../../shared/config/receiver';
import { BarmanError, ErrorCode } from '../../shared/errors';
import { parseWalFileName, walDirectoryOf } from '../../shared/wal/names';
import { ensureDir, exists, fsyncDir } from '../storage/posix';

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

/** A stream was opened for the server once: `check` then expects a live one. */
export interface StreamingRecord {
  firstOpenedAt: string;
}

export interface StoredWal {
  path: string;
  compression: Compression;
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

  /** Where a WAL file lives once archived. Segments go below their 16-hex directory; others in wals/. */
  walPath(name: string, compression: Compression = 'none'): string {
    const parsed = parseWalFileName(name);
    if (!parsed) throw new RangeError(`not an archivable WAL file name: ${name}`);
    if (parsed.kind === 'history' || parsed.kind === 'backup') return join(this.walsDir, name);
    // a .partial (the last segment of a timeline left by a promotion) sits beside its segment
    const ext = parsed.kind === 'segment' && compression !== 'none' ? COMPRESSED_EXT[compression] : '';
    return join(this.walsDir, walDirectoryOf(name), name + ext);
  }

  /** The stored copy of an archived WAL file, whatever compression it was written with. */
  async findWal(name: string): Promise<StoredWal | undefined> {
    const parsed = parseWalFileName(name);
    if (!parsed) return undefined;
    const options: Compression[] = parsed.kind === 'segment' ? ['none', 'gzip', 'lz4', 'zstd'] : ['none'];
    for (const compression of options) {
      const path = this.walPath(name, compression);
      if (await exists(path)) return { path, compression };
    }
    return undefined;
  }

  errorPath(name: string, reason: string): string {
    const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\..*$/, '');
    return join(this.errorsDir, `${name}.${stamp}.${reason}`);
  }

  /** Where a conflicting copy of `name` is kept: one file per distinct content. */
  conflictPath(name: string, sha256: string): string {
    return join(this.errorsDir, `${name}.${sha256.slice(0, 16)}.conflict`);
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
        const name = storedWalName(f);
        if (parseWalFileName(name)?.kind === 'segment') out.push(name);
      }
    }
    return out.sort();
  }

  /** The newest archived segment and when it arrived. */
  async lastSegment(): Promise<{ name: string; receivedAt: Date } | undefined> {
    const dirs = await this.segmentDirs();
    for (let i = dirs.length - 1; i >= 0; i--) {
      // whole segments only: a .partial (a promotion's leftover) sorts after its segment
      const files = (await fs.readdir(join(this.walsDir, dirs[i]!))).filter((f) => parseWalFileName(storedWalName(f))?.kind === 'segment').sort();
      const last = files[files.length - 1];
      if (last) {
        const st = await fs.stat(join(this.walsDir, dirs[i]!, last));
        return { name: storedWalName(last), receivedAt: st.mtime };
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
        const segment = parseWalFileName(storedWalName(f))?.segment;
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
      const parsed = parseWalFileName(f);
      if (parsed?.kind === 'backup' && parsed.segment!.slice(8) < cut) {
        await fs.rm(join(this.walsDir, f));
        removed++;
      }
    }
    return removed;
  }
}

/** The WAL file name a stored file holds, without the compression suffix it was written with. */
export function storedWalName(file: string): string {
  for (const ext of Object.values(COMPRESSED_EXT)) if (file.endsWith(ext)) return file.slice(0, -ext.length);
  return file;
}

/** Small files (JSON state, labels): temp + fsync + rename + directory fsync. */
export async function writeFileDurably(path: string, content: string | Uint8Array): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`;
  const fh = await fs.open(tmp, 'w', 0o640);
  try {
    await fh.writeFile(content);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fs.rename(tmp, path);
  await fsyncDir(join(path, '..'));
}
