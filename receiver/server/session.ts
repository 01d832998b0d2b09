// One agent connection on the receiver. A session starts unauthenticated: hello → challenge →
// auth → welcome. Only then does it serve requests, and only for the one server it proved it
// belongs to; no request names a server, so a session cannot reach another server's catalog.

import { randomUUID } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { BarmanError, ErrorCode, asBarmanError } from '../../shared/errors';
import { computeProof, newNonce, proofMatches } from '../../shared/protocol/auth';
import { CloseCode, errorFrame, errorFromFrame, type FrameConnection } from '../../shared/protocol/connection';
import { type Frame, type HelloFrame, PROTOCOL_VERSION, type Role } from '../../shared/protocol/frames';
import { formatLsn } from '../../shared/wal/lsn';
import type { ServerConfig } from '../../shared/config/receiver';
import { openStoredWal, WalUpload } from '../catalog/wal-archive';
import type { Upload } from '../catalog/upload';
import { readableBackupPath } from '../catalog/backups';
import { planRecovery } from '../recovery/plan';
import { recoveryWal } from '../recovery/wal-source';
import type { RecoveryOptions } from '../../shared/recovery/plan';
import type { Peer, ServerContext } from './context';
import { sendChunks, streamSource } from '../../shared/protocol/chunks';

const HANDSHAKE_TIMEOUT_MS = 10_000;
/** a daemon that does not answer for two of these is taken for dead (its backup FAILED, its stream closed) */
const DAEMON_HEARTBEAT_MS = 10_000;
/** bytes of received chunks a session may have waiting for the disk before it stops reading */
const WRITE_HIGH_WATER = 8 * 1024 * 1024;
/** concurrent uploads one session may have open */
const MAX_OPEN_UPLOADS = 16;

type State =
  | { phase: 'hello' }
  | { phase: 'auth'; hello: HelloFrame; server: ServerConfig; serverNonce: Buffer }
  | { phase: 'ready'; server: ServerContext };

export class Session implements Peer {
  readonly id = randomUUID();
  private role: Role = 'push';
  private state: State = { phase: 'hello' };
  private readonly uploads = new Map<number, Upload>();
  /** each open upload's chain of chunk writes */
  private readonly writes = new Map<number, Promise<void>>();
  private bytesWriting = 0;
  /** uploads whose end arrived and that are being made durable */
  private finishing = 0;
  private writeWaiters: Array<() => void> = [];
  /** uploads answered with an error: their remaining chunks are dropped by id, never written */
  private readonly failedUploads = new Set<number>();
  private log: Logger;
  private readonly handshakeTimer: NodeJS.Timeout;

  constructor(private readonly conn: FrameConnection, private readonly lookup: (name: string) => ServerContext | undefined, baseLog: Logger, remote: string) {
    this.log = baseLog.child({ session: this.id, remote });
    this.handshakeTimer = setTimeout(() => {
      void this.conn.fail(new BarmanError(ErrorCode.AUTH_FAILED, 'no authentication within 10 s', 'Check that the agent runs a compatible barman-ts version.'), CloseCode.AUTH);
    }, HANDSHAKE_TIMEOUT_MS);
    conn.onFrame((frame) => this.onFrame(frame));
    conn.onClose((err) => {
      clearTimeout(this.handshakeTimer);
      if (err && err.code !== ErrorCode.CONNECTION_LOST) this.log.warn({ code: err.code }, err.message);
      else this.log.debug('session closed');
      for (const upload of this.uploads.values()) upload.abort().catch(() => undefined);
      this.uploads.clear();
    });
  }

  send(frame: Frame): Promise<void> {
    return this.conn.send(frame);
  }

  /** Nothing half-received or half-stored: no upload open or finishing. */
  get idle(): boolean {
    return this.uploads.size === 0 && this.finishing === 0;
  }

