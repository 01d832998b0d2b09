// `barman-receiver check <srv>`: configuration, barman_home writable, WAL arriving, and, once WAL
// was streamed for the server, a live stream.

import { constants, promises as fs } from 'node:fs';
import type { ReceiverConfig } from '../../shared/config/receiver';
import { type CheckResult, runCheck } from '../../shared/check';
import { BarmanError, ErrorCode } from '../../shared/errors';
import { BackupCatalog } from '../catalog/backups';
import { ServerCatalog } from '../catalog/catalog';
import { requireServer } from './servers';
import { serverStatus } from './status';

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
  const streaming = await streamingCheck(config, server.name, catalog, now);
  if (streaming) results.push(streaming);
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

/**
 * Once a stream was opened for the server, its WAL is expected streamed: the check fails while no
 * daemon is connected or its stream is stale. Not run (undefined) for a server never streamed.
 */
async function streamingCheck(config: ReceiverConfig, name: string, catalog: ServerCatalog, now: Date): Promise<CheckResult | undefined> {
  if (!(await catalog.streamingRecord())) return undefined;
  const turnOff = `if streaming was turned off on purpose, remove ${catalog.streamingRecordPath}`;
  return runCheck('WAL streaming', async () => {
    const s = await serverStatus(config, name, now);
    const rpo = s.rpo_seconds === null ? '' : `; RPO ${s.rpo_seconds} s`;
    if (!s.receiver.running) {
      throw new BarmanError(ErrorCode.AGENT_NOT_CONNECTED, `the receiver service is not running, so nothing is streamed${rpo}`, `Start it (barman-receiver serve, or systemctl start barman-receiver); ${turnOff}.`);
    }
    if (s.streaming.state === 'disconnected') {
      throw new BarmanError(ErrorCode.AGENT_NOT_CONNECTED, `no agent daemon is connected${rpo}`, `Start barman-agent daemon on the PostgreSQL host (systemctl start barman-agent) and look at its log; ${turnOff}.`);
    }
    if (s.streaming.state !== 'streaming') {
      const heard = s.streaming.last_heard_at ? `since ${s.streaming.last_heard_at}` : 'since the daemon connected';
      throw new BarmanError(ErrorCode.AGENT_NOT_CONNECTED, `stale: the agent daemon is connected but relayed nothing from PostgreSQL ${heard}${rpo}`, `Check that PostgreSQL runs on the database host and accepts the daemon's replication connection (the daemon's log says why it cannot stream); ${turnOff}.`);
    }
    return `streaming, flushed ${s.streaming.flush_lsn ?? '-'}, lag ${s.streaming.lag_bytes ?? '?'} bytes`;
  }, '');
}
