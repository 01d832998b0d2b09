// One agent connection on the receiver. A session starts unauthenticated: hello → challenge →
// auth → welcome. Only then does it serve requests, and only for the one server it proved it
// belongs to; no request names a server, so a session cannot reach another server's catalog.

import { randomBytes, randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { BarmanError, damagedBackupHint, damagedWalHint, ErrorCode, asBarmanError } from '../../shared/errors';
import { computeProof, newNonce, proofMatches } from '../../shared/protocol/auth';
import { CloseCode, errorFrame, errorFromFrame, type FrameConnection } from '../../shared/protocol/connection';
import { CHUNK_SIZE, type Frame, type HelloFrame, OLDEST_AGENT_PROTOCOL, PROTOCOL_VERSION, type Role, type StoredCopyFound } from '../../shared/protocol/frames';
import { formatLsn } from '../../shared/wal/lsn';
import type { ServerConfig } from '../../shared/config/receiver';
import { damagedWal, describeDamage, readStoredWal, readStoredWalFrames, verifyStoredWal, WalUpload } from '../catalog/wal-archive';
import type { Upload } from '../catalog/upload';
import { type BackupContents, type BundleReader, readableBackupPath } from '../catalog/backups';
import { crc32cWireHex, type FileChecksumValue, parseManifest } from '../../shared/backup/manifest';
import { planRecovery } from '../recovery/plan';
import { recoveryWal } from '../recovery/wal-source';
import type { RecoveryOptions } from '../../shared/recovery/plan';
import type { Peer, ServerContext } from './context';
import { sendChunks, streamSource } from '../../shared/protocol/chunks';
import { HANDSHAKE_TIMEOUT_MS } from './admission';
import { checkZstdBlockFrame, zstdDecompressFrame } from '../storage/compression';

/** a daemon that does not answer for two of these is taken for dead (its backup FAILED, its stream closed) */
const DAEMON_HEARTBEAT_MS = 10_000;
/** bytes of received chunks a session may have waiting for the disk before it stops reading */
const WRITE_HIGH_WATER = 8 * 1024 * 1024;
/** concurrent uploads one session may have open */
const MAX_OPEN_UPLOADS = 16;
/** backup files one restore session is sent at the same time (a restore asks for a few at a time) */
const MAX_BACKUP_FILE_SENDS = 8;
/** while the service stops, a session still receiving files is waited for only if it sent something this recently */
const DRAIN_QUIET_MS = 2000;

export interface SessionOptions {
  /** an upload without data for this long is aborted; a session silent this long may be closed to make room */
  idleMs: number;
  /** called once the agent has proved its token */
  onAuthenticated?: () => void;
}

/** how long the daemon has to answer a PostgreSQL probe (a forced WAL switch runs a CHECKPOINT first) */
const PG_PROBE_TIMEOUT_MS = 60_000;

/** how often an admin waiting on a backup hears how far its files are */
const PROGRESS_INTERVAL_MS = 1000;

type State =
  | { phase: 'hello' }
  | { phase: 'auth'; hello: HelloFrame; server: Pick<ServerConfig, 'name' | 'token'>; serverNonce: Buffer; known: boolean }
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
  /** when the agent last sent anything (a frame or a ping) */
  private lastHeard = Date.now();
  /** when each open upload last received data or had data written */
  private readonly uploadActivity = new Map<number, number>();
  private idleTimer: NodeJS.Timeout | undefined;
  /** requests being answered */
  private answering = 0;
  /** backup files being sent, side by side (get-backup-file) */
  private readonly backupFileSends = new Set<Promise<void>>();
  /** the backup a restore on this connection reads, with its contents (sendBackupFile) */
  private restoreContents: { backupId: string; server: ServerContext; value: Promise<RestoreContents> } | undefined;
  /** the catalog files the last requests on this connection were answered with, by request id (an agent may say it refused one) */
  private readonly served = new Map<number, Served>();
  /** stored copies read again because the agent refused what it was sent of them, one at a time */
  private rechecks: Promise<void> = Promise.resolve();

  constructor(private readonly conn: FrameConnection, private readonly lookup: (name: string) => ServerContext | undefined, baseLog: Logger, readonly remote: string, private readonly options: SessionOptions = { idleMs: 30_000 }) {
    this.log = baseLog.child({ session: this.id, remote });
    conn.ws.on('ping', () => {
      this.lastHeard = Date.now();
    });
    this.handshakeTimer = setTimeout(() => {
      void this.conn.fail(new BarmanError(ErrorCode.AUTH_FAILED, 'no authentication within 10 s', 'Check that the agent runs a compatible barman-ts version.'), CloseCode.AUTH);
    }, HANDSHAKE_TIMEOUT_MS);
    conn.onFrame((frame) => this.onFrame(frame));
    conn.onClose((err) => {
      clearTimeout(this.handshakeTimer);
      clearInterval(this.idleTimer);
      if (err && err.code !== ErrorCode.CONNECTION_LOST) this.log.warn({ code: err.code }, err.message);
      else this.log.debug('session closed');
      for (const upload of this.uploads.values()) this.giveUp(upload);
      this.uploads.clear();
    });
  }

  send(frame: Frame): Promise<void> {
    return this.conn.send(frame);
  }

  /** Receiving files from a peer that is still sending them: worth waiting for while the service stops. */
  get draining(): boolean {
    return this.finishing > 0 || (this.uploads.size > 0 && Date.now() - this.lastHeard < DRAIN_QUIET_MS);
  }

  /** How long the agent has been silent with nothing in progress; undefined while it has work here or keeps the server's daemon or admin role. */
  quietFor(now: number): number | undefined {
    if (this.uploads.size > 0 || this.finishing > 0 || this.answering > 0 || this.role === 'daemon' || this.role === 'admin') return undefined;
    return now - this.lastHeard;
  }

  /** Closed to make room for another session of its server. */
  evict(err: BarmanError): void {
    void this.conn.fail(err, CloseCode.PROTOCOL);
  }

  /** Another daemon of the same server took over: this one is closed, with a reason it can log. */
  replace(reason: string): void {
    void this.conn.fail(new BarmanError(ErrorCode.AGENT_NOT_CONNECTED, reason, 'Run one barman-agent daemon per PostgreSQL server.'), CloseCode.REPLACED);
  }

  get closed(): boolean {
    return this.conn.closed;
  }

  probe(timeoutMs: number): Promise<boolean> {
    return this.conn.probe(timeoutMs);
  }

  /** A connection left behind (its daemon came back on a new one, or stopped answering): dropped. */
  drop(reason: string): void {
    this.log.info(`closing this agent daemon connection: ${reason}`);
    this.conn.terminate();
  }

  private async onFrame(frame: Frame): Promise<void> {
    this.lastHeard = Date.now();
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
    // agents from OLDEST_AGENT_PROTOCOL on are served, each in its own version (today: this one only)
    if (frame.protocolVersion < OLDEST_AGENT_PROTOCOL || frame.protocolVersion > PROTOCOL_VERSION) {
      throw new BarmanError(ErrorCode.PROTOCOL, `agent speaks protocol version ${frame.protocolVersion}, this receiver speaks ${PROTOCOL_VERSION}`, 'Install the same barman-ts version on the agent and the receiver.');
    }
    // an unknown server gets a challenge too, and its proof is checked against a secret nobody
    // holds: on the wire it is a wrong token, so the port does not tell which server names exist
    const server = this.lookup(frame.server);
    const serverNonce = newNonce();
    this.state = { phase: 'auth', hello: frame, server: server?.config ?? decoyServer(frame.server), serverNonce, known: server !== undefined };
    await this.conn.send({ type: 'challenge', protocolVersion: frame.protocolVersion, serverNonce });
  }

  private async onAuth(frame: Frame, state: Extract<State, { phase: 'auth' }>): Promise<void> {
    if (frame.type !== 'auth') throw protocolError(`expected auth, got ${frame.type}`);
    const { hello, server, serverNonce, known } = state;
    // the proof binds the hello as received (server, role, versions) and both nonces
    const proofContext = { ...hello, serverNonce };
    const expected = computeProof(server.token, 'agent', proofContext);
    if (!proofMatches(expected, frame.proof) || !known) {
      if (known) this.log.warn({ server: server.name, code: ErrorCode.AUTH_FAILED }, 'refused agent: wrong token');
      else this.log.warn({ server: server.name, code: ErrorCode.UNKNOWN_SERVER }, 'refused agent: no such server (answered as a wrong token)');
      await this.conn.fail(authFailed(server.name), CloseCode.AUTH);
      return;
    }
    clearTimeout(this.handshakeTimer);
    const context = this.lookup(server.name)!;
    // over its server's session limit the agent is told so, in words, before the close
    context.admit(this, hello.role, this.options.idleMs);
    this.options.onAuthenticated?.();
    this.idleTimer = setInterval(() => this.abortStalledUploads(), Math.min(1000, this.options.idleMs / 4));
    this.idleTimer.unref();
    this.log = this.log.child({ server: server.name, role: hello.role });
    this.role = hello.role;
    this.state = { phase: 'ready', server: context };
    this.conn.onClose(() => context.detach(this));
    // a daemon becomes the server's agent with its daemon-attach, which may be refused
    if (hello.role === 'daemon') this.conn.heartbeat(DAEMON_HEARTBEAT_MS);
    // the agent may send its WAL segments compressed as the catalog stores them
    const walCompression = context.walArchive.wireCompression();
    await this.conn.send({ type: 'welcome', sessionId: this.id, proof: computeProof(server.token, 'receiver', proofContext), ...(walCompression ? { walCompression } : {}) });
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
            const upload = await server.openUpload(() => server.walArchive.begin(t.name, frame.size, t.sha256, frame.compression)).catch((err: unknown) => {
              server.archiveFailed(err);
              throw err;
            });
            if (!this.keepOpened(frame.id, upload)) return;
            if (upload instanceof WalUpload) void this.answerIfStored(frame.id, upload, t.sha256);
          } else {
            this.allow(['daemon', 'backup'], 'send backup files');
            if (!this.keepOpened(frame.id, await server.openUpload(() => server.backupFile(this, t.backupId, t.path, frame.size, t.mtime)))) return;
          }
          this.uploadActivity.set(frame.id, Date.now());
        }, undefined, true);
      case 'chunk': {
        const upload = this.uploads.get(frame.id);
        if (!upload && this.failedUploads.has(frame.id)) return;
        if (!upload) throw protocolError(`chunk for ${frame.id}, which is not open`);
        this.uploadActivity.set(frame.id, Date.now());
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
          const status = await upload.finish(frame.sha256, frame.crc32c);
          await this.conn.send({ type: 'ack', id: frame.id, status, ...(frame.sha256 ? { sha256: frame.sha256 } : {}) });
          if (upload instanceof WalUpload) {
            this.log.info({ wal: upload.label, status }, status === 'stored' ? 'WAL archived' : 'WAL already archived with identical content');
            if (upload.replacedDamaged) this.log.warn({ wal: upload.label, aside: upload.replacedDamaged }, 'the stored copy was damaged; replaced by this identical push, the damaged copy kept aside');
            if (status === 'stored' && upload.file.kind === 'segment') await server.walArchived(upload.file.name, upload.size);
          }
        }, upload)
          .catch((err: unknown) => void this.conn.fail(asBarmanError(err)))
          .finally(() => {
            this.finishing--;
            this.release(upload);
          });
        return;
      }
      case 'get':
        return this.answer(frame.id, () => this.sendWal(frame.id, frame.name, server, frame.accept === 'zstd'));
      case 'refused': {
        // each file sent can be reported once: reading it again costs at most what sending it did
        const served = this.served.get(frame.id);
        this.served.delete(frame.id);
        const { id, detail } = frame;
        if (!served) {
          this.log.warn({ request: id, agent: detail }, 'the agent refused a file this connection did not just send it; nothing to check');
          return this.conn.send({ type: 'rechecked', id, found: 'unknown' });
        }
        // read back one at a time, answered in turn (the connection goes on meanwhile)
        this.rechecks = this.rechecks.then(async () => {
          let found: StoredCopyFound | 'unknown' = 'unknown';
          try {
            found = await this.recheck(served, detail, server);
          } catch (err) {
            const e = asBarmanError(err);
            this.log.warn({ code: e.code }, `could not read again a file the agent refused: ${e.message}`);
          }
          await this.conn.send({ type: 'rechecked', id, found }).catch(() => undefined);
        });
        return;
      }
      case 'backup-begin':
        return this.answer(frame.id, async () => {
          this.allow(['daemon', 'backup'], 'take backups');
          const info = await server.beginBackup(this, frame.start, frame.requestId, frame.canCompress);
          this.log.info({ backup: info.backupId, lsn: info.beginLsn }, 'backup started');
          const compression = server.backups.wireCompression(info.backupId);
          const checksum = server.backups.wantsSha256(info.backupId) ? { checksum: 'sha256' as const } : {};
          await this.conn.send({ type: 'backup-accepted', id: frame.id, backupId: info.backupId, ...(compression ? { compression } : {}), ...checksum });
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
      case 'backup-total':
        this.allow(['daemon', 'backup'], 'take backups');
        server.backupTotal(this, frame.backupId, frame.files, frame.bytes);
        return;
      case 'backup-start':
        return this.answer(frame.id, async () => {
          this.allow(['admin'], 'request backups');
          await this.startBackupFor(frame.id, frame.wait, server);
        });
      case 'get-backup-file': {
        // answered side by side, up to MAX_BACKUP_FILE_SENDS at once (their chunks interleave on
        // the wire, each carrying its request's id): a restore asks for several files at a time,
        // and one big file must not hold back the small ones behind it. Beyond that many, the next
        // request waits here, and the connection stops reading meanwhile.
        const sending = this.answer(frame.id, async () => {
          this.allow(['restore', 'admin'], 'read backups');
          await this.sendBackupFile(frame.id, frame.backupId, frame.path, server, frame.accept === 'zstd');
        }).catch((err: unknown) => void this.conn.fail(asBarmanError(err)));
        this.backupFileSends.add(sending);
        void sending.finally(() => this.backupFileSends.delete(sending));
        while (this.backupFileSends.size >= MAX_BACKUP_FILE_SENDS) await Promise.race(this.backupFileSends);
        return;
      }
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
      case 'stream-keepalive':
        this.allow(['daemon'], 'stream WAL');
        server.streamKeepalive(this, frame);
        return;
      case 'daemon-attach':
        return this.answer(frame.id, async () => {
          this.allow(['daemon'], 'attach as the agent daemon');
          await server.attachDaemon(this, { instance: frame.instance, takeover: frame.takeover, host: frame.host, pid: frame.pid });
          this.log.info({ instance: frame.instance, host: frame.host, pid: frame.pid, takeover: frame.takeover }, 'agent daemon attached');
          await this.conn.send({ type: 'daemon-attached', id: frame.id });
        });
      case 'catalog-change':
        return this.answer(frame.id, async () => {
          this.allow(['admin'], 'change the catalog');
          const result = await server.changeCatalog(frame.action === 'cron' ? { action: 'cron' } : { action: frame.action, backup: frame.backup }, frame.key);
          this.log.info({ action: frame.action, backup: frame.backup || undefined }, 'catalog changed on request');
          const json = Buffer.from(JSON.stringify(result));
          await this.sendStream(frame.id, 'result.json', json.length, Readable.from([json]));
        });
      case 'status-request':
        return this.answer(frame.id, async () => {
          this.allow(['admin'], 'ask for status');
          await this.conn.send({ type: 'status', id: frame.id, agentConnected: server.daemon !== undefined, agentSince: server.daemonSince?.toISOString() ?? '', backupRunning: server.runningBackup ?? '', streaming: server.streamingState() });
        });
      case 'pg-probe-request':
        return this.answer(frame.id, async () => {
          this.allow(['admin'], 'ask PostgreSQL');
          const facts = await server.probePostgres(frame.switchWal, PG_PROBE_TIMEOUT_MS);
          await this.conn.send({ ...facts, id: frame.id });
        });
      case 'pg-probe':
        this.allow(['daemon'], 'answer for PostgreSQL');
        if (!server.probeAnswered(this, frame)) this.log.debug({ id: frame.id }, 'a PostgreSQL probe answered that nobody waits for');
        return;
      case 'drill-request':
        return this.answer(frame.id, async () => {
          this.allow(['admin'], 'run restore drills');
          this.log.info({ backup: frame.backup, targetTime: frame.targetTime || undefined }, 'restore drill asked');
          const record = await server.requestDrill({ backup: frame.backup || undefined, targetTime: frame.targetTime || undefined }, frame.key);
          const json = Buffer.from(JSON.stringify(record));
          await this.sendStream(frame.id, 'drill.json', json.length, Readable.from([json]));
        });
      case 'error':
        // the daemon's answer to a request of ours (a backup request it could not run, a PostgreSQL probe)
        if (frame.id !== undefined && server.requestFailed(frame.id, errorFromFrame(frame))) return;
        if (frame.id !== undefined && server.probeAnswered(this, { id: frame.id, error: errorFromFrame(frame) })) return;
        this.log.warn({ code: frame.code }, `agent reported: ${frame.message}`);
        return;
      default:
        throw protocolError(`unexpected ${frame.type} frame`);
    }
  }

  /**
   * admin → daemon backup request; answers with backup-status STARTED. When the admin waits: every
   * later status up to DONE or FAILED, backup-progress about once a second while the files arrive,
   * and one last backup-progress when they are all in (before WAITING_FOR_WALS or DONE).
   */
  private async startBackupFor(id: number, wait: boolean, server: ServerContext): Promise<void> {
    let backupId: string | undefined;
    let finished = false;
    let ticker: NodeJS.Timeout | undefined;
    const send = (frame: Frame) => void this.conn.send(frame).catch(() => undefined);
    const sendProgress = () => {
      const progress = backupId === undefined ? undefined : server.backupProgress(backupId);
      if (progress) send({ type: 'backup-progress', id, ...progress });
    };
    const finish = () => {
      finished = true;
      clearInterval(ticker);
      unsubscribe();
    };
    const unsubscribe = server.onBackupChange((info) => {
      if (finished || !wait || info.backupId !== backupId || info.status === 'STARTED') return;
      if (ticker !== undefined && info.status !== 'FAILED') {
        // the files are all in: their final counts, once, before the status that follows
        clearInterval(ticker);
        ticker = undefined;
        sendProgress();
      }
      send({ type: 'backup-status', id, backupId: info.backupId, status: info.status, ...(info.error ? { reason: info.error } : {}) });
      if (info.status === 'DONE' || info.status === 'FAILED') finish();
    });
    this.conn.onClose(() => finish());
    try {
      await server.requestBackup((result) => {
        if (result instanceof BarmanError) {
          finish();
          send(errorFrame(result, id));
          return;
        }
        backupId = result.backupId;
        send({ type: 'backup-status', id, backupId: result.backupId, status: result.status });
        if (!wait) finish();
        else ticker = setInterval(sendProgress, PROGRESS_INTERVAL_MS);
      });
    } catch (err) {
      finish();
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
      .then(() => {
        if (this.uploads.get(id) === upload) this.uploadActivity.set(id, Date.now());
      })
      .catch((err: unknown) => this.failOpenUpload(id, upload, err))
      .finally(() => {
        this.bytesWriting -= data.length;
        if (this.bytesWriting <= WRITE_HIGH_WATER) for (const wake of this.writeWaiters.splice(0)) wake();
      });
    while (this.bytesWriting > WRITE_HIGH_WATER) await new Promise<void>((resolve) => this.writeWaiters.push(resolve));
  }

  /**
   * Fails an upload that is still open, answering now so the sender stops; its later chunks are
   * dropped from this moment on (frames keep arriving). After its end, the end's answer reports
   * the failure instead.
   */
  private failOpenUpload(id: number, upload: Upload, err: unknown): void {
    if (this.uploads.get(id) !== upload) return;
    this.failedUploads.add(id);
    this.uploads.delete(id);
    this.writes.delete(id);
    // nothing may escape unhandled here: it would end the whole receiver
    this.answer(id, () => Promise.reject(err), upload).catch((e: unknown) => void this.conn.fail(asBarmanError(e)));
  }

  /**
   * An upload that has had no data for `idleMs` is aborted (its temporary file removed) and its
   * sender told: a stalled agent must not hold a file and a slot of its server for ever. Not
   * while this session is held back by the disk: then the silence is ours, not the sender's.
   */
  private abortStalledUploads(): void {
    const now = Date.now();
    for (const id of this.uploadActivity.keys()) if (!this.uploads.has(id)) this.uploadActivity.delete(id);
    if (this.bytesWriting > WRITE_HIGH_WATER) return;
    for (const [id, upload] of this.uploads) {
      if (now - (this.uploadActivity.get(id) ?? now) < this.options.idleMs) continue;
      const seconds = Math.round(this.options.idleMs / 1000);
      this.failOpenUpload(id, upload, new BarmanError(ErrorCode.TIMEOUT, `${upload.label}: no data for ${seconds} s, the upload is aborted`, 'The sender stalled or the network path drops packets; the agent retries (PostgreSQL retries archive_command), and a failed backup can be taken again.'));
    }
  }

  /**
   * A WAL file whose declared checksum is that of an intact copy the catalog holds is answered
   * `duplicate` at once, without waiting for its bytes: the sender stops sending (its bytes hash
   * to what the catalog holds), and the rest of its frames are dropped by id. A file arrives two
   * or three times (streamed, pushed ahead by the daemon, pushed by PostgreSQL).
   */
  private async answerIfStored(id: number, upload: WalUpload, sha256: string): Promise<void> {
    const stored = await upload.alreadyStored().catch(() => false);
    // answered meanwhile by its end (or failed): nothing to do
    if (!stored || this.uploads.get(id) !== upload) return;
    this.uploads.delete(id);
    this.writes.delete(id);
    this.failedUploads.add(id);
    await upload.abort().catch(() => undefined);
    this.release(upload);
    this.log.info({ wal: upload.label, status: 'duplicate' }, 'WAL already archived with identical content');
    await this.conn.send({ type: 'ack', id, status: 'duplicate', sha256 }).catch(() => undefined);
  }

  /**
   * Keeps an upload just opened under its id; false when the connection closed while it opened.
   * The close gave up the uploads it knew, so this one is given up here: else its temporary file
   * stayed and it held one of the server's MAX_UPLOADS_PER_SERVER slots until the receiver
   * restarted. Nobody is left to answer.
   */
  private keepOpened(id: number, upload: Upload): boolean {
    if (this.closed) {
      this.giveUp(upload);
      return false;
    }
    this.uploads.set(id, upload);
    return true;
  }

  /** An upload nobody sends to any more: aborted, then its slot freed. */
  private giveUp(upload: Upload): void {
    void upload
      .abort()
      .catch(() => undefined)
      .finally(() => this.release(upload));
  }

  /** An upload is over (stored, failed or aborted): its slot of the server's limit is free. */
  private release(upload: Upload): void {
    if (this.state.phase === 'ready') this.state.server.releaseUpload(upload);
  }

  /** Runs one step of a request; a failure answers that request with an error frame. */
  private async answer(id: number, step: () => Promise<void>, upload?: Upload, opensUpload = false): Promise<void> {
    this.answering++;
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
      if (open instanceof WalUpload && this.state.phase === 'ready') this.state.server.archiveFailed(e);
      if (open) {
        this.uploads.delete(id);
        this.writes.delete(id);
        await open.abort().catch(() => undefined);
        this.release(open);
      }
      if (e.code !== ErrorCode.WAL_NOT_FOUND) this.log.warn({ code: e.code, err: e.cause ?? undefined }, e.message);
      await this.conn.send(errorFrame(e, id));
    } finally {
      this.answering--;
    }
  }

  private async sendWal(id: number, name: string, server: ServerContext, acceptsZstd = false): Promise<void> {
    const stored = await server.catalog.findWal(name);
    if (!stored && this.role === 'restore' && (await server.stream.partialFor(name))) {
      // a restore's newest segment may exist only as streamed WAL (padded to a whole segment)
      await this.sendStream(id, name, await server.catalog.segmentSize(), Readable.from(recoveryWal(server.catalog, name)));
      return;
    }
    if (!stored) {
      throw new BarmanError(ErrorCode.WAL_NOT_FOUND, `${name.slice(0, 80)} is not in the catalog of ${server.config.name}`, 'The segment was never archived, or retention removed it.');
    }
    if (stored.sha256 === undefined) this.log.warn({ wal: name }, 'sending a WAL file stored without a checksum (by an older version): it cannot be verified; barman-receiver cron records one');
    this.remember(id, { kind: 'wal', name: stored.name });
    const size = stored.compression === 'none' ? stored.size : await server.catalog.segmentSize();
    if (acceptsZstd && stored.compression === 'zstd' && stored.sha256 !== undefined) {
      // the stored frames as they are: the agent decompresses them and checks the plain bytes
      // against the recorded SHA-256 the end frame carries, as it does a backup file's (one check,
      // end to end, of what left the catalog; here neither a decompression nor a hash)
      const refuse: RefuseStored = (why) => damagedWal(server.catalog, stored, { unreadable: `a stored zstd frame ${why}` });
      return this.sendFrames(id, name, size, readStoredWalFrames(server.catalog, stored), { algorithm: 'SHA256', checksum: stored.sha256 }, refuse);
    }
    // checked as it is read: a damaged file ends in an error frame, never in the `end` that would make it whole;
    // the end frame carries the recorded checksum, so the bytes are hashed once here (and once by the agent)
    await this.sendStream(id, name, size, readStoredWal(server.catalog, stored), stored.sha256 === undefined ? undefined : { algorithm: 'SHA256', checksum: stored.sha256 });
  }

  /** Remembers what request `id` is answered with, for the last MAX_SERVED requests. */
  private remember(id: number, served: Served): void {
    this.served.set(id, served);
    if (this.served.size > MAX_SERVED) this.served.delete(this.served.keys().next().value!);
  }

  /**
   * Reads again the stored copy of a file the agent refused (`agent`: what it found), logs what
   * this host finds (damaged in the catalog: an error, with what to do; intact: the bytes changed
   * on the way, or on the agent's host), counts it, and returns it for the agent. Nothing in the
   * catalog changes on an agent's word.
   */
  private async recheck(served: Served, agent: string, server: ServerContext): Promise<StoredCopyFound> {
    const found = await this.readBack(served, agent, server);
    server.fileRefused(served.kind, found);
    return found;
  }

  /** recheck's reading back and logging: what the stored copy of `served` is. */
  private async readBack(served: Served, agent: string, server: ServerContext): Promise<StoredCopyFound> {
    if (served.kind === 'wal') {
      const stored = await server.catalog.findWal(served.name);
      if (!stored) {
        this.log.warn({ wal: served.name, agent }, `the agent refused ${served.name}, which is no longer in the catalog`);
        return 'gone';
      }
      const found = await verifyStoredWal(server.catalog, stored);
      if (found.state === 'damaged') {
        this.log.error({ wal: stored.name, code: ErrorCode.CHECKSUM_MISMATCH, agent, hint: damagedWalHint(stored.name, server.config.name) }, `the agent refused ${stored.name}, and its copy in the catalog is damaged: ${describeDamage(stored, found.damage)}`);
        return 'damaged';
      }
      this.log.warn({ wal: stored.name, agent }, `the agent refused ${stored.name}; its copy in the catalog ${found.state === 'ok' ? 'reads back intact: the bytes changed on the way or on the agent\'s host' : 'has no recorded checksum to check it against'}`);
      return found.state === 'ok' ? 'intact' : 'unchecked';
    }
    const { backupId, path } = served;
    const { contents, recorded } = await this.doneBackupContents(backupId, server);
    const checksum = recorded.get(path);
    const problem = await server.backups.fileProblem(backupId, contents, { path, size: contents.files[path]?.size ?? 0, checksumAlgorithm: checksum?.algorithm, checksum: checksum?.checksum ?? '' });
    if (problem) {
      this.log.error({ backup: backupId, file: path, code: ErrorCode.CHECKSUM_MISMATCH, agent, hint: damagedBackupHint(server.config.name, backupId) }, `the agent refused ${path} of backup ${backupId}, and its copy in the catalog is damaged: ${problem}`);
      return 'damaged';
    }
    this.log.warn({ backup: backupId, file: path, agent }, `the agent refused ${path} of backup ${backupId}; its copy in the catalog ${checksum ? 'reads back intact: the bytes changed on the way or on the agent\'s host' : 'has no recorded checksum to check it against'}`);
    return checksum ? 'intact' : 'unchecked';
  }

  /**
   * Answers a request with a file: file frame, chunks (pooled, hashed), end frame with the SHA-256.
   * With `recorded` (the checksum the catalog recorded for these bytes) the bytes are not hashed
   * here: the end frame carries the recorded checksum (a CRC-32C announced so by the file frame)
   * and the agent, which checksums what arrives, refuses the file unless they match — one check,
   * end to end, of what left the catalog.
   */
  private async sendStream(id: number, name: string, size: number, source: AsyncIterable<Buffer>, recorded?: FileChecksumValue): Promise<void> {
    await this.conn.send({ type: 'file', id, name, size, ...announced(recorded) });
    const sent = await sendChunks(this.conn, id, streamSource(source), undefined, { hashing: recorded === undefined });
    await this.conn.send({ type: 'end', id, ...endChecksum(recorded ?? { algorithm: 'SHA256', checksum: sent.sha256 }) });
  }

  private async sendBackupFile(id: number, backupId: string, path: string, server: ServerContext, acceptsZstd = false): Promise<void> {
    const rel = readableBackupPath(path);
    const { backupId: done, contents, recorded, bundles } = await this.doneBackupContents(backupId, server);
    const checksum = recorded.get(rel);
    this.remember(id, { kind: 'backup-file', backupId: done, path: rel });
    // the agent decompresses and checks the plain bytes against the recorded checksum: the stored
    // frames go as they are (a file without a recorded checksum is hashed here, so it goes plain)
    const frames = acceptsZstd && checksum ? await server.backups.readFileFrames(done, contents, rel, bundles) : undefined;
    if (frames && checksum) return this.sendFrames(id, path, contents.files[rel]!.size, frames, checksum, refuseBackupFrame(server.config.name, done, path));
    const source = await server.backups.readFile(done, contents, rel, bundles);
    await this.sendStream(id, path, contents.files[rel]!.size, source, recorded.get(rel));
  }

  /**
   * Answers a get-backup-file with the file's stored zstd frames (file frame with `encoding`), one
   * chunk each; a frame longer than a chunk (an incompressible block, stored raw) goes as its plain
   * bytes, flagged so. The end carries the recorded checksum of the plain bytes, which the agent checks.
   */
  private async sendFrames(id: number, name: string, size: number, frames: AsyncIterable<Buffer>, recorded: FileChecksumValue, refuse: RefuseStored): Promise<void> {
    await this.conn.send({ type: 'file', id, name, size, encoding: 'zstd', ...announced(recorded) });
    for await (const frame of frames) {
      await this.conn.send({ type: 'chunk', id, ...(await storedFrameChunk(frame, refuse)) });
    }
    await this.conn.send({ type: 'end', id, ...endChecksum(recorded) });
  }

  /**
   * A DONE backup's contents, read once per restore session: a restore asks for each of its
   * files in turn, and a DONE backup's contents never change (a removed backup's files are gone,
   * and reading them fails). The read itself is shared: the first requests of a restore arrive
   * together, and each waits for the one read. A read that fails is not kept; the next request tries again.
   */
  private doneBackupContents(backupId: string, server: ServerContext): Promise<RestoreContents> {
    const cached = this.restoreContents;
    if (cached && cached.backupId === backupId && cached.server === server) return cached.value;
    const entry = { backupId, server, value: readDoneBackupContents(backupId, server) };
    this.restoreContents = entry;
    entry.value.catch(() => {
      if (this.restoreContents === entry) this.restoreContents = undefined;
    });
    return entry.value;
  }

  private async sendRestorePlan(id: number, backup: string, options: RecoveryOptions, server: ServerContext): Promise<void> {
    const plan = await planRecovery(server.catalog, server.backups, backup, options);
    const json = Buffer.from(JSON.stringify(plan));
    this.log.info({ backup: plan.backupId, target: plan.targetDescription }, 'restore planned for the agent');
    await this.sendStream(id, 'restore-plan.json', json.length, Readable.from([json]));
  }
}

