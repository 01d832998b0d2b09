// Asynchronous archiving: the daemon watches pg_wal/archive_status/ for .ready files (status-watch.ts;
// not pg_wal/ itself, where PostgreSQL recycles segments by renaming them) and pushes those
// segments ahead of PostgreSQL over its one connection. Each durable ack goes into the spool
// (agent/wal/spool.ts) with the identity of the file it read, so PostgreSQL's own
// `barman-agent push` finds it and returns at once, without starting Node (agent/launcher.sh).
//
// The backlog is a pipeline, oldest first (the order PostgreSQL asks in): one file is sent at a
// time, and the next starts as soon as its last byte is on the socket, while the receiver still
// flushes the one before; up to IN_FLIGHT files wait for their ack. A segment is read once, when
// its turn to send comes (readForPut). So the receiver's fsyncs
// overlap the transfers, and the file PostgreSQL waits for is never slowed by the ones behind it.
//
// A segment the WAL stream is completing right now (streaming = on, the stream's position inside it
// or just past it) is not sent a second time: the receiver's ack of the streamed segment names its
// checksum, and the local file is only hashed and compared. Segments the stream has yet to reach
// (a backlog it catches up on after an outage) are pushed at once; the stream sends them again
// when it gets there, and the receiver finds them archived. A .done file (PostgreSQL archived the
// segment) retires its ack.

import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { sha256Handle } from '../../shared/checksum';
import { asBarmanError, ErrorCode } from '../../shared/errors';
import { fileSource, PACK_MAX, packFile, wireCompressor } from '../../shared/protocol/chunks';
import type { AgentConnection, PutOptions } from '../../shared/protocol/client';
import { LONG_HEADER_SIZE, readLongHeader } from '../../shared/wal/header';
import type { Lsn } from '../../shared/wal/lsn';
import { isSegmentName, parseWalFileName, segmentStartLsn, segmentTimeline } from '../../shared/wal/names';
import { type Ack, type AckSpool, DAEMON_BEAT_MS, identityOf, sameIdentity, sysidHex } from './spool';
import { StatusWatch } from './status-watch';

/** files sent and not yet acknowledged */
const IN_FLIGHT = 8;
/** files being sent at once (their chunks share the connection) */
const SENDING = 1;
/** re-scan for .ready files now and then: a missed event must not stall archiving */
const RESCAN_MS = 10_000;
/** how long a segment the stream is about to complete waits for the stream's ack before it is sent anyway */
const STREAM_WAIT_MS = 3_000;

/** Whom the acks are for: written into each, compared by the launcher with its configuration. */
export interface AckScope {
  server: string;
  /** the receiver's URL.href */
  receiver: string;
}

/** The WAL stream, as the archiver sees it: its timeline and where it is now. */
interface StreamView {
  timeline: number;
  segmentSize: number;
  /** the end of what it has forwarded to the receiver */
  position: () => Lsn;
}

export class AsyncArchiver {
  private conn: AgentConnection | undefined;
  private readonly pending = new Set<string>();
  private readonly running = new Set<string>();
  private watcher: StatusWatch | undefined;
  private rescanTimer: NodeJS.Timeout | undefined;
  private beatTimer: NodeJS.Timeout | undefined;
  private sendSlots = SENDING;
  private readonly sendWaiters: Array<() => void> = [];
  private stream: StreamView | undefined;
  /** checksums of segments the stream completed (receiver-acknowledged), until their .ready is handled */
  private readonly streamed = new Map<string, string>();
  private readonly streamWaiters = new Map<string, () => void>();
  pushed = 0;
  /** segments answered by hashing the local copy of a streamed segment */
  matchedStream = 0;

  constructor(private readonly pgdata: string, private readonly spool: AckSpool, private readonly scope: AckScope, private readonly log: Logger) {}

  private get statusDir(): string {
    return join(this.pgdata, 'pg_wal', 'archive_status');
  }

