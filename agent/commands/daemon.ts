// `barman-agent daemon`: keeps one authenticated connection to the receiver open (reconnecting
// with exponential backoff and jitter) and answers what the receiver asks of it: backups.
//
// One daemon per server: on each connection it asks the receiver to attach it as the server's
// daemon. While another live daemon holds the server it is refused and exits 1, unless started
// with --takeover; a daemon replaced that way exits 0, so systemd (Restart=on-failure) does not
// start it again into a fight. Its own reconnects (after a network blip) carry the same instance
// id, so the receiver lets it back in even while it still holds the old, half-dead connection.
//
// SIGTERM stops it promptly: a running backup is abandoned (FAILED on the receiver, with the
// reason), streaming stops, the connection closes, exit 0.

import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { Logger } from 'pino';
import { abortable, sleep, whenAborted, within } from '../../shared/abort';
import type { AgentConfig } from '../../shared/config/agent';
import { asBarmanError, BarmanError, ErrorCode } from '../../shared/errors';
import { errorFrame } from '../../shared/protocol/connection';
import { createLogger } from '../../shared/log';
import { takeBackup } from '../backup/backup';
import { AgentConnection } from '../../shared/protocol/client';
import { connectPostgres, serverFacts } from '../postgres';
import { AsyncArchiver } from '../wal/archiver';
import { streamWal } from '../wal/streamer';
import { AckSpool } from '../wal/spool';

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 30_000;
/** PostgreSQL reconnects wait at most this long: streaming is back seconds after a primary restart */
const STREAM_RETRY_MAX_MS = 5_000;
/** a stream that lived this long was healthy: the next failure retries from the shortest wait again */
const STREAM_HEALTHY_MS = 30_000;
/** on SIGTERM: how long a running backup may take to report its abort, and the receiver to close */
const SHUTDOWN_GRACE_MS = 5_000;

export interface DaemonOptions {
  /** replace a live daemon of the same server instead of being refused */
  takeover?: boolean;
}

/**
 * Runs until `signal` aborts (its reason, e.g. "SIGTERM", is told to a backup it abandons) or
 * another daemon takes over; throws when refused because a live daemon holds the server.
 */
export async function runDaemon(config: AgentConfig, signal: AbortSignal, options: DaemonOptions = {}): Promise<void> {
  const log = createLogger(config.logLevel, 'barman-agent').child({ server: config.server });
  const pgdata = config.pgdata ?? (await dataDirectory(config));
  const spool = new AckSpool(config.spoolDir);
  const archiver = new AsyncArchiver(pgdata, spool, log);
  const instance = randomUUID();
  let takeover = options.takeover ?? false;
  await archiver.start();
  log.info({ pgdata, spool: config.spoolDir }, 'watching archive_status for WAL ready to archive');
  try {
    let attempt = 0;
    while (!signal.aborted) {
      let conn: AgentConnection;
      try {
        conn = await connect(config, signal, { instance, takeover });
      } catch (err) {
        if (signal.aborted) break;
        const e = asBarmanError(err);
        if (e.code === ErrorCode.DAEMON_ALREADY_CONNECTED) {
          log.error({ code: e.code }, e.message);
          throw e;
        }
        const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempt) * (0.5 + Math.random() / 2);
        attempt++;
        log.warn({ code: e.code, retryInMs: Math.round(delay) }, `${e.message}; retrying`);
        await sleep(delay, signal);
        continue;
      }
      // taken over once, this daemon holds the server: its reconnects are its own, not takeovers
      takeover = false;
      attempt = 0;
      log.info({ session: conn.sessionId, receiver: config.receiver.href }, 'connected to the receiver');
      const ended = await serveConnection(conn, config, log, archiver, spool, signal);
      if (ended === 'replaced') {
        // reconnecting would push the other daemon out in turn: this one stops, and exits 0 so
        // that its systemd unit leaves it stopped
        log.warn(`another agent daemon for server ${config.server} was started with --takeover and took over; this daemon stops`);
        break;
      }
    }
  } finally {
    await archiver.stop();
  }
  log.info({ pushed: archiver.pushed }, 'daemon stopped');
}

/** Opens a connection and attaches it as the server's daemon; a SIGTERM meanwhile ends the wait. */
async function connect(config: AgentConfig, signal: AbortSignal, claim: { instance: string; takeover: boolean }): Promise<AgentConnection> {
  const opening = AgentConnection.open(config, 'daemon');
  let conn: AgentConnection;
  try {
    conn = await abortable(opening, signal);
  } catch (err) {
    void opening.then((late) => late.close(), () => undefined);
    throw err;
  }
  try {
    await abortable(conn.call(
      (id) => ({ type: 'daemon-attach', id, instance: claim.instance, takeover: claim.takeover, host: hostname().slice(0, 255), pid: process.pid }),
      (f) => (f.type === 'daemon-attached' ? f : undefined),
    ), signal);
    return conn;
  } catch (err) {
    conn.close();
    throw err;
  }
}

