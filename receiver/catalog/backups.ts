// The backups of one server: base/<id>/{backup.info, backup_manifest, tablespace_map,
// contents.json, data/} (layout.ts). Nothing is renamed, so a backup commits the same way on a
// disk and in a bucket: backup.info is written first (STARTED), every file goes straight to its
// final key (compressed as the server says), and at the end the files are made durable, then
// contents.json (the catalog's record of the backup's directories and of where each file is
// stored) and the manifest are written, and only then backup.info says WAITING_FOR_WALS. It is
// DONE once every WAL segment from its begin to its end is archived. Until then it is never
// offered for recovery; anything that stops it on the way leaves it FAILED, with the reason, and
// its files removed. A removal takes backup.info away first: a crash halfway leaves files no
// backup.info names, which cron removes.

import { type BackupInfo, type BackupStatus, backupIdFor, emptyInfo, formatBackupInfo, isBackupId, parseBackupInfo } from '../../shared/backup/info';
import { buildManifest, type ChecksumAlgorithm, crc32cManifestHex, fileChecksum, type ManifestFile, parseManifest } from '../../shared/backup/manifest';
import { checkSymlinks, safeRelativePath } from '../../shared/backup/paths';
import { BarmanError, damagedBackupHint, ErrorCode } from '../../shared/errors';
import type { BackupStart, BackupStop, WireCompression } from '../../shared/protocol/frames';
import { parseLsn } from '../../shared/wal/lsn';
import { majorOf } from '../../shared/postgres/version';
import { nextSegment, segmentForLsn, segmentNumber } from '../../shared/wal/names';
import { crc32c, crc32cHex } from '../../shared/checksum';
import type { BackupChecksum } from '../../shared/config/receiver';
import type { ServerCatalog } from './catalog';
import type { Upload } from './upload';
import { compressWhole, type ObjectWriter, type Storage } from '../storage/storage';
import { BLOCK_SIZE, decompressWhole, decompressWireFrame, parseStoredKey, zstdStoredFrames } from '../storage/compression';

/**
 * Where one file of a backup is stored: `key` (compression suffix included) holds its plain
 * `size` bytes, or, for a bundled file, `key` is the bundle and bytes [offset, offset + length)
 * of it are this file's own compressed frames.
 */
export interface StoredFile {
  key: string;
  size: number;
  offset?: number;
  length?: number;
}

/** Where each file of a backup is stored, and its directories (object storage has no empty ones). */
export interface BackupContents {
  directories: string[];
  /** path inside the data directory → where its plain bytes are stored */
  files: Record<string, StoredFile>;
}

/** Files up to this size are bundled (pgBackRest's repo-bundle-limit is the same). */
export const BUNDLE_FILE_LIMIT = 2 * 1024 * 1024;
/** A bundle is closed once it holds this many plain bytes (pgBackRest's repo-bundle-size). */
export const BUNDLE_SIZE = 20 * 1024 * 1024;
/** Never bundled: the file that makes a data directory a cluster's stays an object of its own. */
const UNBUNDLED = new Set(['global/pg_control']);

/** The bundle being filled: members are appended one at a time, in the order they are complete. */
interface OpenBundle {
  key: string;
  writer: ObjectWriter;
  /** stored bytes so far (the next member's offset) */
  stored: number;
  plain: number;
}

/** What a running backup has received so far (in memory: one writer per catalog). */
interface Receiving {
  files: Map<string, StoredFile>;
  /** every ancestor directory of a received file: a file may not be sent where one is */
  parents: Set<string>;
  /** keys written without their own fsync, made durable together at the end */
  unsynced: string[];
  bundle?: OpenBundle;
  bundles: number;
  /** appends to the bundle, one after the other */
  appending: Promise<void>;
  /** a failed append: the backup cannot complete */
  bundleFailure?: unknown;
  /** the agent sends every file compressed so, in the frames stored as they are */
  wire?: WireCompression;
  /** the algorithm of the manifest's file checksums for this backup */
  checksum: ChecksumAlgorithm;
  /** files of the backup being opened or committed: fail waits for them before it removes anything */
  busy: Set<Promise<unknown>>;
  /** files of the backup open for writing: fail aborts them */
  writers: Set<ObjectWriter>;
}

/** A file of backup `id` arrived where the backup is not (any more) running. */
function notRunning(id: string): BarmanError {
  return new BarmanError(ErrorCode.BACKUP_FAILED, `backup ${id} is not running on this receiver`, 'Start a new backup; an interrupted one cannot be resumed.');
}

export class BackupCatalog {
  private readonly receiving = new Map<string, Receiving>();

  /** `checksum`: the algorithm of each file's checksum in the manifests of new backups (backup_checksum) */
  constructor(readonly catalog: ServerCatalog, readonly checksum: BackupChecksum = 'crc32c') {}

  private get layout() {
    return this.catalog.layout;
  }

  private get storage() {
    return this.catalog.storage;
  }

  /** Backup IDs with something stored under them, oldest first. */
  private async ids(): Promise<string[]> {
    const ids: string[] = [];
    for await (const d of this.storage.listDirs(this.layout.backupsPrefix)) if (this.layout.isBackupDir(d)) ids.push(d);
    return ids.sort();
  }

