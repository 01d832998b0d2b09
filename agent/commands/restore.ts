// `barman-agent restore <id> <pgdata> [recover opts]`: the receiver plans the recovery (and
// refuses what cannot be done) and streams the backup's files and WAL to this host, where the
// same writer as `barman-receiver recover` builds a startable data directory.

import { resolve } from 'node:path';
import type { AgentConfig } from '../../shared/config/agent';
import { BarmanError, CHANGED_ON_THE_WAY_HINT, damagedBackupHint, ErrorCode } from '../../shared/errors';
import { checkProbedBinaries, probeRecoveryBinaries } from '../../shared/postgres/binaries';
import { wireDecompressor } from '../../shared/protocol/chunks';
import { AgentConnection } from '../../shared/protocol/client';
import type { StoredCopyFound } from '../../shared/protocol/frames';
import type { RecoveryOptions, RecoveryPlan } from '../../shared/recovery/plan';
import { checkDestination, type WriteOptions, type WriteSummary, writeRecovery } from '../../shared/recovery/writer';

/**
 * Files fetched at once: each small one is a round trip to the receiver, so several are asked for
 * while the big ones stream (the receiver answers up to 8 side by side).
 */
const RESTORE_PARALLEL = 8;

export async function restore(config: AgentConfig, backup: string, pgdataArg: string, options: RecoveryOptions, progress?: WriteOptions['progress'], pgBindir?: string, write: Pick<WriteOptions, 'delta' | 'primaryConninfo'> = {}): Promise<RecoveryPlan & { summary: WriteSummary }> {
  const dest = resolve(pgdataArg);
  // refused before anything is asked of the receiver: a running PostgreSQL, a non-empty directory without --delta
  await checkDestination(dest, 'destination', write.delta === true);
  // the binaries' versions are asked while the connection opens and the plan comes (as `recover`
  // does; asked one after the other, blocking, they held this thread for 50-75 ms), and checked
  // before a byte is written
  const binaries = probeRecoveryBinaries(pgBindir);
  binaries.catch(() => undefined); // (a failure is thrown where it is awaited, if the restore gets there)
  const conn = await AgentConnection.open(config, 'restore');
  try {
    const parts: Uint8Array[] = [];
    for await (const chunk of conn.fetch((id) => ({ type: 'restore-plan-request', id, backup, options: { ...options } }))) parts.push(chunk);
    let plan: RecoveryPlan;
    try {
      plan = JSON.parse(Buffer.concat(parts).toString('utf8')) as RecoveryPlan;
    } catch (err) {
      throw new BarmanError(ErrorCode.PROTOCOL, `the receiver sent an unreadable recovery plan (${(err as Error).message})`, 'Install the same barman-ts version on agent and receiver.');
    }
    // this host's PostgreSQL will start the result: it must be the backup's major version
    checkProbedBinaries(plan.backupId, plan.pgVersion, await binaries, pgBindir);
    // with zstd at hand, files the catalog stores as zstd come as their stored frames and are
    // decompressed here, on the thread pool beside the writes (the receiver does not decompress them)
    const inflate = wireDecompressor();
    const summary = await writeRecovery(plan, dest, {
      // fetch() hashes what arrives (to match the receiver's checksum) and hands that hash on: the
      // writer checks it against the manifest, and the bytes are hashed once on this host
      dataFile: (path, hashed) => conn.fetch((id) => ({ type: 'get-backup-file', id, backupId: plan.backupId, path, ...(inflate ? { accept: 'zstd' as const } : {}) }), { onVerified: hashed, inflate, refuse: damagedBackupFile(plan, path) }),
      hashes: true,
      // every chunk arrives in a buffer of its own (one WebSocket message each), never reused
      freshChunks: true,
      walFile: (name) => conn.fetchWal(name),
    }, { progress, ...write, parallel: RESTORE_PARALLEL });
    return { ...plan, summary };
  } finally {
    conn.close();
  }
}

/**
 * How restore refuses backup file `path` when the bytes that arrive do not match: the receiver's
 * end frame carries the checksum the catalog recorded for it, so a mismatch is a damaged catalog
 * copy or a damaged transfer of this file. The receiver, told, reads its copy back (`stored`):
 * intact, the bytes changed on the way; damaged, the catalog's copy is; undefined, it could not
 * tell. A copy the receiver finds damaged itself, it names in its own error.
 */
function damagedBackupFile(plan: RecoveryPlan, path: string): (detail: string, stored: StoredCopyFound | undefined) => BarmanError {
  return (detail, stored) => {
    const found = `backup ${plan.backupId}: ${path} does not match the checksum its manifest records (${detail})`;
    if (stored === 'intact') return new BarmanError(ErrorCode.CHECKSUM_MISMATCH, `${found}, and the receiver read its copy back intact`, CHANGED_ON_THE_WAY_HINT);
    if (stored === 'damaged') return new BarmanError(ErrorCode.CHECKSUM_MISMATCH, `${found}, and the receiver found the same reading its copy back`, damagedBackupHint(plan.server, plan.backupId));
    return new BarmanError(ErrorCode.CHECKSUM_MISMATCH, found, `Run barman-receiver verify-backup ${plan.server} ${plan.backupId} on the backup host; restore from another backup (list-backups) if it is damaged, or retry if it is not.`);
  };
}
