// The backups of one server: base/<id>/{backup.info, backup_manifest, tablespace_map, data/}.
// A backup is written into incoming/<id>.backup/ while it runs; at its end every file is
// fsynced, the directory renamed to base/<id>/data in one step, the manifest written, and only
// then is the backup WAITING_FOR_WALS. It is DONE once every WAL segment from its begin to its
// end is archived. Anything that stops it on the way leaves it FAILED, with the reason.

import { promises as fs, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { type BackupInfo, type BackupStatus, backupIdFor, emptyInfo, formatBackupInfo, isBackupId, parseBackupInfo } from '../../shared/backup/info';
import { buildManifest, type ManifestFile } from '../../shared/backup/manifest';
import { checkSymlinks, safeRelativePath } from '../../shared/backup/paths';
import { BarmanError, ErrorCode } from '../../shared/errors';
import type { BackupStart, BackupStop } from '../../shared/protocol/frames';
import { parseLsn } from '../../shared/wal/lsn';
import { majorOf } from '../../shared/postgres/version';
import { nextSegment, segmentForLsn, segmentNumber } from '../../shared/wal/names';
import { ensureDir, exists, fsyncDir, fsyncTree, IncomingFile, storageError } from '../storage/posix';
import { type ServerCatalog, writeFileDurably } from './catalog';
import type { Upload } from './upload';

export class BackupCatalog {
  /** staging directories known to exist (most files of a backup share a few directories) */
  private readonly madeDirs = new Set<string>();

  constructor(readonly catalog: ServerCatalog) {}

  dir(id: string): string {
    return join(this.catalog.baseDir, id);
  }

  dataDir(id: string): string {
    return join(this.dir(id), 'data');
  }

  manifestPath(id: string): string {
    return join(this.dir(id), 'backup_manifest');
  }

  tablespaceMapPath(id: string): string {
    return join(this.dir(id), 'tablespace_map');
  }

  stagingDir(id: string): string {
    return join(this.catalog.incomingDir, `${id}.backup`);
  }

  async list(): Promise<BackupInfo[]> {
    let ids: string[];
    try {
      ids = (await fs.readdir(this.catalog.baseDir)).filter(isBackupId).sort();
    } catch {
      return [];
    }
    const out: BackupInfo[] = [];
    for (const id of ids) {
      const info = await this.read(id).catch(() => undefined);
      if (info) out.push(info);
    }
    return out;
  }

  async read(id: string): Promise<BackupInfo> {
    return parseBackupInfo(await fs.readFile(join(this.dir(id), 'backup.info'), 'utf8'));
  }

  async write(info: BackupInfo): Promise<void> {
    await ensureDir(this.dir(info.backupId));
    await writeFileDurably(join(this.dir(info.backupId), 'backup.info'), formatBackupInfo(info));
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
    } catch {
      throw new BarmanError(ErrorCode.BACKUP_NOT_FOUND, `server ${server} has no backup ${idOrAlias}`, `List them with: barman-receiver list-backups ${server}`);
    }
  }

  /**
   * Starts a backup. Its ID and begin time come from this host's clock, never from the agent's
   * report: a start time further than MAX_CLOCK_SKEW_MS from it is refused. A second backup
   * within one second waits for the next second; an ID further ahead (a clock that went back, a
   * backup dated in the future) is not waited for: the wait is always a second or two at most.
   */
  async begin(start: BackupStart): Promise<BackupInfo> {
    await this.catalog.ensureLayout();
    const running = (await this.list()).find((b) => b.status === 'STARTED');
    if (running) {
      throw new BarmanError(ErrorCode.BACKUP_IN_PROGRESS, `backup ${running.backupId} of ${this.catalog.server} is still running`, 'Wait for it to finish (barman-receiver list-backups), then start another.');
    }
    checkClockSkew(start.startTime, Date.now());
    const newest = (await fs.readdir(this.catalog.baseDir)).filter(isBackupId).sort().pop();
    let when = wholeSecond(Date.now());
    let id = backupIdFor(when);
    for (let attempt = 0; ; attempt++) {
      const justTaken = newest !== undefined && id <= newest && newest <= backupIdFor(new Date(when.getTime() + ID_WAIT_LIMIT_MS));
      if (!justTaken && !(await exists(this.dir(id)))) break;
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
    await fs.rm(this.stagingDir(id), { recursive: true, force: true });
    await ensureDir(this.stagingDir(id));
    await this.write(info);
    return info;
  }

  /** Opens one file of the running backup `id` at its relative path (validated: no escaping the backup); the caller, ServerContext, knows it is running. */
  async beginFile(id: string, path: string, size: number, mtime: number, manifest: ManifestFile[]): Promise<Upload> {
    const staging = this.stagingDir(id);
    const rel = safeRelativePath(path);
    const full = join(staging, rel);
    const dir = dirname(full);
    let file: IncomingFile;
    try {
      if (!this.madeDirs.has(dir)) {
        await ensureDir(dir);
        this.madeDirs.add(dir);
      }
      file = await IncomingFile.createAt(full, 'none');
    } catch (err) {
      throw pathConflict(err, rel, full) ?? storageError(err, `cannot create ${rel} in backup ${id}`);
    }
    return {
      label: `${id}:${rel}`,
      write: async (chunk) => {
        if (file.size + chunk.length > size) throw new BarmanError(ErrorCode.PROTOCOL, `${rel}: more bytes than the ${size} announced`, 'Agent and receiver must run compatible versions.');
        await file.write(chunk);
      },
      finish: async (sha256) => {
        if (file.size !== size) throw new BarmanError(ErrorCode.BACKUP_FAILED, `${rel}: received ${file.size} of ${size} bytes`, 'The transfer was cut short; take the backup again.');
        const got = await file.finish(false);
        if (got !== sha256) throw new BarmanError(ErrorCode.CHECKSUM_MISMATCH, `${rel}: checksum differs from the agent's`, 'Take the backup again; check the network path and memory of both hosts if it repeats.');
        manifest.push({ path: rel, size, mtime, sha256 });
        return 'stored';
      },
      abort: () => file.discard(),
    };
  }

  /** Completes the backup's files: backup_label in, fsync, rename, manifest. Returns the new status. */
  async end(id: string, stop: BackupStop, manifest: ManifestFile[]): Promise<BackupInfo> {
    const info = await this.resolve(id);
    if (info.status !== 'STARTED') throw new BarmanError(ErrorCode.BACKUP_FAILED, `backup ${id} is ${info.status}, not running`, 'Start a new backup.');
    const staging = this.stagingDir(id);
    // symlinks are recorded, never created in the catalog; refused here if they could ever lead
    // a recovery's writes astray (a link where a file or directory of the backup goes)
    checkSymlinks(stop.symlinks, ['backup_label', ...manifest.map((f) => f.path)], stop.directories);
    try {
      const label = Buffer.from(stop.backupLabel);
      const labelFile = await IncomingFile.createAt(join(staging, 'backup_label'), 'none');
      await labelFile.write(label);
      const labelSha = await labelFile.finish(false);
      const stopSeconds = Math.floor(Date.parse(stop.stopTime) / 1000);
      const files: ManifestFile[] = [{ path: 'backup_label', size: label.length, mtime: stopSeconds, sha256: labelSha }, ...manifest.filter((f) => f.path !== 'global/pg_control')];
      const control = manifest.find((f) => f.path === 'global/pg_control');
      if (!control) throw new BarmanError(ErrorCode.BACKUP_FAILED, `backup ${id} has no global/pg_control`, 'The agent sent an incomplete data directory; check pgdata = in its configuration.');
      files.push(control); // last, as pg_basebackup lists it
      for (const dir of stop.directories) await ensureDir(join(staging, safeRelativePath(dir)));
      await fsyncTree(staging);
      this.madeDirs.clear();
      await fs.rename(staging, this.dataDir(id));
      await fsyncDir(this.dir(id));
      await fsyncDir(this.catalog.incomingDir);
      if (stop.tablespaceMap) await writeFileDurably(this.tablespaceMapPath(id), stop.tablespaceMap);
      const walRanges = [{ timeline: info.timeline, startLsn: info.beginLsn, endLsn: stop.stopLsn }];
      await writeFileDurably(this.manifestPath(id), buildManifest(info, files, walRanges));
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
      await this.write(done);
      return done;
    } catch (err) {
      throw storageError(err, `cannot complete backup ${id}`);
    }
  }

  async fail(id: string, reason: string): Promise<void> {
    const info = await this.read(id).catch(() => undefined);
    if (!info || info.status === 'DONE' || info.status === 'FAILED') return;
    await this.write({ ...info, status: 'FAILED', error: reason.replace(/\n/g, ' ') });
    await fs.rm(this.stagingDir(id), { recursive: true, force: true });
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
      if (info.status === 'STARTED') {
        await this.fail(info.backupId, 'the receiver stopped while the backup was running');
        failed.push(info.backupId);
      }
    }
    return failed;
  }

  async remove(id: string): Promise<void> {
    // rename first so a crash never leaves a half-deleted backup under its ID
    const doomed = join(this.catalog.incomingDir, `${id}.deleting`);
    await fs.rename(this.dir(id), doomed);
    await fsyncDir(this.catalog.baseDir);
    await fs.rm(doomed, { recursive: true, force: true });
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

/** Two paths of one backup that cannot both exist (sent twice, or a file where a directory is): the agent's mistake, not the disk's. */
function pathConflict(err: unknown, rel: string, full: string): BarmanError | undefined {
  const cause = err instanceof BarmanError ? err.cause : err;
  const code = (cause as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'EEXIST' || code === 'EISDIR') {
    if (statSync(full, { throwIfNoEntry: false })?.isDirectory()) {
      return new BarmanError(ErrorCode.INVALID_NAME, `${rel.slice(0, 200)} is a directory of this backup, not a file`, 'A path of a backup cannot be both a file and a directory; check what sends backups to this receiver.');
    }
    return new BarmanError(ErrorCode.INVALID_NAME, `${rel.slice(0, 200)} was already sent in this backup`, 'Each file of a backup is sent once; check what sends backups to this receiver.');
  }
  if (code === 'ENOTDIR') {
    return new BarmanError(ErrorCode.INVALID_NAME, `${rel.slice(0, 200)} lies below a file of this backup`, 'A path of a backup cannot be both a file and a directory; check what sends backups to this receiver.');
  }
  if (code === 'ENAMETOOLONG') {
    return new BarmanError(ErrorCode.INVALID_NAME, `${rel.slice(0, 100)}…: name too long`, 'PostgreSQL never names files like this; check what sends backups to this receiver.');
  }
  return undefined;
}
