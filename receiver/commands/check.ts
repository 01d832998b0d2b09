// `barman-receiver check <srv>`: configuration, barman_home writable, WAL arriving.

import { constants, promises as fs } from 'node:fs';
import type { ReceiverConfig } from '../../shared/config/receiver';
import { type CheckResult, runCheck } from '../../shared/check';
import { BarmanError, ErrorCode } from '../../shared/errors';
import { BackupCatalog } from '../catalog/backups';
import { ServerCatalog } from '../catalog/catalog';
import { requireServer } from './servers';

export async function checkServer(config: ReceiverConfig, name: string, now = new Date()): Promise<CheckResult[]> {
  const server = requireServer(config, name);
  const catalog = new ServerCatalog(config.barmanHome, server.name);
  const results: CheckResult[] = [{ name: 'configuration', ok: true, detail: config.file }];
  results.push(
    await runCheck('barman_home writable', async () => {
      await catalog.ensureLayout();
      await fs.access(catalog.incomingDir, constants.W_OK);
      return catalog.root;
    }, `Create ${config.barmanHome} and make it writable by the user that runs barman-receiver.`),
  );
  results.push(
    await runCheck('WAL archive', async () => {
      const last = await catalog.lastSegment();
      if (!last) throw new BarmanError(ErrorCode.WAL_NOT_FOUND, 'no WAL received yet', "Set archive_command = 'barman-agent push %p' on the PostgreSQL host, then run SELECT pg_switch_wal() there.");
      const age = Math.max(0, Math.round((now.getTime() - last.receivedAt.getTime()) / 1000));
      return `last ${last.name}, ${age} s ago`;
    }, ''),
  );
  results.push(
    await runCheck('minimum redundancy requirements', async () => {
      const done = (await new BackupCatalog(catalog).list()).filter((b) => b.status === 'DONE').length;
      if (done < server.minimumRedundancy) {
        throw new BarmanError(ErrorCode.RETENTION, `have ${done} backups, expected at least ${server.minimumRedundancy}`, `Take a backup: barman-receiver backup ${server.name} --wait (or barman-agent backup on the PostgreSQL host).`);
      }
      return `have ${done} backups, expected at least ${server.minimumRedundancy}`;
    }, ''),
  );
  return results;
}
