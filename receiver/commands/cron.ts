// `barman-receiver cron`: for every server, promote backups whose WAL has arrived, apply the
// retention policy (respecting keep and minimum_redundancy), remove WAL no remaining backup
// needs, and clear temporary files a crash left in incoming/ long ago.

import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import type { ReceiverConfig } from '../../shared/config/receiver';
import { BackupCatalog } from '../catalog/backups';
import { ServerCatalog } from '../catalog/catalog';
import { applyRetention, oldestNeededSegment } from '../catalog/retention';
import { hashStoredWal } from '../catalog/wal-archive';

/** temporary files younger than this may belong to a transfer in progress */
const STALE_INCOMING_MS = 24 * 3600 * 1000;

export interface CronReport {
  server: string;
  promoted: string[];
  removedBackups: string[];
  removedWals: number;
  removedTemp: number;
  /** WAL files stored by versions before checksums whose checksum was recorded now */
  checksumsRecorded: number;
  notes: string[];
}

export async function runCron(config: ReceiverConfig, now = new Date()): Promise<CronReport[]> {
  const reports: CronReport[] = [];
  for (const server of config.servers.values()) {
    const catalog = new ServerCatalog(config.barmanHome, server.name);
    const backups = new BackupCatalog(catalog);
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
    if (oldest) report.removedWals = await catalog.removeWalBefore(oldest);
    report.removedTemp = await removeStaleIncoming(catalog, now);
    report.checksumsRecorded = await recordMissingChecksums(catalog, report.notes);
    reports.push(report);
  }
  return reports;
}

/**
 * WAL files stored before checksums get theirs recorded, once: what they hold now is trusted
 * from here on (whether they changed before cannot be known), and every later read is checked.
 */
async function recordMissingChecksums(catalog: ServerCatalog, notes: string[]): Promise<number> {
  let recorded = 0;
  for (const stored of await catalog.uncheckedWal()) {
    const sha256 = await hashStoredWal(stored);
    if (!sha256) {
      notes.push(`${stored.name} was stored without a checksum and no longer decompresses; left as it is`);
      continue;
    }
    await catalog.recordChecksum(stored, sha256);
    recorded++;
  }
  return recorded;
}

async function removeStaleIncoming(catalog: ServerCatalog, now: Date): Promise<number> {
  let removed = 0;
  for (const f of await fs.readdir(catalog.incomingDir).catch(() => [] as string[])) {
    const path = join(catalog.incomingDir, f);
    const st = await fs.stat(path).catch(() => undefined);
    if (st && now.getTime() - st.mtimeMs > STALE_INCOMING_MS && (f.endsWith('.tmp') || f.endsWith('.deleting') || f.endsWith('.backup'))) {
      await fs.rm(path, { recursive: true, force: true });
      removed++;
    }
  }
  return removed;
}