  async list(): Promise<BackupInfo[]> {
    const out: BackupInfo[] = [];
    for (const id of await this.ids()) {
      const info = await this.read(id).catch(() => undefined);
      if (info) out.push(info);
    }
    return out;
  }

  async read(id: string): Promise<BackupInfo> {
    return parseBackupInfo((await this.storage.readAll(this.layout.backupInfoKey(id), 1 << 20)).toString('utf8'));
  }

  async write(info: BackupInfo): Promise<void> {
    await this.storage.put(this.layout.backupInfoKey(info.backupId), Buffer.from(formatBackupInfo(info)));
  }

  /** An ID, or `latest` / `oldest` (among DONE backups). */
  async resolve(idOrAlias: string): Promise<BackupInfo> {
    const server = this.catalog.server;
    if (idOrAlias === 'latest' || idOrAlias === 'oldest' || idOrAlias === 'last' || idOrAlias === 'first') {
      const done = (await this.list()).filter((b) => b.status === 'DONE');
      const pick = idOrAlias === 'latest' || idOrAlias === 'last' ? done[done.length - 1] : done[0];
      if (!pick) throw new BarmanError(ErrorCode.BACKUP_NOT_FOUND, `server ${server} has no DONE backup`, `Take one with: barman-receiver backup ${server} --wait`);
      return pick;
    }
    if (!isBackupId(idOrAlias)) throw new BarmanError(ErrorCode.USAGE, `"${idOrAlias}" is not a backup ID`, 'Use YYYYMMDDTHHMMSS as list-backups prints it, or latest / oldest.');
    try {
      return await this.read(idOrAlias);
    } catch (err) {
      if (!(err instanceof BarmanError && err.code === ErrorCode.STORAGE_NOT_FOUND)) throw err;
      throw new BarmanError(ErrorCode.BACKUP_NOT_FOUND, `server ${server} has no backup ${idOrAlias}`, `List them with: barman-receiver list-backups ${server}`);
    }
  }

  /**
   * Starts a backup. Its ID and begin time come from this host's clock, never from the agent's
   * report: a start time further than MAX_CLOCK_SKEW_MS from it is refused. A second backup
   * within one second waits for the next second; an ID further ahead (a clock that went back, a
   * backup dated in the future) is not waited for: the wait is always a second or two at most.
   */
  async begin(start: BackupStart, canCompress: readonly WireCompression[] = []): Promise<BackupInfo> {
    const running = (await this.list()).find((b) => b.status === 'STARTED');
    if (running) {
      throw new BarmanError(ErrorCode.BACKUP_IN_PROGRESS, `backup ${running.backupId} of ${this.catalog.server} is still running`, 'Wait for it to finish (barman-receiver list-backups), then start another.');
    }
    checkClockSkew(start.startTime, Date.now());
    const taken = new Set(await this.ids());
    const newest = [...taken].pop();
    let when = wholeSecond(Date.now());
    let id = backupIdFor(when);
    for (let attempt = 0; ; attempt++) {
      const justTaken = newest !== undefined && id <= newest && newest <= backupIdFor(new Date(when.getTime() + ID_WAIT_LIMIT_MS));
      if (!justTaken && !taken.has(id)) break;
      if (attempt >= 3) {
        throw new BarmanError(ErrorCode.BACKUP_IN_PROGRESS, `no free backup ID for ${this.catalog.server} near ${id}`, 'Backups are being started in a tight loop; wait a few seconds and retry.');
      }
      await new Promise((r) => setTimeout(r, 1000 - (Date.now() % 1000) + 5));
      when = wholeSecond(Date.now());
      id = backupIdFor(when);
    }
    // a backup may come before any WAL: its start tells the catalog the cluster's segment size
    const identity = await this.catalog.learnIdentity({ systemIdentifier: start.systemIdentifier, segmentSize: start.segmentSize, pgVersion: majorOf(start.pgVersion) });
    const info: BackupInfo = {
      ...emptyInfo(id),
      // the ID's own time: list-backups, retention and the ID never disagree
      beginTime: when.toISOString(),
      beginLsn: start.startLsn,
      beginWal: segmentForLsn(start.timeline, parseLsn(start.startLsn), identity.segmentSize),
      timeline: start.timeline,
      pgVersion: start.pgVersion,
      systemIdentifier: start.systemIdentifier,
      pgdata: start.pgdata,
      tablespaces: start.tablespaces,
    };
    // whatever an earlier attempt under this ID left (it never had a backup.info) goes first
    await this.storage.removePrefix(this.layout.backupPrefix(id));
    await this.write(info);
    // stored as zstd here and the agent can compress so: it does, and the bytes are stored as sent
    const wire = this.catalog.compression === 'zstd' && canCompress.includes('zstd') ? 'zstd' : undefined;
    const checksum = this.checksum === 'sha256' ? 'SHA256' : 'CRC32C';
    this.receiving.set(id, { files: new Map(), parents: new Set(), unsynced: [], bundles: 0, appending: Promise.resolve(), wire, checksum, busy: new Set(), writers: new Set() });
    return info;
  }