/** Serves one attached connection until it ends ('closed'), another daemon takes over ('replaced') or `signal` aborts ('stopped'). */
async function serveConnection(conn: AgentConnection, config: AgentConfig, log: Logger, archiver: AsyncArchiver, spool: AckSpool, signal: AbortSignal): Promise<'closed' | 'replaced' | 'stopped'> {
  let backup: { abort: AbortController; done: Promise<void> } | undefined;
  conn.onRequest((frame) => {
    if (frame.type === 'pg-probe-request') {
      void answerProbe(conn, config, frame.id, frame.switchWal, log);
      return;
    }
    if (frame.type !== 'backup-request' || backup || signal.aborted) return;
    log.info('backup requested by the receiver');
    const abort = new AbortController();
    const done = takeBackup(conn, config, frame.id, (p) => {
      if (p.phase === 'started') log.info({ backup: p.backupId }, 'backup started');
    }, abort.signal)
      .then((r) => log.info({ backup: r.backupId, status: r.status, files: r.files, bytes: r.bytes }, 'backup sent'))
      .catch((err) => {
        const e = asBarmanError(err);
        log.error({ code: e.code }, `backup failed: ${e.message}`);
        void conn.send(errorFrame(e, frame.id)).catch(() => undefined);
      })
      .finally(() => {
        backup = undefined;
      });
    backup = { abort, done };
  });
  archiver.attach(conn);
  const streamStop = new AbortController();
  const streaming = config.streaming ? keepStreaming(config, conn, log, streamStop.signal, spool) : Promise.resolve();
  const stopping = whenAborted(signal);
  const reason = await Promise.race([conn.closed, stopping.promise]);
  stopping.dispose();
  streamStop.abort();
  archiver.attach(undefined);
  if (signal.aborted) {
    const why = typeof signal.reason === 'string' ? signal.reason : 'a stop request';
    if (backup) {
      log.warn(`stopping (${why}): abandoning the running backup`);
      backup.abort.abort(new BarmanError(ErrorCode.BACKUP_FAILED, `the agent daemon received ${why} and stopped during the backup`, 'Take the backup again once the daemon runs: barman-receiver backup <server>.'));
      await within(backup.done, SHUTDOWN_GRACE_MS);
    }
    await within(streaming, SHUTDOWN_GRACE_MS);
    conn.close();
    // a receiver that does not answer the close handshake (paused, gone silent) is not waited for
    if ((await within(conn.closed, SHUTDOWN_GRACE_MS)) === undefined) conn.terminate();
    return 'stopped';
  }
  await streaming;
  if (conn.replaced) return 'replaced';
  log.warn({ code: reason?.code }, `connection lost: ${reason?.message}; reconnecting`);
  return 'closed';
}

/** Streams WAL for as long as this connection lives, restarting (with a short backoff) after failures and timeline ends. */
async function keepStreaming(config: AgentConfig, conn: AgentConnection, log: Logger, signal: AbortSignal, spool: AckSpool): Promise<void> {
  // the receiver's ack of a streamed segment is as good as a pushed one's: record it, so neither
  // the async archiver nor PostgreSQL's push sends those 16 MB again
  const onArchived = (segment: string, sha256: string) => {
    spool.record(segment, sha256).catch((err: unknown) => log.warn({ wal: segment, err: String(err) }, 'cannot record the ack of a streamed segment'));
  };
  let delay = BACKOFF_MIN_MS;
  while (!signal.aborted) {
    const started = Date.now();
    try {
      await streamWal(config, conn, log, signal, onArchived);
    } catch (err) {
      const e = asBarmanError(err);
      if (signal.aborted) break;
      log.warn({ code: e.code, retryInMs: delay }, `WAL streaming stopped: ${e.message}`);
    }
    if (Date.now() - started > STREAM_HEALTHY_MS) delay = BACKOFF_MIN_MS;
    await sleep(delay, signal);
    delay = Math.min(STREAM_RETRY_MAX_MS, delay * 2);
  }
}

/** The receiver's `check` asks what PostgreSQL says now (and, for an idle server, to switch WAL): answered from a connection of our own. */
async function answerProbe(conn: AgentConnection, config: AgentConfig, id: number, switchWal: boolean, log: Logger): Promise<void> {
  try {
    const pg = await connectPostgres(config.conninfo, { application_name: 'barman-agent daemon' });
    let facts;
    try {
      facts = await serverFacts(pg, { slotName: config.streaming ? config.slotName : undefined, switchWal });
    } finally {
      await pg.end().catch(() => undefined);
    }
    if (facts.switchedSegment) log.info({ wal: facts.switchedSegment }, 'WAL switched for the receiver\'s check');
    const slot = facts.slot;
    await conn.send({
      type: 'pg-probe', id, serverVersionNum: facts.serverVersionNum, systemIdentifier: facts.systemIdentifier, inRecovery: facts.inRecovery,
      walLevel: facts.walLevel, archiveMode: facts.archiveMode, archiveCommand: facts.archiveCommand.slice(0, 4096), currentLsn: facts.currentLsn, switchedSegment: facts.switchedSegment,
      slotName: slot?.name ?? '', slotExists: slot?.exists ?? false, slotActive: slot?.active ?? false, slotRestartLsn: slot?.restartLsn ?? '', slotWalStatus: slot?.walStatus ?? '',
    });
  } catch (err) {
    const e = asBarmanError(err);
    log.warn({ code: e.code }, `cannot answer the receiver about PostgreSQL: ${e.message}`);
    await conn.send(errorFrame(e, id)).catch(() => undefined);
  }
}

/** pgdata = in the configuration, else asked of PostgreSQL. */
async function dataDirectory(config: AgentConfig): Promise<string> {
  const pg = await connectPostgres(config.conninfo, { application_name: 'barman-agent daemon' });
  try {
    return (await pg.query<{ d: string }>("select current_setting('data_directory') as d")).rows[0]!.d;
  } finally {
    await pg.end();
  }
}
