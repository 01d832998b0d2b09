// `barman-receiver cron`: for every server, promote backups whose WAL has arrived, apply the
// retention policy (respecting keep and minimum_redundancy), remove WAL no remaining backup
// needs, clear temporary files a crash left in incoming/ long ago, and record the checksums of
// WAL files stored before checksums (receiver/catalog/maintenance.ts), as each catalog's one writer.

import type { ReceiverConfig } from '../../shared/config/receiver';
import type { CronReport } from '../catalog/maintenance';
import { changeCatalog } from './catalog-change';

export type { CronReport } from '../catalog/maintenance';

export async function runCron(config: ReceiverConfig, now = new Date()): Promise<CronReport[]> {
  const reports: CronReport[] = [];
  for (const server of config.servers.values()) reports.push((await changeCatalog(config, server.name, { action: 'cron' }, now)) as CronReport);
  return reports;
}
