// `barman-receiver check <srv>`: configuration, barman_home writable, WAL arriving, the WAL the
// kept backups need all there and intact, and, once WAL was streamed for the server, a live stream.
//
// WAL integrity: presence is checked for the whole span the DONE backups need (one listing);
// hashing is bounded, so that a check run every few minutes stays quick on a big catalog: up to
// WAL_VERIFY_BUDGET bytes of segments per run, resuming where the previous run stopped
// (wal-verify.json in the server's directory), so every needed segment is read back in turn.
// `--verify-wal` hashes all of them now. verify-backup always hashes a backup's own range.

import type { ReceiverConfig } from '../../shared/config/receiver';
import { type CheckResult, runCheck } from '../../shared/check';
import { BarmanError, ErrorCode } from '../../shared/errors';
import type { BackupCatalog } from '../catalog/backups';
import type { ServerCatalog } from '../catalog/catalog';
import { withServer } from '../catalog/open';
import { neededSegments, shareToVerify, timelineStarts, verifyWalFiles } from '../catalog/wal-integrity';
import { requireServer } from './servers';
import { serverStatus } from './status';

/** Plain bytes of WAL hashed per `check` run without --verify-wal (64 segments of 16 MiB). */
const WAL_VERIFY_BUDGET = 1024 * 1024 * 1024;

export interface CheckOptions {
  /** hash every WAL segment the kept backups need, not a bounded share */
  verifyWal?: boolean;
}

/** Missing or damaged WAL in the span the DONE backups need; returns what was verified. */
async function checkWalIntegrity(catalog: ServerCatalog, backups: BackupCatalog, server: string, verifyAll: boolean): Promise<string> {
  const done = (await backups.list()).filter((b) => b.status === 'DONE');
  const identity = await catalog.identity();
  if (done.length === 0 || !identity) return 'no DONE backup needs WAL yet';
  const { firstSegmentOf, problems: historyProblems } = await timelineStarts(catalog, identity.segmentSize);
  const { present, missing } = neededSegments(done, await catalog.listSegments(), firstSegmentOf, identity.segmentSize);
  let toVerify = present;
  let share = 'all verified';
  const budget = Math.max(1, Math.floor(WAL_VERIFY_BUDGET / identity.segmentSize));
  if (!verifyAll && present.length > budget) {
    toVerify = shareToVerify(present, await catalog.walVerifyCursor(), budget);
    await catalog.saveWalVerifyCursor(toVerify[toVerify.length - 1]!).catch(() => undefined);
    share = `${toVerify.length} verified this run, the others in turn on later runs (--verify-wal: all now)`;
  }
  const wal = await verifyWalFiles(catalog, toVerify);
  const problems = [...historyProblems, ...missing.map((m) => `${m}: missing`), ...wal.problems];
  if (problems.length) {
    const shown = problems.slice(0, 5).join('; ') + (problems.length > 5 ? `; and ${problems.length - 5} more` : '');
    throw new BarmanError(
      wal.problems.length || historyProblems.length ? ErrorCode.CHECKSUM_MISMATCH : ErrorCode.WAL_NOT_FOUND,
      `WAL the backups need is missing or damaged: ${shown}`,
      `Recovery stops at the first of them. Push each again from a PostgreSQL host that still has it in pg_wal (barman-agent push <pg_wal>/<name>; an identical copy replaces a damaged one), or take a new backup now (barman-receiver backup ${server} --wait) so that recovery no longer needs them.`,
    );
  }
  const unchecked = wal.unchecked.length ? `; ${wal.unchecked.length} stored without a checksum by an older version (barman-receiver cron records them)` : '';
  return `${present.length} segments from ${present[0]} to ${present[present.length - 1]} present, ${share}${unchecked}`;
}

export async function checkServer(config: ReceiverConfig, name: string, now = new Date(), options: CheckOptions = {}): Promise<CheckResult[]> {
  const server = requireServer(config, name);
  return withServer(config, server, async ({ catalog, backups }) => {
    const results: CheckResult[] = [{ name: 'configuration', ok: true, detail: config.file }];
    // a missing bucket, refused credentials or an unreachable endpoint fail here, with their hint
    const storage = await runCheck('storage', async () => {
      await catalog.storage.check();
      return `${catalog.storage.driver.kind}: ${catalog.storage.location}`;
    }, `Create ${config.barmanHome} and make it writable by the user that runs barman-receiver.`);
    results.push(storage);
    if (!storage.ok) return results;
    results.push(
      await runCheck('WAL archive', async () => {
        const last = await catalog.lastSegment();
        if (!last) throw new BarmanError(ErrorCode.WAL_NOT_FOUND, 'no WAL received yet', "Set archive_command = 'barman-agent push %p' on the PostgreSQL host, then run SELECT pg_switch_wal() there.");
        const age = Math.max(0, Math.round((now.getTime() - last.receivedAt.getTime()) / 1000));
        return `last ${last.name}, ${age} s ago`;
      }, ''),
    );
    results.push(await runCheck('WAL integrity', () => checkWalIntegrity(catalog, backups, server.name, options.verifyWal ?? false), ''));
    const streaming = await streamingCheck(config, server.name, catalog, now);
    if (streaming) results.push(streaming);
    results.push(
      await runCheck('minimum redundancy requirements', async () => {
        const done = (await backups.list()).filter((b) => b.status === 'DONE').length;
        if (done < server.minimumRedundancy) {
          throw new BarmanError(ErrorCode.RETENTION, `have ${done} backups, expected at least ${server.minimumRedundancy}`, `Take a backup: barman-receiver backup ${server.name} --wait (or barman-agent backup on the PostgreSQL host).`);
        }
        return `have ${done} backups, expected at least ${server.minimumRedundancy}`;
      }, ''),
    );
    return results;
  });
}

/**
 * Once a stream was opened for the server, its WAL is expected streamed: the check fails while no
 * daemon is connected or its stream is stale. Not run (undefined) for a server never streamed.
 */
async function streamingCheck(config: ReceiverConfig, name: string, catalog: ServerCatalog, now: Date): Promise<CheckResult | undefined> {
  if (!(await catalog.streamingRecord())) return undefined;
  const turnOff = `if streaming was turned off on purpose, remove ${catalog.streamingRecordLocation}`;
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