  /** How the agent is to send the files of running backup `id`: compressed so, or plain (undefined). */
  wireCompression(id: string): WireCompression | undefined {
    return this.receiving.get(id)?.wire;
  }

  /** Whether the agent is to send the SHA-256 of each file of running backup `id` (the manifest records it). */
  wantsSha256(id: string): boolean {
    return this.receiving.get(id)?.checksum === 'SHA256';
  }

  private receivingOf(id: string): Receiving {
    const r = this.receiving.get(id);
    if (!r) throw notRunning(id);
    return r;
  }

  /**
   * One step of a file of running backup `id` (opening, committing): refused once the backup
   * failed, and waited for by fail, so that nothing of a failed backup lands after its files went.
   */
  private step<T>(id: string, r: Receiving, work: () => Promise<T>): Promise<T> {
    if (this.receiving.get(id) !== r) return Promise.reject(notRunning(id));
    const done = work();
    r.busy.add(done);
    const forget = () => void r.busy.delete(done);
    done.then(forget, forget);
    return done;
  }

  /** Claims a path of the running backup: refused when sent before, or where a file and a directory of the backup collide. */
  private claim(r: Receiving, rel: string): void {
    if (r.files.has(rel)) throw new BarmanError(ErrorCode.INVALID_NAME, `${rel.slice(0, 200)} was already sent in this backup`, 'Each file of a backup is sent once; check what sends backups to this receiver.');
    if (r.parents.has(rel)) throw new BarmanError(ErrorCode.INVALID_NAME, `${rel.slice(0, 200)} is a directory of this backup, not a file`, 'A path of a backup cannot be both a file and a directory; check what sends backups to this receiver.');
    const parts = rel.split('/');
    for (let i = 1; i < parts.length; i++) {
      if (r.files.has(parts.slice(0, i).join('/'))) throw new BarmanError(ErrorCode.INVALID_NAME, `${rel.slice(0, 200)} lies below a file of this backup`, 'A path of a backup cannot be both a file and a directory; check what sends backups to this receiver.');
    }
    for (let i = 1; i < parts.length; i++) r.parents.add(parts.slice(0, i).join('/'));
    r.files.set(rel, { key: '', size: 0 });
  }

  /**
   * Appends one small file's compressed bytes to the backup's open bundle (opening one when
   * none is), after every member appended before; closes the bundle once it is full. Where the
   * member lies in which bundle.
   */
  private appendToBundle(id: string, r: Receiving, member: Buffer, plainSize: number): Promise<{ key: string; offset: number }> {
    const step = r.appending.then(async () => {
      if (r.bundleFailure) throw r.bundleFailure;
      try {
        if (!r.bundle) {
          const key = this.layout.backupBundleKey(id, ++r.bundles);
          r.bundle = { key: '', writer: await this.storage.openStoredWrite(key, this.catalog.compression, { sync: false }), stored: 0, plain: 0 };
          r.bundle.key = r.bundle.writer.key;
        }
        const b = r.bundle;
        const offset = b.stored;
        if (member.length > 0) await b.writer.write(member);
        b.stored += member.length;
        b.plain += plainSize;
        if (b.plain >= BUNDLE_SIZE) await this.closeBundle(r);
        return { key: b.key, offset };
      } catch (err) {
        r.bundleFailure ??= err;
        throw err;
      }
    });
    r.appending = step.then(() => undefined, () => undefined);
    return step;
  }

  /** Commits the open bundle (durable at the backup's end, with the other files). */
  private async closeBundle(r: Receiving): Promise<void> {
    const b = r.bundle;
    if (!b) return;
    r.bundle = undefined;
    await b.writer.commit();
    r.unsynced.push(b.key);
  }

  /**
   * A small file of the running backup: kept in memory while it arrives (at most
   * BUNDLE_FILE_LIMIT bytes, as announced), checked, compressed whole and appended to a bundle.
   */
  private bundledFile(id: string, r: Receiving, rel: string, size: number, mtime: number, manifest: ManifestFile[]): Upload {
    const arrival = new Arrival(rel, size, r.wire);
    let parts: Uint8Array[] = [];
    return {
      label: `${id}:${rel}`,
      write: async (chunk) => {
        await arrival.take(chunk);
        parts.push(chunk);
      },
      finish: async (sha256, senderCrc32c) => {
        let checksum: string;
        try {
          checksum = arrival.check(senderCrc32c, r.checksum, sha256);
          const bytes = parts.length === 1 ? Buffer.from(parts[0]!.buffer, parts[0]!.byteOffset, parts[0]!.byteLength) : Buffer.concat(parts);
          // compressed by the agent: its frames are the member as they are
          const member = r.wire ? bytes : await compressWhole(this.catalog.compression, bytes);
          const { key, offset } = await this.appendToBundle(id, r, member, size);
          r.files.set(rel, { key, size, offset, length: member.length });
        } finally {
          parts = [];
        }
        manifest.push({ path: rel, size, mtime, checksumAlgorithm: r.checksum, checksum });
        return 'stored';
      },
      abort: async () => {
        parts = [];
      },
    };
  }

