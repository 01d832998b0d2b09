// WAL streaming: a physical replication connection to PostgreSQL (IDENTIFY_SYSTEM, a replication
// slot, START_REPLICATION ... PHYSICAL) whose WAL is forwarded to the receiver as it is produced.
// The receiver fsyncs and reports its flush position; only that position goes back to
// PostgreSQL as this standby's flush LSN, so the slot (and, with application_name in
// synchronous_standby_names, every commit) waits for WAL to be durable on the backup host.
// Every few seconds the streamer asks PostgreSQL for a keepalive and relays its answer, so the
// receiver can tell a quiet but healthy primary from a dead one (a stream it stops hearing from is stale).

import type { Client } from 'pg';
import type { Logger } from 'pino';
import type { AgentConfig } from '../../shared/config/agent';
import { BarmanError, ErrorCode } from '../../shared/errors';
import type { AgentConnection } from '../../shared/protocol/client';
import { errorFromFrame } from '../../shared/protocol/connection';
import { parseHistory } from '../../shared/wal/history';
import { formatLsn, type Lsn, parseLsn } from '../../shared/wal/lsn';
import { connectPostgres, slotRestartLsn, supportedServerVersion, walSegmentSize } from '../postgres';

/** PostgreSQL's epoch for replication timestamps: 2000-01-01, in microseconds since the Unix epoch */
const PG_EPOCH_US = 946_684_800_000_000n;
/** standby status updates at least this often, each asking PostgreSQL for a keepalive in reply */
const STATUS_INTERVAL_MS = 10_000;

/** How often to ask PostgreSQL for a sign of life: three times within the receiver's patience (the agent's timeout). */
export function keepaliveIntervalMs(timeoutSeconds: number): number {
  return Math.max(500, Math.min(STATUS_INTERVAL_MS, (timeoutSeconds * 1000) / 3));
}

export interface StreamerState {
  timeline: number;
  forwarded: Lsn;
  flushed: Lsn;
}