/** What a sent file's file frame says of the checksum its end will carry: a CRC-32C is announced, a SHA-256 is the default. */
function announced(recorded: FileChecksumValue | undefined): { checksum?: 'crc32c' } {
  return recorded?.algorithm === 'CRC32C' ? { checksum: 'crc32c' } : {};
}

/** A sent file's checksum as its end frame carries it: a CRC-32C in the wire's hex (the manifest's is byte-reversed), a SHA-256 as it is. */
function endChecksum(checksum: FileChecksumValue): { crc32c: string } | { sha256: string } {
  return checksum.algorithm === 'CRC32C' ? { crc32c: crc32cWireHex(checksum.checksum) } : { sha256: checksum.checksum };
}

/**
 * What a chunk of a file sent as frames carries for one stored frame: the frame, or, when it is
 * longer than a chunk (an incompressible block), its plain bytes, flagged so.
 */
export async function storedFrameChunk(frame: Buffer, refuse: RefuseStored): Promise<{ data: Buffer; plain?: true }> {
  return frame.length <= CHUNK_SIZE ? { data: frame } : { data: await plainOfFrame(frame, refuse), plain: true };
}

/** The error for a stored frame that is not what the catalog writes: `why` says what it is instead. */
export type RefuseStored = (why: string) => BarmanError;