  /** Opens one file of the running backup `id` at its relative path (validated: no escaping the backup); the caller, ServerContext, knows it is running. */
  async beginFile(id: string, path: string, size: number, mtime: number, manifest: ManifestFile[]): Promise<Upload> {
    const r = this.receivingOf(id);
    const rel = safeRelativePath(path);
    this.claim(r, rel);
    if (size <= BUNDLE_FILE_LIMIT && !UNBUNDLED.has(rel)) return this.bundledFile(id, r, rel, size, mtime, manifest);
    const compression = this.catalog.compression;
    let writer: ObjectWriter;
    try {
      writer = await this.step(id, r, async () => {
        // chunks come from the connection, each in a buffer of its own that nothing reuses;
        // compressed by the agent, they are stored as they are
        const opened = r.wire
          ? await this.storage.openStoredWrite(this.layout.backupFileKey(id, rel), r.wire, { sync: false })
          : await this.storage.openWrite(this.layout.backupFileKey(id, rel), { compression, sync: false, sizeHint: compression === 'none' ? size : undefined, ownsChunks: true });
        r.writers.add(opened);
        return opened;
      });
    } catch (err) {
      r.files.delete(rel);
      throw err;
    }
    // the transfer is checked with the CRC-32C the agent computed over the bytes it sent, beside
    // their SHA-256 (which the manifest records): the same bytes arrived, at a fraction of the
    // CPU a second SHA-256 would cost here
    const arrival = new Arrival(rel, size, r.wire);
    return {
      label: `${id}:${rel}`,
      write: async (chunk) => {
        if (this.receiving.get(id) !== r) throw notRunning(id);
        await arrival.take(chunk);
        await writer.write(chunk);
      },
      finish: (sha256, senderCrc32c) => this.step(id, r, async () => {
        let checksum: string;
        try {
          checksum = arrival.check(senderCrc32c, r.checksum, sha256);
          const { key } = await writer.commit();
          r.files.set(rel, { key, size });
          r.unsynced.push(key);
        } finally {
          r.writers.delete(writer);
          await writer.abort().catch(() => undefined);
        }
        manifest.push({ path: rel, size, mtime, checksumAlgorithm: r.checksum, checksum });
        return 'stored' as const;
      }),
      abort: async () => {
        r.writers.delete(writer);
        await writer.abort();
      },
    };
  }

  /** Completes the backup's files: backup_label in, everything durable, contents and manifest written, then the new status. */
  async end(id: string, stop: BackupStop, manifest: ManifestFile[]): Promise<BackupInfo> {
    const info = await this.resolve(id);
    if (info.status !== 'STARTED') throw new BarmanError(ErrorCode.BACKUP_FAILED, `backup ${id} is ${info.status}, not running`, 'Start a new backup.');
    const r = this.receivingOf(id);
    // symlinks are recorded, never created in the catalog; refused here if they could ever lead
    // a recovery's writes astray (a link where a file or directory of the backup goes)
    checkSymlinks(stop.symlinks, ['backup_label', ...manifest.map((f) => f.path)], stop.directories);
    const directories = stop.directories.map((d) => safeRelativePath(d));
    for (const d of directories) {
      if (r.files.has(d)) throw new BarmanError(ErrorCode.INVALID_NAME, `${d.slice(0, 200)} is a file of this backup, not a directory`, 'A path of a backup cannot be both a file and a directory; check what sends backups to this receiver.');
    }
    const control = manifest.find((f) => f.path === 'global/pg_control');
    if (!control) throw new BarmanError(ErrorCode.BACKUP_FAILED, `backup ${id} has no global/pg_control`, 'The agent sent an incomplete data directory; check pgdata = in its configuration.');
    const label = Buffer.from(stop.backupLabel);
    const labelWrite = await this.storage.put(this.layout.backupFileKey(id, 'backup_label'), label, { compression: this.catalog.compression, sync: false });
    r.unsynced.push(labelWrite.key);
    const labelChecksum = fileChecksum(r.checksum);
    labelChecksum.update(label);
    const stopSeconds = Math.floor(Date.parse(stop.stopTime) / 1000);
    const files: ManifestFile[] = [{ path: 'backup_label', size: label.length, mtime: stopSeconds, checksumAlgorithm: r.checksum, checksum: labelChecksum.digest() }, ...manifest.filter((f) => f.path !== 'global/pg_control')];
    files.push(control); // last, as pg_basebackup lists it
    // the last bundle is committed after every member appended before it
    await r.appending;
    if (r.bundleFailure) throw r.bundleFailure;
    await this.closeBundle(r);
    await this.storage.sync(r.unsynced);
    if (stop.tablespaceMap) await this.storage.put(this.layout.tablespaceMapKey(id), Buffer.from(stop.tablespaceMap));
    const contents: BackupContents = { directories, files: { backup_label: { key: labelWrite.key, size: label.length } } };
    for (const [path, where] of r.files) if (where.key) contents.files[path] = where;
    await this.storage.put(this.layout.contentsKey(id), Buffer.from(JSON.stringify(contents) + '\n'));
    const walRanges = [{ timeline: info.timeline, startLsn: info.beginLsn, endLsn: stop.stopLsn }];
    await this.storage.put(this.layout.manifestKey(id), Buffer.from(buildManifest(info, files, walRanges)));
    const size = files.reduce((n, f) => n + f.size, 0);
    const done: BackupInfo = {
      ...info,
      status: 'WAITING_FOR_WALS',
      endTime: stop.stopTime,
      endLsn: stop.stopLsn,
      endWal: segmentForLsn(info.timeline, parseLsn(stop.stopLsn), await this.catalog.segmentSize()),
      size,
      fileCount: files.length,
      symlinks: stop.symlinks,
      // PostgreSQL's own word for where the backup was taken
      fromStandby: /^BACKUP FROM: standby$/m.test(stop.backupLabel),
    };
    // the commit: from here on the backup is complete in the catalog
    await this.write(done);
    this.receiving.delete(id);
    return done;
  }

