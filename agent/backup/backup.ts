// Taking a base backup of the local cluster and streaming it to the receiver.
//
// Non-exclusive pg_backup_start / pg_backup_stop in one dedicated session (kept open for the
// whole backup) rather than the replication protocol's BASE_BACKUP: the agent reads the files
// itself, several at once with backpressure, checksumming each as it reads, which BASE_BACKUP's one
// tar stream would serialise through a single walsender.

import { abortable } from '../../shared/abort';
import type { AgentConfig } from '../../shared/config/agent';
import { BarmanError, ErrorCode, asBarmanError } from '../../shared/errors';
import type { BackupStart, BackupStop } from '../../shared/protocol/frames';
import { backupCalls, connectPostgres, supportedServerVersion, walSegmentSize } from '../postgres';
import type { AgentConnection } from '../../shared/protocol/client';
import { wireCompressor } from '../../shared/protocol/chunks';
import { type BackupFileEntry, walkDataDirectory } from './walk';

/** files read and sent at once: most files of a cluster are small, each costs a round trip */
const PARALLEL_FILES = 8;

export interface BackupResult {
  backupId: string;
  status: string;
  files: number;
  bytes: number;
}

export interface BackupProgress {
  (event: { phase: 'started'; backupId: string } | { phase: 'files'; done: number; total: number; bytes: number; totalBytes: number } | { phase: 'stopped'; stopLsn: string }): void;
}

/**
 * Takes a backup and sends it. `signal` (the daemon stopping) abandons it at once: the receiver is
 * told why (backup-abort, the backup FAILED with that reason) and the PostgreSQL session is closed,
 * which ends the backup there; the signal's reason, a BarmanError, is what this rejects with.
 */