  async start(): Promise<void> {
    await this.spool.ensure();
    await this.spool.clearFailures();
    this.watcher = new StatusWatch(this.statusDir, (name) => this.onStatusFile(join(this.statusDir, name)), this.log);
    this.watcher.start();
    // what is there already (the watch tells only what changes from now on)
    await this.rescan();
    this.rescanTimer = setInterval(() => this.rescan().catch((err: unknown) => this.log.warn({ err: String(err) }, 'rescanning archive_status failed')), RESCAN_MS);
    this.rescanTimer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.rescanTimer);
    this.attach(undefined);
    this.watcher?.close();
    this.watcher = undefined;
  }

  /** The daemon's connection came up (or went away: undefined). */
  attach(conn: AgentConnection | undefined): void {
    this.conn = conn;
    clearInterval(this.beatTimer);
    this.beatTimer = undefined;
    this.stream = undefined;
    if (conn) {
      const beat = () => void this.spool.beat().catch((err: unknown) => this.log.warn({ err: String(err) }, 'cannot refresh the daemon file in the spool'));
      beat();
      this.beatTimer = setInterval(beat, DAEMON_BEAT_MS);
      this.beatTimer.unref();
      this.pump();
    } else {
      // PostgreSQL's push must not wait for a daemon that cannot push
      void this.spool.unbeat().catch(() => undefined);
      for (const wake of this.streamWaiters.values()) wake();
    }
  }

  /** The WAL stream started on `timeline`; `position` says how far it has come. */
  streamStarted(timeline: number, segmentSize: number, position: () => Lsn): void {
    this.stream = { timeline, segmentSize, position };
  }

  /** The stream ended: nothing more comes through it until it starts again. */
  streamStopped(): void {
    this.stream = undefined;
    for (const wake of this.streamWaiters.values()) wake();
  }

  /** The receiver archived a streamed segment with this checksum. */
  streamedSegment(name: string, sha256: string): void {
    this.streamed.set(name, sha256);
    this.streamWaiters.get(name)?.();
    // the .ready may have come first: then its push is waiting for this; else the .ready will
  }

  private onStatusFile(path: string): void {
    const m = /([^/]+)\.(ready|done)$/.exec(path);
    if (!m || !parseWalFileName(m[1]!)) return;
    const name = m[1]!;
    if (m[2] === 'done') {
      // PostgreSQL has archived it: its ack has served
      this.pending.delete(name);
      this.streamed.delete(name);
      if (!this.running.has(name)) void this.spool.remove(name).catch(() => undefined);
      return;
    }
    this.pending.add(name);
    this.pump();
  }

  private async rescan(): Promise<void> {
    // a watch that failed (the folder was removed and made again) is set up again
    if (this.watcher && !this.watcher.watching) this.watcher.start();
    const files = await fs.readdir(this.statusDir).catch(() => [] as string[]);
    for (const f of files) if (f.endsWith('.ready')) this.onStatusFile(join(this.statusDir, f));
    // acks PostgreSQL no longer needs: archived (.done), or gone altogether (recycled, removed)
    const ready = new Set(files.filter((f) => f.endsWith('.ready')).map((f) => f.slice(0, -6)));
    for (const name of await this.spool.list()) if (!ready.has(name) && !this.running.has(name)) await this.spool.remove(name);
    for (const name of this.streamed.keys()) if (!ready.has(name) && !this.running.has(name)) this.streamed.delete(name);
  }

  private pump(): void {
    const conn = this.conn;
    if (!conn) return;
    // history files first, then oldest segments: the order PostgreSQL itself archives in (names
    // compared by code unit, as their hex digits sort: localeCompare loads ICU's collation data,
    // 2.8 MiB more resident memory in a Node that has loaded ws)
    const order = [...this.pending].filter((n) => !this.running.has(n)).sort((a, b) => Number(b.endsWith('.history')) - Number(a.endsWith('.history')) || (a < b ? -1 : a > b ? 1 : 0));
    for (const name of order) {
      if (this.running.size >= IN_FLIGHT) return;
      this.pending.delete(name);
      this.running.add(name);
      void this.archiveOne(conn, name).finally(() => {
        this.running.delete(name);
        this.pump();
      });
    }
  }

  private async archiveOne(conn: AgentConnection, name: string): Promise<void> {
    const path = join(this.pgdata, 'pg_wal', name);
    let fh: fs.FileHandle;
    try {
      fh = await fs.open(path, 'r');
    } catch {
      return; // archived by PostgreSQL and recycled meanwhile, or removed: nothing to do
    }
    try {
      const before = identityOf(await fh.stat({ bigint: true }));
      const known = await this.spool.lookup(name);
      if (known?.identity && sameIdentity(known.identity, before) && this.inScope(known)) return;
      const sysid = isSegmentName(name) ? await readSysid(fh) : undefined;
      const streamedSha = await this.streamedChecksum(name);
      if (streamedSha !== undefined) {
        const local = await sha256Handle(fh);
        const after = identityOf(await fh.stat({ bigint: true }));
        if (local === streamedSha && sameIdentity(before, after)) {
          await this.spool.record({ ...this.scope, name, size: Number(before.size), identity: before, sysid, sha256: local });
          this.matchedStream++;
          return;
        }
        this.log.warn({ wal: name }, 'the local segment differs from the one streamed to the receiver; pushing it (the receiver decides)');
      }
      const ack = await conn.putOpened({ kind: 'wal', name }, fh, path, { ...(await this.readForPut(conn, name, fh, Number(before.size))), onSent: () => this.releaseSendSlot() });
      const after = identityOf(await fh.stat({ bigint: true }));
      if (!sameIdentity(before, after)) {
        this.log.warn({ wal: name }, 'the file changed while it was pushed; no ack recorded, PostgreSQL\'s push sends it again');
        return;
      }
      await this.spool.record({ ...this.scope, name, size: Number(before.size), identity: before, sysid, sha256: ack.sha256 });
      this.pushed++;
      this.log.debug({ wal: name, status: ack.status }, 'WAL pushed ahead of PostgreSQL');
    } catch (err) {
      const e = asBarmanError(err);
      this.log.warn({ wal: name, code: e.code }, `async push failed: ${e.message}`);
      // the connection went: pushed again once it is back; any other failure: PostgreSQL's own
      // push does not wait for this one, it pushes itself (and reports the error)
      if (e.code === ErrorCode.CONNECTION_LOST) this.pending.add(name);
      else await this.spool.markFailed(name, `${e.code}: ${e.message}`).catch(() => undefined);
    } finally {
      await fh.close();
    }
  }

  /**
   * Reads `name` for its put and takes a send slot (putOpened's onSent gives it back). A segment the
   * receiver stores as zstd (its welcome) is read once its turn to send has come, hashed and
   * compressed side by side (packFile), and its frames go as they are: one read, and at most one
   * segment's frames (SENDING) held at a time (putOpened lets them go once sent). Anything else is hashed before its turn (one file's
   * hash overlaps the previous one's transfer) and read again as it is sent.
   */
  private async readForPut(conn: AgentConnection, name: string, fh: fs.FileHandle, size: number): Promise<PutOptions> {
    const compress = conn.walCompression === 'zstd' && isSegmentName(name) && size <= PACK_MAX ? wireCompressor('zstd') : undefined;
    if (!compress) {
      const walSha256 = await sha256Handle(fh);
      await this.acquireSendSlot();
      return { walSha256 };
    }
    await this.acquireSendSlot();
    try {
      return { packed: await packFile(fileSource(fh, 0), compress, 'zstd') };
    } catch (err) {
      this.releaseSendSlot();
      throw err;
    }
  }

  private inScope(ack: Ack): boolean {
    return ack.server === this.scope.server && ack.receiver === this.scope.receiver;
  }

  /**
   * The checksum of `name` as the stream delivered it: at once when known, after a short wait
   * when the stream is completing it (its position inside the segment or just past it, on its
   * timeline), else undefined (the segment is pushed).
   */
  private async streamedChecksum(name: string): Promise<string | undefined> {
    const known = this.streamed.get(name);
    if (known !== undefined || !isSegmentName(name)) return known;
    const s = this.stream;
    if (!s || segmentTimeline(name) !== s.timeline) return undefined;
    const start = segmentStartLsn(name, s.segmentSize);
    const at = s.position();
    if (at < start || at >= start + 2n * BigInt(s.segmentSize)) return undefined;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, STREAM_WAIT_MS);
      this.streamWaiters.set(name, () => {
        clearTimeout(timer);
        resolve();
      });
    });
    this.streamWaiters.delete(name);
    return this.streamed.get(name);
  }

  private acquireSendSlot(): Promise<void> {
    if (this.sendSlots > 0) {
      this.sendSlots--;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.sendWaiters.push(resolve));
  }

  private releaseSendSlot(): void {
    const next = this.sendWaiters.shift();
    if (next) next();
    else this.sendSlots++;
  }
}

/** The system identifier in a segment's page header, as the ack spells it; undefined when the header is not a WAL one. */
async function readSysid(fh: fs.FileHandle): Promise<string | undefined> {
  const buf = Buffer.alloc(LONG_HEADER_SIZE);
  const { bytesRead } = await fh.read(buf, 0, LONG_HEADER_SIZE, 0);
  const header = readLongHeader(buf.subarray(0, bytesRead));
  return typeof header === 'string' ? undefined : sysidHex(header.systemIdentifier);
}
