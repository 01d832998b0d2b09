// Changes a DBA asks of a server's catalog: keep (or release) a backup, delete one, and cron's
// housekeeping (promote, retention, WAL no backup needs, what interrupted writes left in the
// storage, checksums of files stored before checksums). Run by the catalog's one writer (lock.ts): `serve` when it runs,
// asked over its admin connection, else the command itself with the catalog lock held.

import type { BackupInfo } from '../../shared/backup/info';
import type { ServerConfig } from '../../shared/config/receiver';
import { BarmanError, ErrorCode } from '../../shared/errors';
import type { BackupCatalog } from './backups';
import { applyRetention, oldestNeededSegment } from './retention';
import { hashStoredWal, type WalArchive } from './wal-archive';

/** interrupted writes younger than this may belong to a transfer in progress */
const STALE_WRITE_MS = 24 * 3600 * 1000;

/** What a DBA asks of a catalog; `backup` is an ID, latest or oldest. */
export type CatalogChange = { action: 'keep' | 'release' | 'delete'; backup: string } | { action: 'cron' };
export const CATALOG_ACTIONS = ['keep', 'release', 'delete', 'cron'] as const;

export interface CronReport {
  server: string;
  promoted: string[];
  removedBackups: string[];
  removedWals: number;
  /** temporary files or incomplete uploads interrupted writes left, and files of failed or half-removed backups */
  removedTemp: number;
  /** WAL files stored by versions before checksums whose checksum was recorded now */
  checksumsRecorded: number;
  notes: string[];
}

/** Makes the change; the caller is the catalog's writer. WAL is removed or renamed under the archive's commit lock. */
export async function applyCatalogChange(server: ServerConfig, backups: BackupCatalog, archive: Pick<WalArchive, 'withCommitLock'>, change: CatalogChange, now = new Date()): Promise<BackupInfo | CronReport> {
  switch (change.action) {
    case 'keep':
    case 'release':
      return keepBackup(backups, change.backup, change.action === 'release');
    case 'delete':
      return deleteBackup(server, backups, change.backup);
    case 'cron':
      return cron(server, backups, archive, now);
  }
}

async function keepBackup(backups: BackupCatalog, id: string, release: boolean): Promise<BackupInfo> {
  const info = await backups.resolve(id);
  const next = { ...info, keep: !release };
  await backups.write(next);
  return next;
}

async function deleteBackup(server: ServerConfig, backups: BackupCatalog, id: string): Promise<BackupInfo> {
  const info = await backups.resolve(id);
  if (info.keep) throw new BarmanError(ErrorCode.RETENTION, `backup ${info.backupId} is marked keep`, `Release it first: barman-receiver keep ${server.name} ${info.backupId} --release`);
  if (info.status === 'STARTED') throw new BarmanError(ErrorCode.BACKUP_IN_PROGRESS, `backup ${info.backupId} is still running`, 'Wait for it to finish or fail.');
  if (info.status === 'DONE') {
    const done = (await backups.list()).filter((b) => b.status === 'DONE');
    if (done.length - 1 < server.minimumRedundancy) {
      throw new BarmanError(ErrorCode.RETENTION, `deleting ${info.backupId} would leave ${done.length - 1} DONE backup(s), fewer than minimum_redundancy = ${server.minimumRedundancy}`, 'Take a new backup first, or lower minimum_redundancy in the configuration.');
    }
  }
  await backups.remove(info.backupId);
  return info;
}

async function cron(server: ServerConfig, backups: BackupCatalog, archive: Pick<WalArchive, 'withCommitLock'>, now: Date): Promise<CronReport> {
  const catalog = backups.catalog;
  const report: CronReport = { server: server.name, promoted: [], removedBackups: [], removedWals: 0, removedTemp: 0, checksumsRecorded: 0, notes: [] };
  report.promoted = (await backups.promoteComplete()).promoted.map((b) => b.backupId);
  const all = await backups.list();
  const decision = applyRetention(all, server.retentionPolicy, server.minimumRedundancy, now);
  report.notes.push(...decision.notes);
  for (const b of decision.remove) {
    await backups.remove(b.backupId);
    report.removedBackups.push(b.backupId);
  }
  const remaining = all.filter((b) => !report.removedBackups.includes(b.backupId));
  // WAL: only when a policy is set (without one the catalog keeps everything) and a backup remains
  const oldest = server.retentionPolicy ? oldestNeededSegment(remaining) : undefined;
  if (oldest) report.removedWals = await archive.withCommitLock(() => catalog.removeWalBefore(oldest));
  report.removedTemp = (await catalog.storage.cleanup(new Date(now.getTime() - STALE_WRITE_MS))) + (await backups.removeLeftovers());
  // files stored before checksums get theirs recorded, once: what they hold now is trusted from
  // here on (whether they changed before cannot be known), and every later read is checked
  for (const stored of await catalog.uncheckedWal()) {
    const sha256 = await hashStoredWal(catalog, stored);
    if (!sha256) {
      report.notes.push(`${stored.name} was stored without a checksum and no longer decompresses; left as it is`);
      continue;
    }
    const recorded = await archive.withCommitLock(async () => {
      // a duplicate push may have recorded it meanwhile
      if ((await catalog.findWal(stored.name))?.key !== stored.key) return false;
      await catalog.recordChecksum(stored, sha256);
      return true;
    });
    if (recorded) report.checksumsRecorded++;
  }
  return report;
}