  /** Another daemon of the same server took over: this one is closed, with a reason it can log. */
  replace(reason: string): void {
    void this.conn.fail(new BarmanError(ErrorCode.AGENT_NOT_CONNECTED, reason, 'Run one barman-agent daemon per PostgreSQL server.'), CloseCode.REPLACED);
  }

  private async onFrame(frame: Frame): Promise<void> {
    switch (this.state.phase) {
      case 'hello':
        return this.onHello(frame);
      case 'auth':
        return this.onAuth(frame, this.state);
      case 'ready':
        return this.onRequest(frame, this.state.server);
    }
  }

  private async onHello(frame: Frame): Promise<void> {
    if (frame.type !== 'hello') throw protocolError(`expected hello, got ${frame.type}`);
    if (frame.protocolVersion !== PROTOCOL_VERSION) {
      throw new BarmanError(ErrorCode.PROTOCOL, `agent speaks protocol version ${frame.protocolVersion}, this receiver speaks ${PROTOCOL_VERSION}`, 'Install the same barman-ts version on the agent and the receiver.');
    }
    const server = this.lookup(frame.server);
    if (!server) {
      this.log.warn({ server: frame.server, code: ErrorCode.UNKNOWN_SERVER }, 'refused agent for unknown server');
      await this.conn.fail(new BarmanError(ErrorCode.UNKNOWN_SERVER, `the receiver has no server named "${frame.server}"`, 'Check server = ... in the agent configuration against the sections of the receiver configuration (barman-receiver list-servers).'), CloseCode.AUTH);
      return;
    }
    const serverNonce = newNonce();
    this.state = { phase: 'auth', hello: frame, server: server.config, serverNonce };
    await this.conn.send({ type: 'challenge', protocolVersion: PROTOCOL_VERSION, serverNonce });
  }

  private async onAuth(frame: Frame, state: Extract<State, { phase: 'auth' }>): Promise<void> {
    if (frame.type !== 'auth') throw protocolError(`expected auth, got ${frame.type}`);
    const { hello, server, serverNonce } = state;
    const expected = computeProof(server.token, 'agent', server.name, hello.clientNonce, serverNonce);
    if (!proofMatches(expected, frame.proof)) {
      this.log.warn({ server: server.name, code: ErrorCode.AUTH_FAILED }, 'refused agent: wrong token');
      await this.conn.fail(new BarmanError(ErrorCode.AUTH_FAILED, `authentication failed for server "${server.name}": the agent's token does not match`, `Make the agent's token_file hold the same secret as token_file in the receiver's [${server.name}] section.`), CloseCode.AUTH);
      return;
    }
    clearTimeout(this.handshakeTimer);
    const context = this.lookup(server.name)!;
    this.log = this.log.child({ server: server.name, role: hello.role });
    this.role = hello.role;
    this.state = { phase: 'ready', server: context };
    this.conn.onClose(() => context.detach(this));
    if (hello.role === 'daemon') {
      context.attachDaemon(this);
      this.conn.heartbeat(DAEMON_HEARTBEAT_MS);
    }
    await this.conn.send({ type: 'welcome', sessionId: this.id, proof: computeProof(server.token, 'receiver', server.name, hello.clientNonce, serverNonce) });
    this.log.debug('agent authenticated');
  }