/** How a stored frame of file `path` of backup `id` of `server` is refused: the file does not match its manifest. */
export function refuseBackupFrame(server: string, id: string, path: string): RefuseStored {
  return (why) => new BarmanError(ErrorCode.CHECKSUM_MISMATCH, `backup ${id}: ${path.slice(0, 200)} in the catalog does not match its manifest: a stored zstd frame ${why}`, damagedBackupHint(server, id));
}

/** The plain bytes of a stored frame too long for a chunk: no more than a chunk holds, or the stored copy is damaged. */
async function plainOfFrame(frame: Buffer, refuse: RefuseStored): Promise<Buffer> {
  try {
    checkZstdBlockFrame(frame);
  } catch (err) {
    throw refuse(`is not as barman-ts writes them (${(err as Error).message})`);
  }
  const plain = await zstdDecompressFrame(frame).catch((err: unknown) => {
    throw refuse(`does not decompress (${(err as Error).message})`);
  });
  if (plain.length > CHUNK_SIZE) throw refuse(`holds ${plain.length} bytes, more than ${CHUNK_SIZE}`);
  return plain;
}

/** A DONE backup's contents as a restore reads them: where its files are, and each file's checksum as its manifest records it. */
async function readDoneBackupContents(backupId: string, server: ServerContext): Promise<RestoreContents> {
  const info = await server.backups.resolve(backupId);
  if (info.status !== 'DONE') throw new BarmanError(ErrorCode.BACKUP_FAILED, `backup ${backupId} is ${info.status}, not DONE`, 'Restore from a DONE backup (list-backups).');
  // each file's checksum as the manifest records it (a file without one is hashed as it is sent)
  const recorded = new Map<string, FileChecksumValue>();
  const manifest = await server.backups.manifest(info.backupId);
  if (manifest) for (const f of parseManifest(manifest).files) if (f.checksumAlgorithm) recorded.set(f.path, { algorithm: f.checksumAlgorithm, checksum: f.checksum });
  const contents = await server.backups.contents(info.backupId);
  return { backupId: info.backupId, contents, recorded, bundles: server.backups.bundleReader(contents) };
}