/** Streams until PostgreSQL ends the timeline, either connection fails, or `signal` aborts. */
export async function streamWal(
  config: AgentConfig, conn: AgentConnection, log: Logger, signal: AbortSignal,
  onArchived?: (segment: string, sha256: string) => void,
  /** the stream runs on `timeline`; `position` tells how far it has forwarded WAL to the receiver */
  onStarted?: (timeline: number, segmentSize: number, position: () => Lsn) => void,
): Promise<void> {
  const repl = await connectPostgres(config.conninfo, { replication: true, application_name: config.applicationName } as never);
  const state: StreamerState = { timeline: 0, forwarded: 0n, flushed: 0n };
  let channel: { id: number; close: () => void } | undefined;
  const onAbort = () => void repl.end().catch(() => undefined);
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    const ident = (await repl.query<{ systemid: string; timeline: number; xlogpos: string }>('IDENTIFY_SYSTEM')).rows[0]!;
    const version = await supportedServerVersion(repl);
    const segmentSize = await walSegmentSize(repl);
    state.timeline = Number(ident.timeline);
    if (config.createSlot === 'auto') {
      await repl.query(`CREATE_REPLICATION_SLOT "${config.slotName}" PHYSICAL RESERVE_WAL`).catch((err: { code?: string }) => {
        if (err.code !== '42710') throw err; // exists already
      });
    }
    let switchLsn = '';
    let parentTimeline = 0;
    if (state.timeline > 1) {
      const hist = (await repl.query<{ content: string | Buffer }>(`TIMELINE_HISTORY ${state.timeline}`)).rows[0]!;
      const last = parseHistory(String(hist.content)).pop();
      if (last) {
        switchLsn = formatLsn(last.switchLsn);
        parentTimeline = last.timeline;
      }
    }

    let positioned: (lsn: string) => void = () => undefined;
    let failed: (err: BarmanError) => void = () => undefined;
    const position = new Promise<string>((resolve, reject) => {
      positioned = resolve;
      failed = reject;
    });
    // the channel may end (the connection lost) before or after the position is awaited: never unhandled
    position.catch(() => undefined);
    let streamError: BarmanError | undefined;
    let sendStatus: () => void = () => undefined;
    channel = await conn.channel(
      (id) => ({ type: 'stream-open', id, timeline: state.timeline, systemIdentifier: String(ident.systemid), segmentSize, serverLsn: String(ident.xlogpos), switchLsn, parentTimeline, timeoutSeconds: config.timeoutSeconds }),
      (frame) => {
        if (frame.type === 'stream-position') positioned(frame.lsn);
        else if (frame.type === 'stream-flushed') {
          const lsn = parseLsn(frame.flushLsn);
          if (lsn > state.flushed) {
            state.flushed = lsn;
            sendStatus();
          }
        } else if (frame.type === 'stream-segment') {
          // a streamed segment the receiver archived: PostgreSQL's push need not send it again
          onArchived?.(frame.name, frame.sha256);
        } else if (frame.type === 'error') {
          streamError = errorFromFrame(frame);
          failed(streamError);
          void repl.end().catch(() => undefined);
        }
      },
    );
    let startText = await position;
    if (!startText) {
      const from = parseLsn((await slotRestartLsn(version, repl, config.conninfo, config.slotName)) ?? String(ident.xlogpos));
      startText = formatLsn(from - (from % BigInt(segmentSize)));
    }
    state.forwarded = parseLsn(startText);
    state.flushed = state.forwarded;
    log.info({ timeline: state.timeline, start: startText, slot: config.slotName }, 'streaming WAL');
    onStarted?.(state.timeline, segmentSize, () => state.forwarded);

    const { both } = await import('pg-copy-streams');
    // one CopyData message per chunk: aligned alone is not enough, a byte-mode Readable hands a
    // slow reader several buffered messages joined into one Buffer (headers then read as WAL)
    const stream = repl.query(both(`START_REPLICATION SLOT "${config.slotName}" PHYSICAL ${startText} TIMELINE ${state.timeline}`, { alignOnCopyDataFrame: true, readableObjectMode: true }));
    /** StandbyStatusUpdate; `replyRequested` asks PostgreSQL for a PrimaryKeepalive at once */
    const sendStatusUpdate = (replyRequested: boolean) => {
      const msg = Buffer.alloc(34);
      msg.write('r', 0);
      msg.writeBigUInt64BE(state.forwarded, 1);
      msg.writeBigUInt64BE(state.flushed, 9);
      msg.writeBigUInt64BE(state.flushed, 17);
      msg.writeBigUInt64BE(BigInt(Date.now()) * 1000n - PG_EPOCH_US, 25);
      msg.writeUInt8(replyRequested ? 1 : 0, 33);
      if (stream.writable) stream.write(msg);
    };
    sendStatus = () => sendStatusUpdate(false);
    const timer = setInterval(() => sendStatusUpdate(true), keepaliveIntervalMs(config.timeoutSeconds));
    try {
      for await (const message of stream as AsyncIterable<Buffer>) {
        if (message[0] === 0x77 /* w: XLogData */) {
          const start = message.readBigUInt64BE(1);
          const walEnd = message.readBigUInt64BE(9);
          const data = message.subarray(25);
          if (data.length === 0) continue;
          await conn.send({ type: 'wal-data', id: channel.id, timeline: state.timeline, startLsn: formatLsn(start), walEnd: formatLsn(walEnd), data });
          state.forwarded = start + BigInt(data.length);
        } else if (message[0] === 0x6b /* k: PrimaryKeepalive */) {
          if (message[17] === 1) sendStatus();
          // PostgreSQL is alive, its WAL sent up to walEnd: the receiver hears it
          await conn.send({ type: 'stream-keepalive', id: channel.id, timeline: state.timeline, serverLsn: formatLsn(message.readBigUInt64BE(1)) });
        }
      }
    } finally {
      clearInterval(timer);
    }
    if (streamError) throw streamError;
    log.info({ timeline: state.timeline, at: formatLsn(state.forwarded) }, 'PostgreSQL ended the WAL stream (end of timeline)');
  } catch (err) {
    const e = err as Error & { code?: string };
    if (signal.aborted) return;
    // the receiver's connection ended: that is the reason, whatever PostgreSQL's side then said
    const closed = await Promise.race([conn.closed, Promise.resolve(undefined)]);
    if (closed) throw closed;
    if (e instanceof BarmanError) throw e;
    throw new BarmanError(ErrorCode.POSTGRES, `WAL streaming from PostgreSQL failed: ${e.message}`, `Check that conninfo allows replication connections (pg_hba.conf "replication" line, max_wal_senders) and that slot ${config.slotName} exists (create_slot = auto creates it).`, { cause: err });
  } finally {
    signal.removeEventListener('abort', onAbort);
    channel?.close();
    await endQuietly(repl);
  }
}

async function endQuietly(client: Client): Promise<void> {
  await client.end().catch(() => undefined);
}