  private async onRequest(frame: Frame, server: ServerContext): Promise<void> {
    switch (frame.type) {
      case 'put':
        return this.answer(frame.id, async () => {
          if (this.uploads.has(frame.id)) throw protocolError(`put ${frame.id} is already open`);
          if (this.uploads.size + this.finishing >= MAX_OPEN_UPLOADS) throw protocolError(`more than ${MAX_OPEN_UPLOADS} uploads open at once`);
          const t = frame.target;
          if (t.kind === 'wal') {
            this.allow(['push', 'daemon', 'backup'], 'archive WAL');
            this.uploads.set(frame.id, await server.walArchive.begin(t.name, frame.size));
          } else {
            this.allow(['daemon', 'backup'], 'send backup files');
            this.uploads.set(frame.id, await server.backupFile(this, t.backupId, t.path, frame.size, t.mtime));
          }
        }, undefined, true);
      case 'chunk': {
        const upload = this.uploads.get(frame.id);
        if (!upload && this.failedUploads.has(frame.id)) return;
        if (!upload) throw protocolError(`chunk for ${frame.id}, which is not open`);
        return this.queueWrite(frame.id, upload, frame.data);
      }
      case 'end': {
        const upload = this.uploads.get(frame.id);
        if (!upload && this.failedUploads.delete(frame.id)) return;
        if (!upload) throw protocolError(`end for ${frame.id}, which is not open`);
        this.uploads.delete(frame.id);
        const writes = this.writes.get(frame.id);
        this.writes.delete(frame.id);
        // finishing (flush, fsync, checksum, rename) runs beside the frames that follow: other
        // files keep arriving meanwhile; the answer goes out by id whenever this one is durable
        this.finishing++;
        void this.answer(frame.id, async () => {
          await writes;
          const status = await upload.finish(frame.sha256);
          await this.conn.send({ type: 'ack', id: frame.id, status, sha256: frame.sha256 });
          if (upload instanceof WalUpload) {
            this.log.info({ wal: upload.label, status }, status === 'stored' ? 'WAL archived' : 'WAL already archived with identical content');
            if (status === 'stored' && upload.file.kind === 'segment') await server.walStored();
          }
        }, upload)
          .catch((err: unknown) => void this.conn.fail(asBarmanError(err)))
          .finally(() => this.finishing--);
        return;
      }
      case 'get':
        return this.answer(frame.id, () => this.sendWal(frame.id, frame.name, server));
      case 'backup-begin':
        return this.answer(frame.id, async () => {
          this.allow(['daemon', 'backup'], 'take backups');
          const info = await server.beginBackup(this, frame.start, frame.requestId);
          this.log.info({ backup: info.backupId, lsn: info.beginLsn }, 'backup started');
          await this.conn.send({ type: 'backup-accepted', id: frame.id, backupId: info.backupId });
        });
      case 'backup-end':
        return this.answer(frame.id, async () => {
          const info = await server.endBackup(this, frame.backupId, frame.stop);
          this.log.info({ backup: info.backupId, status: info.status, files: info.fileCount, bytes: info.size }, 'backup files complete');
          await this.conn.send({ type: 'backup-status', id: frame.id, backupId: info.backupId, status: info.status });
        });
      case 'backup-abort':
        return this.answer(frame.id, async () => {
          this.log.warn({ backup: frame.backupId, reason: frame.reason }, 'backup aborted by the agent');
          await server.abortBackup(this, frame.backupId, frame.reason);
          await this.conn.send({ type: 'backup-status', id: frame.id, backupId: frame.backupId, status: 'FAILED', reason: frame.reason });
        });
      case 'backup-start':
        return this.answer(frame.id, async () => {
          this.allow(['admin'], 'request backups');
          await this.startBackupFor(frame.id, frame.wait, server);
        });
      case 'get-backup-file':
        return this.answer(frame.id, async () => {
          this.allow(['restore', 'admin'], 'read backups');
          await this.sendBackupFile(frame.id, frame.backupId, frame.path, server);
        });
      case 'restore-plan-request':
        return this.answer(frame.id, async () => {
          this.allow(['restore', 'admin'], 'plan a restore');
          await this.sendRestorePlan(frame.id, frame.backup, frame.options as RecoveryOptions, server);
        });
      case 'stream-open':
        return this.answer(frame.id, async () => {
          this.allow(['daemon'], 'stream WAL');
          const streamId = frame.id;
          const resume = await server.openStream(
            this,
            frame,
            (timeline, lsn) => void this.conn.send({ type: 'stream-flushed', id: streamId, timeline, flushLsn: formatLsn(lsn) }).catch(() => undefined),
            (name, sha256) => void this.conn.send({ type: 'stream-segment', id: streamId, name, sha256 }).catch(() => undefined),
          );
          this.log.info({ timeline: frame.timeline, resume: resume === undefined ? 'slot' : formatLsn(resume) }, 'WAL streaming started');
          await this.conn.send({ type: 'stream-position', id: frame.id, timeline: frame.timeline, lsn: resume === undefined ? '' : formatLsn(resume) });
        });
      case 'wal-data':
        return this.answer(frame.id, () => server.appendStream(this, frame));
      case 'status-request':
        return this.answer(frame.id, async () => {
          this.allow(['admin'], 'ask for status');
          await this.conn.send({ type: 'status', id: frame.id, agentConnected: server.daemon !== undefined, agentSince: server.daemonSince?.toISOString() ?? '', backupRunning: server.runningBackup ?? '', streaming: server.stream.state() });
        });
      case 'error':
        // the daemon's answer to a request of ours (a backup request it could not run)
        if (frame.id !== undefined && server.requestFailed(frame.id, errorFromFrame(frame))) return;
        this.log.warn({ code: frame.code }, `agent reported: ${frame.message}`);
        return;
      default:
        throw protocolError(`unexpected ${frame.type} frame`);
    }
  }

