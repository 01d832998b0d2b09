// `barman-receiver drill <srv> [id] [--target-time T]`: a restore drill (receiver/drill/drill.ts),
// recorded in the catalog by its one writer. While serve runs, serve runs the drill (it holds the
// catalog; the command waits for the record); otherwise the drill runs here, reading the catalog
// only, and the lock is taken just to record it, so a serve starting meanwhile is not held up.

import type { ReceiverConfig } from '../../shared/config/receiver';
import { BarmanError, ErrorCode } from '../../shared/errors';
import type { DrillRecord } from '../catalog/catalog';
import { withServer } from '../catalog/open';
import { drillBackup, type DrillOptions } from '../drill/drill';
import { askServe, asTheWriter, catalogWriter } from './catalog-change';
import { requireServer } from './servers';

export async function drillCommand(config: ReceiverConfig, serverName: string, options: Pick<DrillOptions, 'backup' | 'targetTime' | 'log'>): Promise<DrillRecord> {
  const server = requireServer(config, serverName);
  return withServer(config, server, async ({ catalog }) => {
    const first = await catalogWriter(catalog, 'drill');
    if (first.kind === 'serve') {
      return askServe<DrillRecord>(config, catalog, first.locked, (id, key) => ({ type: 'drill-request', id, backup: options.backup ?? 'latest', targetTime: options.targetTime ?? '', key }));
    }
    // the drill only reads: the lock goes back while it runs and is taken again to record it
    await first.lock.release();
    const record = await drillBackup(config, server.name, options);
    const writer = await catalogWriter(catalog, 'drill');
    if (writer.kind === 'serve') {
      throw new BarmanError(ErrorCode.CATALOG_LOCKED, `the drill of backup ${record.backupId} ${record.passed ? 'passed' : `FAILED (${record.error})`}, but a serve took the catalog meanwhile and it could not be recorded`, `Run the drill again: with serve running, serve runs it (barman-receiver drill ${server.name}).`);
    }
    await asTheWriter(writer.lock, () => catalog.recordDrill(record));
    return record;
  });
}