  async fail(id: string, reason: string): Promise<void> {
    const r = this.receiving.get(id);
    this.receiving.delete(id);
    if (r) {
      // the bundle being filled is dropped (nothing of it is left under its key)
      r.bundleFailure ??= new BarmanError(ErrorCode.BACKUP_FAILED, `backup ${id} failed`, 'Take the backup again.');
      await r.appending;
      await r.bundle?.writer.abort().catch(() => undefined);
      r.bundle = undefined;
      // files being opened or committed settle first; what is still open is then given up
      while (r.busy.size > 0) await Promise.allSettled([...r.busy]);
      await Promise.all([...r.writers].map((w) => w.abort().catch(() => undefined)));
      r.writers.clear();
    }
    const info = await this.read(id).catch(() => undefined);
    if (!info || info.status === 'DONE' || info.status === 'FAILED') return;
    await this.write({ ...info, status: 'FAILED', error: reason.replace(/\n/g, ' ') });
    await this.removeFiles(id);
  }

  /** A failed backup's files, manifest and contents go; its backup.info stays to say why it failed. */
  private async removeFiles(id: string): Promise<number> {
    let removed = await this.storage.removePrefix(this.layout.backupDataPrefix(id));
    removed += await this.storage.removePrefix(this.layout.backupBundlesPrefix(id));
    for (const key of [this.layout.contentsKey(id), this.layout.manifestKey(id), this.layout.tablespaceMapKey(id)]) {
      const found = await this.storage.find(key);
      if (found) {
        await this.storage.remove(found.key);
        removed++;
      }
    }
    return removed;
  }

  async setStatus(info: BackupInfo, status: BackupStatus): Promise<BackupInfo> {
    const next = { ...info, status };
    await this.write(next);
    return next;
  }

  /** Promotes WAITING_FOR_WALS backups whose WAL range is now complete: those now DONE, and how many still wait. */
  async promoteComplete(): Promise<{ promoted: BackupInfo[]; stillWaiting: number }> {
    const promoted: BackupInfo[] = [];
    let stillWaiting = 0;
    for (const info of await this.list()) {
      if (info.status !== 'WAITING_FOR_WALS') continue;
      if (await this.walsComplete(info)) promoted.push(await this.setStatus(info, 'DONE'));
      else stillWaiting++;
    }
    return { promoted, stillWaiting };
  }

  /** Every segment from the backup's begin WAL to its end WAL is archived. */
  async walsComplete(info: BackupInfo): Promise<boolean> {
    const size = await this.catalog.segmentSize();
    const last = segmentNumber(info.endWal, size);
    // a range that ends before it begins is no backup's: never DONE
    if (segmentNumber(info.beginWal, size) > last) return false;
    for (let seg = info.beginWal; segmentNumber(seg, size) <= last; seg = nextSegment(seg, size)) {
      if (!(await this.catalog.findWal(seg))) return false;
    }
    return true;
  }

  /** After a receiver restart: backups that were running cannot finish any more. */
  async failInterrupted(): Promise<string[]> {
    const failed: string[] = [];
    for (const info of await this.list()) {
      if (info.status === 'STARTED' && !this.receiving.has(info.backupId)) {
        await this.fail(info.backupId, 'the receiver stopped while the backup was running');
        failed.push(info.backupId);
      }
    }
    return failed;
  }

  /**
   * What interrupted work left (cron): files of FAILED backups (a write that committed after its
   * backup failed), and whole prefixes no backup.info names (a removal cut short). Returns how many objects went.
   */
  async removeLeftovers(): Promise<number> {
    let removed = 0;
    for (const id of await this.ids()) {
      const info = await this.read(id).catch((err: unknown) => (err instanceof BarmanError && err.code === ErrorCode.STORAGE_NOT_FOUND ? undefined : 'unreadable'));
      if (info === undefined) removed += await this.storage.removePrefix(this.layout.backupPrefix(id));
      else if (info !== 'unreadable' && info.status === 'FAILED') removed += await this.removeFiles(id);
    }
    return removed;
  }