  /** admin → daemon backup request; answers with backup-status frames (STARTED, then the end state when waiting). */
  private async startBackupFor(id: number, wait: boolean, server: ServerContext): Promise<void> {
    let backupId: string | undefined;
    let finished = false;
    const unsubscribe = server.onBackupChange((info) => {
      if (finished || info.backupId !== backupId) return;
      if (info.status === 'DONE' || info.status === 'FAILED') {
        finished = true;
        unsubscribe();
        void this.conn.send({ type: 'backup-status', id, backupId: info.backupId, status: info.status, ...(info.error ? { reason: info.error } : {}) }).catch(() => undefined);
      }
    });
    this.conn.onClose(() => unsubscribe());
    try {
      await server.requestBackup((result) => {
        if (result instanceof BarmanError) {
          finished = true;
          unsubscribe();
          void this.conn.send(errorFrame(result, id)).catch(() => undefined);
          return;
        }
        backupId = result.backupId;
        void this.conn.send({ type: 'backup-status', id, backupId: result.backupId, status: result.status }).catch(() => undefined);
        if (!wait) {
          finished = true;
          unsubscribe();
        }
      });
    } catch (err) {
      unsubscribe();
      throw err;
    }
  }

  private allow(roles: Role[], what: string): void {
    if (!roles.includes(this.role)) {
      throw new BarmanError(ErrorCode.PROTOCOL, `a ${this.role} session may not ${what}`, 'Agent and receiver must run compatible versions of barman-ts.');
    }
  }

  /**
   * Writes a chunk without holding up the frames behind it: each upload's writes are chained (its
   * bytes land in order), different uploads' writes run side by side, and the socket is only
   * held back once WRITE_HIGH_WATER bytes wait for the disk. A backup's four files in flight are
   * then written in parallel instead of one chunk at a time.
   */
  private async queueWrite(id: number, upload: Upload, data: Uint8Array): Promise<void> {
    this.bytesWriting += data.length;
    const write = (this.writes.get(id) ?? Promise.resolve()).then(() => upload.write(data));
    this.writes.set(id, write);
    write
      .catch((err: unknown) => {
        // after its end, the end's answer reports the failure; still open, answer now so the
        // sender stops, its later chunks dropped from this moment on (frames keep arriving)
        if (this.uploads.get(id) !== upload) return;
        this.failedUploads.add(id);
        this.uploads.delete(id);
        this.writes.delete(id);
        // nothing may escape unhandled here: it would end the whole receiver
        this.answer(id, () => Promise.reject(err), upload).catch((e: unknown) => void this.conn.fail(asBarmanError(e)));
      })
      .finally(() => {
        this.bytesWriting -= data.length;
        if (this.bytesWriting <= WRITE_HIGH_WATER) for (const wake of this.writeWaiters.splice(0)) wake();
      });
    while (this.bytesWriting > WRITE_HIGH_WATER) await new Promise<void>((resolve) => this.writeWaiters.push(resolve));
  }

