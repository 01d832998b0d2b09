// `barman-agent get-wal <name> <dest>`: the restore_command. A file the receiver does not have
// exits 1 without a word (PostgreSQL asks for files that do not exist as a matter of course).
// A file whose bytes fail their checksum (damaged in the catalog or on the way) leaves nothing at
// <dest> and exits ABORT_RECOVERY: PostgreSQL then stops recovery instead of taking the damaged
// segment for the end of WAL and promoting without the transactions that follow it.
//
// Fetch-ahead: a segment asked for is answered from the spool when the prefetcher fetched it
// (agent/wal/prefetch.ts; agent/launcher.sh answers such a hit without starting Node), or once the
// prefetcher's download of it finishes; otherwise it is fetched here. Either way the prefetcher is
// started (unless it runs) to keep the next `prefetch` segments coming while PostgreSQL replays.
//
// Any other failure (receiver unreachable, timeout, refused token) depends on what PostgreSQL
// does with it: in one-shot archive recovery (recovery.signal in the data directory, which is the
// restore_command's working directory) exit 1 would read as "end of archive" and PostgreSQL would
// promote there, silently short of the archive's end, so it exits ABORT_RECOVERY and recovery stops
// until the receiver is back. A standby (standby.signal) exits 1: it retries, streams from its
// primary meanwhile, and asks again.

import { existsSync } from 'node:fs';
import { basename } from 'node:path';
import type { AgentConfig } from '../../shared/config/agent';
import { asBarmanError, BarmanError, ErrorCode, ExitCode } from '../../shared/errors';
import { isSegmentName, isValidSegmentSize, parseWalFileName } from '../../shared/wal/names';
import { AgentConnection } from '../../shared/protocol/client';
import { PrefetchControl, runPrefetcher, segmentSizeOf, WalPrefetch } from '../wal/prefetch';

export async function getWal(config: AgentConfig, name: string, dest: string, warn: (text: string) => void = () => undefined): Promise<boolean> {
  if (!parseWalFileName(name) || basename(name) !== name) {
    throw new BarmanError(ErrorCode.INVALID_NAME, `"${name}" is not a WAL file name`, "Set restore_command = 'barman-agent get-wal %f %p'.");
  }
  try {
    return await fetchWal(config, name, dest, warn);
  } catch (err) {
    throw restoreCommandError(err);
  }
}

/** A get-wal failure with the exit code PostgreSQL must see: ABORT_RECOVERY for damaged WAL, and for any failure in one-shot archive recovery. */
export function restoreCommandError(err: unknown): BarmanError {
  const e = asBarmanError(err);
  if (e.code === ErrorCode.CHECKSUM_MISMATCH) return new BarmanError(e.code, e.message, e.hint, { cause: e, exitCode: ExitCode.ABORT_RECOVERY });
  if (!inArchiveRecovery()) return e;
  return new BarmanError(e.code, e.message, `${e.hint} (Exit ${ExitCode.ABORT_RECOVERY}: this data directory is in archive recovery, where PostgreSQL would read a lower exit code as the end of the archive and promote short of it; start it again once this is fixed.)`, { cause: e, exitCode: ExitCode.ABORT_RECOVERY });
}

/** One-shot archive recovery: recovery.signal without standby.signal in the working directory (the data directory, for a restore_command). */
export function inArchiveRecovery(cwd = process.cwd()): boolean {
  return existsSync(`${cwd}/recovery.signal`) && !existsSync(`${cwd}/standby.signal`);
}

async function fetchWal(config: AgentConfig, name: string, dest: string, warn: (text: string) => void): Promise<boolean> {
  const spool = isSegmentName(name) && config.prefetch > 0 ? new WalPrefetch(config.spoolDir) : undefined;
  const control = spool && new PrefetchControl(spool);
  if (spool && control) {
    // the spool is an aid: a problem with it never fails the request, the receiver answers instead
    let askedAgain = false;
    const served = await (async () => {
      askedAgain = (await control.noteRequested(name)) === name;
      if (await spool.take(name, dest, warn)) return true;
      return (await control.waitFor(name, config.timeoutSeconds * 1000)) && spool.take(name, dest, warn);
    })().catch(() => false);
    if (served) {
      await startPrefetcher(control, config, dest, warn);
      return true;
    }
    // the prefetcher starts now (when the segment size is known), so the next segments come while
    // this one does; not for a segment asked for again (a standby at the end of the archive, polling)
    const known = askedAgain ? undefined : await control.knownSegmentSize().catch(() => undefined);
    if (known !== undefined) await control.ensureRunning(config.file, known).catch(() => undefined);
  }
  const conn = await AgentConnection.open(config, 'get');
  try {
    if (!(await conn.getFile(name, dest))) return false;
  } finally {
    conn.close();
  }
  if (control) await startPrefetcher(control, config, dest, warn);
  return true;
}

async function startPrefetcher(control: PrefetchControl, config: AgentConfig, dest: string, warn: (text: string) => void): Promise<void> {
  try {
    const segmentSize = await segmentSizeOf(dest);
    if (segmentSize !== undefined) await control.ensureRunning(config.file, segmentSize);
  } catch (err) {
    warn(`cannot start fetching WAL ahead (${asBarmanError(err).message}); segments are fetched as PostgreSQL asks for them`);
  }
}

/** `barman-agent prefetch-wal`: the background prefetcher get-wal starts (agent/wal/prefetch.ts). */
export async function prefetchWal(config: AgentConfig, segmentSize: number): Promise<void> {
  if (!isValidSegmentSize(segmentSize) || config.prefetch === 0) return;
  await runPrefetcher(new WalPrefetch(config.spoolDir), () => AgentConnection.open(config, 'get'), segmentSize, config.prefetch);
}