  async remove(id: string): Promise<void> {
    // backup.info first: from that moment the backup is gone from every listing, whatever follows
    await this.storage.remove(this.layout.backupInfoKey(id));
    await this.storage.removePrefix(this.layout.backupPrefix(id));
  }

  // ---- reading a backup back ----

  /** The backup's manifest (plain JSON), or undefined when it has none. */
  async manifest(id: string): Promise<string | undefined> {
    try {
      return (await this.storage.readAll(this.layout.manifestKey(id), 256 * 1024 * 1024)).toString('utf8');
    } catch (err) {
      if (err instanceof BarmanError && err.code === ErrorCode.STORAGE_NOT_FOUND) return undefined;
      throw err;
    }
  }

  /**
   * Where the backup's files are and its directories. Backups written before contents.json
   * existed are listed instead (their empty directories are then not known).
   */
  async contents(id: string): Promise<BackupContents> {
    try {
      return JSON.parse((await this.storage.readAll(this.layout.contentsKey(id), 256 * 1024 * 1024)).toString('utf8')) as BackupContents;
    } catch (err) {
      if (!(err instanceof BarmanError && err.code === ErrorCode.STORAGE_NOT_FOUND)) throw err;
    }
    const manifest = await this.manifest(id);
    const contents: BackupContents = { directories: [], files: {} };
    const stored = new Map<string, string>();
    for await (const obj of this.storage.list(this.layout.backupDataPrefix(id))) stored.set(obj.plainKey, obj.key);
    const dirs = new Set<string>();
    for (const f of manifest ? parseManifest(manifest).files : []) {
      const key = stored.get(this.layout.backupFileKey(id, f.path));
      if (key) contents.files[f.path] = { key, size: f.size };
      const parts = f.path.split('/');
      for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join('/'));
    }
    contents.directories = [...dirs].sort();
    return contents;
  }

  /**
   * The plain bytes of one file of a backup, as recorded in `contents`: BACKUP_NOT_FOUND when it
   * has no such file, CHECKSUM_MISMATCH when its stored bytes no longer decompress (damaged).
   */
  async readFile(id: string, contents: BackupContents, path: string, bundles?: BundleReader): Promise<AsyncIterable<Buffer>> {
    const where = Object.hasOwn(contents.files, path) ? contents.files[path] : undefined;
    const missing = () => new BarmanError(ErrorCode.BACKUP_NOT_FOUND, `backup ${id} has no file ${path.slice(0, 200)}`, `Run barman-receiver verify-backup ${this.catalog.server} ${id}.`);
    if (!where) throw missing();
    let stream: AsyncIterable<Buffer> | Iterable<Buffer>;
    try {
      if (where.offset === undefined) stream = await this.storage.read(where.key);
      else if (bundles) stream = await bundles.member(where);
      else stream = await this.storage.readPart(where.key, { start: where.offset, end: where.offset + (where.length ?? 0) });
    } catch (err) {
      if (err instanceof BarmanError && err.code === ErrorCode.STORAGE_NOT_FOUND) throw missing();
      throw damaged(err, id, path, this.catalog.server);
    }
    return damageSaysSo(stream, id, path, this.catalog.server);
  }

  /**
   * What is wrong with the stored copy of one file of a backup, read back whole against its
   * manifest entry (its size, and its checksum with the algorithm recorded for it): undefined when
   * nothing is. verify-backup asks it of every file; the service, of a file an agent refused
   * (a bundle member read on its own range, apart from any restore's bundle reader).
   */
  async fileProblem(id: string, contents: BackupContents, file: Pick<ManifestFile, 'path' | 'size' | 'checksumAlgorithm' | 'checksum'>): Promise<string | undefined> {
    try {
      const hash = file.checksumAlgorithm ? fileChecksum(file.checksumAlgorithm) : undefined;
      let size = 0;
      for await (const chunk of await this.readFile(id, contents, file.path)) {
        hash?.update(chunk);
        size += chunk.length;
      }
      if (size !== file.size) return `size ${size}, manifest says ${file.size}`;
      if (hash && hash.digest() !== file.checksum) return 'checksum mismatch';
      return undefined;
    } catch (err) {
      const code = err instanceof BarmanError ? err.code : undefined;
      const cause = (err as Error).cause instanceof Error ? ((err as Error).cause as Error).message : (err as Error).message;
      return code === ErrorCode.BACKUP_NOT_FOUND ? 'missing' : code === ErrorCode.CHECKSUM_MISMATCH ? `cannot be decompressed (${cause})` : (err as Error).message;
    }
  }

  /**
   * The stored zstd frames of one file of a backup as they are, one buffer per frame, for a reader
   * that decompresses them itself (and checks the plain bytes against the manifest); undefined when
   * the file is not stored as zstd. Errors as readFile's.
   */
  async readFileFrames(id: string, contents: BackupContents, path: string, bundles?: BundleReader): Promise<AsyncIterable<Buffer> | undefined> {
    const where = Object.hasOwn(contents.files, path) ? contents.files[path] : undefined;
    if (!where) return this.readFile(id, contents, path, bundles); // refused there, as it says
    if (parseStoredKey(where.key).compression !== 'zstd') return undefined;
    const range = where.offset === undefined ? undefined : { start: where.offset, end: where.offset + (where.length ?? 0) };
    let stored: AsyncIterable<Buffer> | Iterable<Buffer>;
    try {
      if (range && bundles) stored = [await bundles.memberStored(where)];
      else stored = await this.storage.readStoredStream(where.key, range);
    } catch (err) {
      if (err instanceof BarmanError && err.code === ErrorCode.STORAGE_NOT_FOUND) return this.readFile(id, contents, path, bundles);
      throw damaged(err, id, path, this.catalog.server);
    }
    return damageSaysSo(zstdStoredFrames(stored, describeStored(this.storage, where)), id, path, this.catalog.server);
  }

  /** A reader of this backup's bundles for one restore (readFile): each bundle read once. */
  bundleReader(contents: BackupContents): BundleReader {
    return new BundleReader(this.storage, contents);
  }
}