  /** Runs one step of a request; a failure answers that request with an error frame. */
  private async answer(id: number, step: () => Promise<void>, upload?: Upload, opensUpload = false): Promise<void> {
    try {
      await step();
    } catch (err) {
      const e = asBarmanError(err);
      if (e.code === ErrorCode.PROTOCOL) throw e;
      const open = upload ?? this.uploads.get(id);
      // the rest of a failed upload's chunks are ignored by id, never written anywhere; a refused
      // put too: its sender streams chunks before the refusal reaches it. Marked before any await:
      // frames keep arriving while this answer is on its way
      if (open || opensUpload) this.failedUploads.add(id);
      if (open) {
        this.uploads.delete(id);
        this.writes.delete(id);
        await open.abort().catch(() => undefined);
      }
      if (e.code !== ErrorCode.WAL_NOT_FOUND) this.log.warn({ code: e.code, err: e.cause ?? undefined }, e.message);
      await this.conn.send(errorFrame(e, id));
    }
  }

  private async sendWal(id: number, name: string, server: ServerContext): Promise<void> {
    const stored = await server.catalog.findWal(name);
    if (!stored && this.role === 'restore' && (await server.stream.partialFor(name))) {
      // a restore's newest segment may exist only as streamed WAL (padded to a whole segment)
      await this.sendStream(id, name, await server.catalog.segmentSize(), Readable.from(recoveryWal(server.catalog, name)));
      return;
    }
    if (!stored) {
      throw new BarmanError(ErrorCode.WAL_NOT_FOUND, `${name.slice(0, 80)} is not in the catalog of ${server.config.name}`, 'The segment was never archived, or retention removed it.');
    }
    const size = stored.compression === 'none' ? (await stat(stored.path)).size : await server.catalog.segmentSize();
    await this.sendStream(id, name, size, openStoredWal(stored));
  }

  /** Answers a request with a file: file frame, chunks (pooled, hashed), end frame with the SHA-256. */
  private async sendStream(id: number, name: string, size: number, source: AsyncIterable<Buffer>): Promise<void> {
    await this.conn.send({ type: 'file', id, name, size });
    const sent = await sendChunks(this.conn, id, streamSource(source));
    await this.conn.send({ type: 'end', id, sha256: sent.sha256 });
  }

  private async sendBackupFile(id: number, backupId: string, path: string, server: ServerContext): Promise<void> {
    const info = await server.backups.resolve(backupId);
    if (info.status !== 'DONE') throw new BarmanError(ErrorCode.BACKUP_FAILED, `backup ${backupId} is ${info.status}, not DONE`, 'Restore from a DONE backup (list-backups).');
    const full = join(server.backups.dataDir(info.backupId), readableBackupPath(path));
    const st = await stat(full).catch(() => undefined);
    if (!st?.isFile()) throw new BarmanError(ErrorCode.BACKUP_NOT_FOUND, `backup ${backupId} has no file ${path.slice(0, 200)}`, `Run barman-receiver verify-backup ${server.config.name} ${backupId}.`);
    await this.sendStream(id, path, st.size, createReadStream(full, { highWaterMark: 1 << 20 }));
  }

  private async sendRestorePlan(id: number, backup: string, options: RecoveryOptions, server: ServerContext): Promise<void> {
    const plan = await planRecovery(server.catalog, server.backups, backup, options);
    const json = Buffer.from(JSON.stringify(plan));
    this.log.info({ backup: plan.backupId, target: plan.targetDescription }, 'restore planned for the agent');
    await this.sendStream(id, 'restore-plan.json', json.length, Readable.from([json]));
  }
}

function protocolError(message: string): BarmanError {
  return new BarmanError(ErrorCode.PROTOCOL, message, 'Agent and receiver must run compatible versions of barman-ts.');
}
