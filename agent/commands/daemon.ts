// `barman-agent daemon`: keeps one authenticated connection to the receiver open (reconnecting
// with exponential backoff and jitter) and answers what the receiver asks of it: backups.

import type { AgentConfig } from '../../shared/config/agent';
import { asBarmanError, BarmanError, ErrorCode } from '../../shared/errors';
import { errorFrame } from '../../shared/protocol/connection';
import { createLogger } from '../../shared/log';
import { takeBackup } from '../backup/backup';
import { AgentConnection } from '../../shared/protocol/client';
import { connectPostgres } from '../postgres';
import { AsyncArchiver } from '../wal/archiver';
import { streamWal } from '../wal/streamer';
import type { Logger } from 'pino';
import { AckSpool } from '../wal/spool';

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 30_000;

export async function runDaemon(config: AgentConfig, signal: AbortSignal): Promise<void> {
  const log = createLogger(config.logLevel, 'barman-agent').child({ server: config.server });
  const pgdata = config.pgdata ?? (await dataDirectory(config));
  const spool = new AckSpool(config.spoolDir);
  const archiver = new AsyncArchiver(pgdata, spool, log);
  await archiver.start();
  log.info({ pgdata, spool: config.spoolDir }, 'watching archive_status for WAL ready to archive');
  let attempt = 0;
  while (!signal.aborted) {
    let conn: AgentConnection;
    try {
      conn = await AgentConnection.open(config, 'daemon');
    } catch (err) {
      const e = asBarmanError(err);
      const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempt) * (0.5 + Math.random() / 2);
      attempt++;
      log.warn({ code: e.code, retryInMs: Math.round(delay) }, `${e.message}; retrying`);
      await sleep(delay, signal);
      continue;
    }
    attempt = 0;
    log.info({ session: conn.sessionId, receiver: config.receiver.href }, 'connected to the receiver');
    let backupRunning = false;
    conn.onRequest((frame) => {
      if (frame.type !== 'backup-request') return;
      if (backupRunning) return;
      backupRunning = true;
      log.info('backup requested by the receiver');
      takeBackup(conn, config, frame.id, (p) => {
        if (p.phase === 'started') log.info({ backup: p.backupId }, 'backup started');
      })
        .then((r) => log.info({ backup: r.backupId, status: r.status, files: r.files, bytes: r.bytes }, 'backup sent'))
        .catch((err) => {
          const e = asBarmanError(err);
          log.error({ code: e.code }, `backup failed: ${e.message}`);
          void conn.send(errorFrame(e, frame.id)).catch(() => undefined);
        })
        .finally(() => {
          backupRunning = false;
        });
    });
    archiver.attach(conn);
    const onAbort = () => conn.close();
    signal.addEventListener('abort', onAbort, { once: true });
    const streamStop = new AbortController();
    const streaming = config.streaming ? keepStreaming(config, conn, log, streamStop.signal, spool) : Promise.resolve();
    const reason = await conn.closed;
    streamStop.abort();
    await streaming;
    archiver.attach(undefined);
    signal.removeEventListener('abort', onAbort);
    if (conn.replaced) {
      // reconnecting would push the other daemon out in turn, and so on forever: one writer, so this one stops
      await archiver.stop();
      const e = new BarmanError(ErrorCode.AGENT_NOT_CONNECTED, `another agent daemon for server ${config.server} connected to the receiver and took over; this daemon stops`, 'Run one barman-agent daemon per PostgreSQL server: stop the other one, then start this one again.');
      log.error({ code: e.code, pushed: archiver.pushed }, e.message);
      throw e;
    }
    if (!signal.aborted) log.warn({ code: reason.code }, `connection lost: ${reason.message}; reconnecting`);
  }
  await archiver.stop();
  log.info({ pushed: archiver.pushed }, 'daemon stopped');
}

/** Streams WAL for as long as this connection lives, restarting (with backoff) after failures and timeline ends. */
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
    if (Date.now() - started > 60_000) delay = BACKOFF_MIN_MS;
    await sleep(delay, signal);
    delay = Math.min(BACKOFF_MAX_MS, delay * 2);
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

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve(); // a SIGTERM already given must not wait out a backoff
    const timer = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}