/** A stored file as errors name it: its key, the byte range of a bundle member, and the storage. */
function describeStored(storage: Storage, where: StoredFile): string {
  const range = where.offset === undefined ? '' : ` (bytes ${where.offset}-${where.offset + (where.length ?? 0)})`;
  return `${where.key}${range} in ${storage.location}`;
}

/** bundles a BundleReader holds at once (members are asked for in the backup's order: one or two are in use) */
const KEPT_BUNDLES = 3;
/** a bundle's stored bytes: BUNDLE_SIZE plain and its last member, compressed (no larger), with room to spare */
const MAX_BUNDLE_STORED = 2 * (BUNDLE_SIZE + BUNDLE_FILE_LIMIT);

/**
 * The bundle members of one backup for one restore: each bundle's stored bytes are read whole,
 * once, and its members decompressed from memory (no ranged read, file handle and stream per
 * small file). A bundle is let go once all its members have been asked for; at most KEPT_BUNDLES
 * are held (the least recently used goes first, and a member of it asked for later reads it again),
 * so memory stays a few bundles whatever the order of the requests.
 */
export class BundleReader {
  private readonly kept = new Map<string, Promise<Buffer>>();
  /** members of each bundle not yet asked for */
  private readonly left = new Map<string, number>();

  constructor(private readonly storage: Storage, contents: BackupContents) {
    for (const f of Object.values(contents.files)) if (f.offset !== undefined) this.left.set(f.key, (this.left.get(f.key) ?? 0) + 1);
  }

  /** The plain bytes of the member `where` names, one buffer per compressed frame. */
  async member(where: StoredFile): Promise<Buffer[]> {
    const stored = await this.memberStored(where);
    return decompressWhole(parseStoredKey(where.key).compression, stored, describeStored(this.storage, where));
  }

  /** The stored bytes of the member `where` names, as they are (still compressed). */
  async memberStored(where: StoredFile): Promise<Buffer> {
    const key = where.key;
    const start = where.offset ?? 0;
    const end = start + (where.length ?? 0);
    const what = describeStored(this.storage, where);
    let bytes = this.kept.get(key);
    this.kept.delete(key);
    if (!bytes) {
      bytes = this.storage.readStored(key, MAX_BUNDLE_STORED);
      bytes.catch(() => undefined); // awaited below by every member that shares it
    }
    const left = (this.left.get(key) ?? 1) - 1;
    this.left.set(key, left);
    // most recently used last; one with nothing left to give goes at once
    if (left > 0) this.kept.set(key, bytes);
    for (const old of this.kept.keys()) if (this.kept.size > KEPT_BUNDLES) this.kept.delete(old);
    const stored = await bytes;
    if (end > stored.length) throw new BarmanError(ErrorCode.STORAGE_CORRUPT, `${what}: the bundle holds only ${stored.length} bytes`, 'The stored copy is damaged; restore it from another copy of the catalog, or take a new backup.');
    return stored.subarray(start, end);
  }
}

/**
 * A backup file's bytes as they arrive: never more than announced, CRC-32C'd on the way; at its
 * end, as many as announced and the CRC-32C the agent computed over what it sent.
 */
class Arrival {
  private readonly crc = crc32c();
  private value = 0;
  private received = 0;
  /** compressed frames received (a compressed transfer: one per chunk, one per BLOCK_SIZE plain bytes) */
  private frames = 0;

  constructor(private readonly rel: string, private readonly size: number, private readonly wire?: WireCompression) {}

  /** frames of BLOCK_SIZE plain bytes a file of `size` bytes is sent in */
  private get expectedFrames(): number {
    return Math.ceil(this.size / BLOCK_SIZE);
  }

