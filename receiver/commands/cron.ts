// `barman-receiver cron`: for every server, promote backups whose WAL has arrived, apply the
// retention policy (respecting keep and minimum_redundancy), remove WAL no remaining backup
// needs, and clear temporary files a crash left in incoming/ long ago.

import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import type { ReceiverConfig } from '../../shared/config/receiver';
import { parseWalFileName } from '../../shared/wal/names';
import { BackupCatalog } from '../catalog/backups';
import { ServerCatalog } from '../catalog/catalog';
import { applyRetention, oldestNeededSegment } from '../catalog/retention';
import { fsyncDir } from '../storage/posix';

/** temporary files younger than this may belong to a transfer in progress */
const STALE_INCOMING_MS = 24 * 3600 * 1000;

export interface CronReport {
  server: string;
  promoted: string[];
  removedBackups: string[];
  removedWals: number;
  removedTemp: number;
  notes: string[];
}

export async function runCron(config: ReceiverConfig, now = new Date()): Promise<CronReport[]> {
  const reports: CronReport[] = [];
  for (const server of config.servers.values()) {
    const catalog = new ServerCatalog(config.barmanHome, server.name);
    const backups = new BackupCatalog(catalog);
    const report: CronReport = { server: server.name, promoted: [], removedBackups: [], removedWals: 0, removedTemp: 0, notes: [] };
    report.promoted = (await backups.promoteComplete()).map((b) => b.backupId);
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
    if (oldest) report.removedWals = await removeWalBefore(catalog, oldest);
    report.removedTemp = await removeStaleIncoming(catalog, now);
    reports.push(report);
  }
  return reports;
}

async function removeWalBefore(catalog: ServerCatalog, oldest: string): Promise<number> {
  let removed = 0;
  const cut = oldest.slice(8); // log + segment: compared across timelines
  for (const dir of (await fs.readdir(catalog.walsDir).catch(() => [] as string[])).filter((d) => /^[0-9A-F]{16}$/.test(d))) {
    const path = join(catalog.walsDir, dir);
    let changed = false;
    for (const f of await fs.readdir(path)) {
      const parsed = parseWalFileName(f.replace(/\.(gz|lz4|zst)$/, ''));
      if (!parsed?.segment || parsed.segment.slice(8) >= cut) continue;
      await fs.rm(join(path, f));
      removed++;
      changed = true;
    }
    if (changed) {
      if ((await fs.readdir(path)).length === 0) await fs.rmdir(path);
      await fsyncDir(catalog.walsDir);
    }
  }
  // .backup labels of removed ranges go too; .history files always stay (recovery needs them)
  for (const f of await fs.readdir(catalog.walsDir).catch(() => [] as string[])) {
    const parsed = parseWalFileName(f);
    if (parsed?.kind === 'backup' && parsed.segment!.slice(8) < cut) {
      await fs.rm(join(catalog.walsDir, f));
      removed++;
    }
  }
  return removed;
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