export async function takeBackup(conn: AgentConnection, config: AgentConfig, requestId?: number, progress?: BackupProgress, signal?: AbortSignal): Promise<BackupResult> {
  const pg = await connectPostgres(config.conninfo, { application_name: 'barman-agent backup' });
  let backupId: string | undefined;
  let inBackup = false;
  let calls: ReturnType<typeof backupCalls> | undefined;
  const run = async (): Promise<BackupResult> => {
    const version = await supportedServerVersion(pg);
    calls = backupCalls(version);
    const segmentSize = await walSegmentSize(pg);
    const pgdata = (await pg.query<{ d: string }>("select current_setting('data_directory') as d")).rows[0]!.d;
    // a hot standby is backed up like a primary (non-exclusive backups work there), with three
    // differences: the timeline comes from its last restartpoint (pg_walfile_name() is refused
    // during recovery), pg_backup_stop switches no WAL segment (the backup's last segment is
    // archived by the primary, whose archiving feeds the catalog: the backup waits for it as
    // WAITING_FOR_WALS), and its end is the standby's minimum recovery point, which is why
    // global/pg_control goes last (as it does anyway)
    const standby = (await pg.query<{ r: boolean }>('select pg_is_in_recovery() as r')).rows[0]!.r;
    const sysid = (await pg.query<{ s: string }>('select system_identifier::text as s from pg_control_system()')).rows[0]!.s;
    const tablespaces = (await pg.query<{ oid: string; name: string; location: string }>(
      "select oid::text as oid, spcname as name, pg_tablespace_location(oid) as location from pg_tablespace where spcname not in ('pg_default', 'pg_global') order by oid",
    )).rows;
    const label = `barman-ts ${new Date().toISOString()}`;
    const startLsn = (await pg.query<{ lsn: string }>(calls.start, [label])).rows[0]!.lsn;
    inBackup = true;
    // the timeline of the WAL being written now (pg_control_checkpoint() lags after a promotion);
    // on a standby the timeline of the restartpoint the backup starts from
    const meta = standby
      ? (await pg.query<{ tli: number; now: Date }>('select timeline_id as tli, now() as now from pg_control_checkpoint()')).rows[0]!
      : (await pg.query<{ wal: string; now: Date }>('select pg_walfile_name($1::pg_lsn) as wal, now() as now', [startLsn])).rows.map((r) => ({ tli: parseInt(r.wal.slice(0, 8), 16), now: r.now }))[0]!;
    const start: BackupStart = { startLsn, timeline: meta.tli, startTime: meta.now.toISOString(), systemIdentifier: sysid, pgVersion: version, segmentSize, pgdata, tablespaces };
    // files compressed here, where they are read, when the receiver stores them so: it then
    // writes the frames as they come instead of receiving every plain byte and compressing it
    const canCompress = wireCompressor('zstd') ? (['zstd'] as const) : undefined;
    const accepted = await conn.call(
      (id) => ({ type: 'backup-begin', id, start, ...(requestId !== undefined ? { requestId } : {}), ...(canCompress ? { canCompress: [...canCompress] } : {}) }),
      (f) => (f.type === 'backup-accepted' ? f : undefined),
    );
    backupId = accepted.backupId;
    const compress = accepted.compression ? wireCompressor(accepted.compression) : undefined;
    // each file's CRC-32C goes with it; its SHA-256 only where the receiver records that one instead
    const sha256 = accepted.checksum === 'sha256';
    progress?.({ phase: 'started', backupId });

    const { files, directories, symlinks } = await walkDataDirectory(pgdata);
    // global/pg_control goes last, after every other file is in (walk puts it at the end)
    const control = files[files.length - 1]?.path === 'global/pg_control' ? files.pop() : undefined;
    const total = files.length + (control ? 1 : 0);
    const totalBytes = files.reduce((n, f) => n + f.size, control?.size ?? 0);
    // what the backup host measures its progress against (shown to whoever waits on the backup there)
    await conn.send({ type: 'backup-total', backupId, files: total, bytes: totalBytes });
    let done = 0;
    let bytes = 0;
    let sent = 0;
    const send = async (file: BackupFileEntry) => {
      const ack = await conn.putFile({ kind: 'backup-file', backupId: backupId!, path: file.path, mtime: file.mtime }, file.absolute, { statSize: file.size, compress, sha256 });
      done++;
      if (ack) {
        sent++;
        bytes += file.size;
      }
      progress?.({ phase: 'files', done, total, bytes, totalBytes });
    };
    let next = 0;
    let failed = false;
    await Promise.all(Array.from({ length: PARALLEL_FILES }, async () => {
      try {
        while (next < files.length && !failed && !signal?.aborted) await send(files[next++]!);
      } catch (err) {
        failed = true; // the other workers stop at their next file: the backup is lost anyway
        throw err;
      }
    }));
    if (signal?.aborted) throw signal.reason;
    if (control) await send(control);

    const stopped = (await pg.query<{ lsn: string; labelfile: string; spcmapfile: string | null }>(calls.stop)).rows[0]!;
    // pg_backup_stop on a primary switches to a new WAL segment itself, so the segment holding
    // the stop LSN is archived (and the backup can become DONE) even on an idle server
    inBackup = false;
    const labelTimeline = /^START TIMELINE: (\d+)$/m.exec(stopped.labelfile)?.[1];
    if (labelTimeline !== undefined && Number(labelTimeline) !== start.timeline) {
      throw new BarmanError(ErrorCode.BACKUP_FAILED, `the backup started on timeline ${labelTimeline}, not ${start.timeline} as read when it began (the standby changed timeline meanwhile)`, 'Take the backup again.');
    }
    const stopTime = (await pg.query<{ now: Date }>('select clock_timestamp() as now')).rows[0]!.now.toISOString();
    progress?.({ phase: 'stopped', stopLsn: stopped.lsn });
    if (signal?.aborted) throw signal.reason;
    const stop: BackupStop = { stopLsn: stopped.lsn, stopTime, backupLabel: stopped.labelfile, tablespaceMap: stopped.spcmapfile ?? '', directories, symlinks };
    const status = await conn.call(
      (id) => ({ type: 'backup-end', id, backupId: backupId!, stop, fileCount: sent }),
      (f) => (f.type === 'backup-status' ? f.status : undefined),
    );
    return { backupId, status, files: sent, bytes };
  };
  const work = run();
  try {
    if (!signal) return await work;
    // abandoned, the work stops at its next step (or fails as the session closes): nothing unhandled
    work.catch(() => undefined);
    return await abortable(work, signal);
  } catch (err) {
    const e = asBarmanError(err);
    if (backupId) {
      await conn.call((id) => ({ type: 'backup-abort', id, backupId: backupId!, reason: e.message.slice(0, 4000) }), (f) => (f.type === 'backup-status' ? f : undefined)).catch(() => undefined);
    }
    throw e;
  } finally {
    // closing the session aborts a non-exclusive backup anyway (a stopping daemon does just that); this does it sooner
    if (inBackup && calls && !signal?.aborted) await pg.query(calls.abort).catch(() => undefined);
    await pg.end().catch(() => undefined);
  }
}