  /**
   * One chunk as it arrived. Compressed by the agent, it must be one whole frame (checked by its
   * headers first) of BLOCK_SIZE plain bytes (the last one fewer); it is decompressed here, and
   * the CRC-32C, like the count, is of the plain bytes: what is stored is known to give back
   * exactly the bytes the agent read and hashed.
   */
  async take(chunk: Uint8Array): Promise<void> {
    let plain = chunk;
    if (this.wire) {
      if (++this.frames > this.expectedFrames) throw new BarmanError(ErrorCode.PROTOCOL, `${this.rel}: more compressed frames than its ${this.size} bytes make`, 'Agent and receiver must run compatible versions.');
      try {
        plain = await decompressWireFrame(chunk);
      } catch (err) {
        throw new BarmanError(ErrorCode.PROTOCOL, `${this.rel}: a chunk is not a zstd frame as barman-ts makes them (${(err as Error).message})`, 'Agent and receiver must run compatible versions.');
      }
      const last = this.frames === this.expectedFrames;
      if (last ? this.received + plain.length !== this.size : plain.length !== BLOCK_SIZE) {
        throw new BarmanError(ErrorCode.CHECKSUM_MISMATCH, `${this.rel}: a compressed frame decompresses to ${plain.length} bytes, not the ${last ? this.size - this.received : BLOCK_SIZE} of its place in the file`, 'Take the backup again; check the memory of the PostgreSQL host if it repeats.');
      }
    } else if (this.received + chunk.length > this.size) throw new BarmanError(ErrorCode.PROTOCOL, `${this.rel}: more bytes than the ${this.size} announced`, 'Agent and receiver must run compatible versions.');
    this.received += plain.length;
    this.value = this.crc(plain, this.value);
  }

  /**
   * Checks the transfer against the agent's CRC-32C and answers the file's checksum for the
   * manifest in `algorithm`: the CRC-32C computed here (it matched the agent's), or the agent's
   * SHA-256 of the bytes it read, which the end must then carry.
   */
  check(senderCrc32c: string | undefined, algorithm: ChecksumAlgorithm, senderSha256: string | undefined): string {
    const rel = this.rel;
    if (this.received !== this.size) throw new BarmanError(ErrorCode.BACKUP_FAILED, `${rel}: received ${this.received} of ${this.size} bytes`, 'The transfer was cut short; take the backup again.');
    if (senderCrc32c === undefined) throw new BarmanError(ErrorCode.PROTOCOL, `${rel}: the end of a backup file carries no CRC-32C`, 'Agent and receiver must run compatible versions of barman-ts.');
    if (crc32cHex(this.value) !== senderCrc32c) throw new BarmanError(ErrorCode.CHECKSUM_MISMATCH, `${rel}: checksum differs from the agent's`, 'Take the backup again; check the network path and memory of both hosts if it repeats.');
    if (algorithm === 'CRC32C') return crc32cManifestHex(this.value);
    if (!senderSha256) throw new BarmanError(ErrorCode.PROTOCOL, `${rel}: the end of a backup file carries no SHA-256, which backup_checksum = sha256 records`, 'Agent and receiver must run compatible versions of barman-ts.');
    return senderSha256;
  }
}

// the rules for paths inside a backup live with the recovery writer's, in shared/
export { readableBackupPath, safeRelativePath } from '../../shared/backup/paths';

/** How far the agent's reported start time may be from this host's clock. */
export const MAX_CLOCK_SKEW_MS = 5 * 60 * 1000;
/** An existing backup ID at most this far ahead is one taken a moment ago: waited out, so IDs stay in time order. */
const ID_WAIT_LIMIT_MS = 2000;

function wholeSecond(ms: number): Date {
  return new Date(Math.floor(ms / 1000) * 1000);
}

/** Refuses a backup whose start time, by the PostgreSQL host's clock, is too far from ours. */
export function checkClockSkew(reported: string, now: number): void {
  const skew = Date.parse(reported) - now;
  if (Math.abs(skew) <= MAX_CLOCK_SKEW_MS) return;
  const minutes = Math.round(Math.abs(skew) / 60_000);
  throw new BarmanError(
    ErrorCode.CLOCK_SKEW,
    `the PostgreSQL host says the backup started at ${reported.slice(0, 40)}, ${minutes} minutes ${skew > 0 ? 'ahead of' : 'behind'} the backup host's clock (${new Date(now).toISOString()})`,
    `Synchronise the clocks of both hosts (NTP: chrony or systemd-timesyncd); at most ${MAX_CLOCK_SKEW_MS / 60_000} minutes of difference are accepted.`,
  );
}


/** A backup file's bytes; a stored copy that no longer decompresses is a damaged file, said as such. */
async function* damageSaysSo(stream: AsyncIterable<Buffer> | Iterable<Buffer>, id: string, path: string, server: string): AsyncGenerator<Buffer> {
  try {
    for await (const chunk of stream) yield chunk;
  } catch (err) {
    throw damaged(err, id, path, server);
  }
}

/** A stored copy that no longer decompresses (STORAGE_CORRUPT) as the damaged backup file it is; any other error as it is. */
function damaged(err: unknown, id: string, path: string, server: string): unknown {
  if (!(err instanceof BarmanError && err.code === ErrorCode.STORAGE_CORRUPT)) return err;
  return new BarmanError(ErrorCode.CHECKSUM_MISMATCH, `backup ${id}: ${path} in the catalog does not match its manifest: it no longer decompresses (${err.message})`, damagedBackupHint(server, id), { cause: err });
}