/** A catalog file a request was answered with. */
type Served = { kind: 'wal'; name: string } | { kind: 'backup-file'; backupId: string; path: string };

/** requests per connection whose file an agent may still report refused (a restore has a few in flight) */
const MAX_SERVED = 64;

/** What a restore reads of one DONE backup: where its files are, and the checksum recorded for each. */
interface RestoreContents {
  backupId: string;
  contents: BackupContents;
  recorded: Map<string, FileChecksumValue>;
  /** its small files, read with their bundle, each bundle once */
  bundles: BundleReader;
}

/** Wrong token and unknown server alike: one message, one hint that names both things to check. */
function authFailed(server: string): BarmanError {
  return new BarmanError(
    ErrorCode.AUTH_FAILED,
    `authentication failed for server "${server}": the receiver has no server of that name, or the agent's token is not that server's`,
    `Check that server = ${server} in the agent configuration names a section of the receiver configuration (barman-receiver list-servers), and that the agent's token_file holds the same secret as token_file in that section.`,
  );
}

/** What an unknown server name is checked against: a secret made up for this one handshake. */
function decoyServer(name: string): Pick<ServerConfig, 'name' | 'token'> {
  return { name, token: randomBytes(32).toString('hex') };
}

function protocolError(message: string): BarmanError {
  return new BarmanError(ErrorCode.PROTOCOL, message, 'Agent and receiver must run compatible versions of barman-ts.');
}
