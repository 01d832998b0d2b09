// What the receiver holds for each configured PostgreSQL server: its catalog, its connected
// agent daemon (at most one), and the backup in progress (at most one), with whoever waits on it;
// and what one server may hold of the receiver: MAX_SESSIONS_PER_SERVER sessions and
// MAX_UPLOADS_PER_SERVER files being received, so a broken or hostile client of one server
// cannot use up the descriptors every server needs.

import { randomBytes, timingSafeEqual } from 'node:crypto';
import type { BackupInfo } from '../../shared/backup/info';
import type { ManifestFile } from '../../shared/backup/manifest';
import type { ReceiverConfig, ServerConfig } from '../../shared/config/receiver';
import { asBarmanError, BarmanError, ErrorCode } from '../../shared/errors';
import type { BackupStart, BackupStop, Frame, PgProbeFrame, Role, StreamingState, StreamKeepaliveFrame, StoredCopyFound, StreamOpenFrame, WalDataFrame, WireCompression } from '../../shared/protocol/frames';
import { Turns } from '../../shared/turns';
import { type Lsn, parseLsn } from '../../shared/wal/lsn';
import type { Logger } from 'pino';
import { WalStream } from '../catalog/streaming';
import type { BackupCatalog } from '../catalog/backups';
import type { ServerCatalog } from '../catalog/catalog';
import { serverOn } from '../catalog/open';
import type { Storage } from '../storage/storage';
import { applyCatalogChange, type CatalogChange, type CronReport } from '../catalog/maintenance';
import type { Upload } from '../catalog/upload';
import { WalArchive } from '../catalog/wal-archive';
import { StreamHealth } from './stream-health';
import type { DrillRecord } from '../catalog/catalog';
import type { DrillOptions } from '../drill/drill';

/** The side of a session the server context needs: a way to talk to it and to name it. */
export interface Peer {
  readonly id: string;
  /** address:port it connected from */
  readonly remote: string;
  /** its connection has ended */
  readonly closed: boolean;
  send(frame: Frame): Promise<void>;
  /** closes it, telling it another daemon took its place (it stops rather than reconnect) */
  replace(reason: string): void;
  /** ms since the peer last sent anything, or undefined while it has work in progress here */
  quietFor?(now: number): number | undefined;
  /** closes the peer's session, telling it why */
  evict?(err: BarmanError): void;
  /** asks it for a sign of life: true as soon as it answers, false when it has not within `timeoutMs` */
  probe(timeoutMs: number): Promise<boolean>;
  /** drops its connection without a word (a half-dead one) */
  drop(reason: string): void;
}

/** authenticated sessions of one server at once; its daemon is not counted (there is at most one attached) */
export const MAX_SESSIONS_PER_SERVER = 32;
/** files being received for one server at once, over all its sessions */
export const MAX_UPLOADS_PER_SERVER = 64;

/** What a daemon says of itself when it asks to be the server's agent (a daemon-attach frame). */
export interface DaemonClaim {
  /** the same for every connection of one daemon process */
  instance: string;
  takeover: boolean;
  host: string;
  pid: number;
}

/** how long a connected daemon has to answer a ping before a newcomer may take its place */
const DAEMON_PROBE_MS = 5_000;

export type BackupListener = (info: BackupInfo) => void;

/** How far a backup's files are, for whoever waits on it: counted as chunks are written here. */
export interface BackupProgress {
  backupId: string;
  files: number;
  bytes: number;
  elapsedMs: number;
  /** what the agent's walk found to send (unknown until it says) */
  totalFiles?: number;
  totalBytes?: number;
}

interface RunningBackup {
  backupId: string;
  manifest: ManifestFile[];
  owner: Peer;
  startedAt: number;
  files: number;
  bytes: number;
  total?: { files: number; bytes: number };
}

/** What happened to a server that its metrics count or follow (receiver/server/metrics.ts). */
export type ServerEvent =
  | { kind: 'wal-archived'; name: string; bytes: number }
  | { kind: 'archive-failed'; reason: string }
  /** an agent refused a catalog file it was sent, and reading the stored copy back found it `found` */
  | { kind: 'file-refused'; file: RefusedFile; found: StoredCopyFound }
  /** backups, retention or drills changed what the catalog holds */
  | { kind: 'catalog-changed' };

/** What kind of catalog file an agent refused: a WAL file or a backup's file. */
export type RefusedFile = 'wal' | 'backup-file';

/** What a drill is asked for: a backup (ID, latest, oldest; default latest) and an optional target time. */
export type DrillRequest = Pick<DrillOptions, 'backup' | 'targetTime'>;

/** receiver-originated request ids live high, apart from the agent's own counter */
let nextRequestId = 1 << 30;

export class ServerContext {
  readonly catalog: ServerCatalog;
  readonly walArchive: WalArchive;
  readonly backups: BackupCatalog;
  readonly stream: WalStream;
  private streamOwner: Peer | undefined;
  /** tells the streaming daemon a segment it streamed is archived (it records the ack, PostgreSQL's push finds it) */
  private onStreamSegment: ((name: string, sha256: string) => void) | undefined;
  daemon: Peer | undefined;
  daemonSince: Date | undefined;
  private daemonClaim: DaemonClaim | undefined;
  /** daemons asking to attach, one decision at a time */
  private readonly attaching = new Turns();
  /** whether the stream is heard from, and when the receiver last had all of it */
  private readonly streamHealth = new StreamHealth();
  /** agent.json exists: a daemon attached for this server once */
  private agentRecorded = false;
  /** streaming.json exists: a stream was opened for this server */
  private streamingRecorded = false;
  private running: RunningBackup | undefined;
  /** the counters of the last backup whose files all arrived, kept for its waiters' last report */
  private filesDone: BackupProgress | undefined;
  private readonly listeners = new Set<BackupListener>();
  /** bumped when a backup starts waiting for its WAL; walStored skips the catalog while it equals noneWaitingAt */
  private waitingGeneration = 0;
  private noneWaitingAt = -1;
  /** backup requests sent to the daemon, by request id: told the backup's ID, or why it failed */
  private readonly requests = new Map<number, (result: BackupInfo | BarmanError) => void>();
  /** sessions counted against MAX_SESSIONS_PER_SERVER */
  private readonly sessions = new Set<Peer>();
  /** uploads counted against MAX_UPLOADS_PER_SERVER, and those being opened */
  private readonly uploads = new Set<Upload>();
  private uploadsOpening = 0;
  private readonly log: Logger;
  /** catalog changes (keep, delete, cron) asked of this service run one at a time */
  private readonly changes = new Turns();
  private readonly eventListeners = new Set<(event: ServerEvent) => void>();
  /** runs a restore drill of this server (set by the service: receiver/drill/drill.ts); undefined outside serve */
  drillRunner: ((options: DrillRequest) => Promise<DrillRecord>) | undefined;
  /** the drill running now, if any */
  private drilling: Promise<DrillRecord> | undefined;
  /** PostgreSQL probes sent to the daemon, by request id */
  private readonly probes = new Map<number, (result: PgProbeFrame | BarmanError) => void>();

  /** set when this receiver lost the catalog's lock: it writes nothing more, and says why */
  private fenced: BarmanError | undefined;

  constructor(storage: Storage, receiver: ReceiverConfig, readonly config: ServerConfig, log: Logger) {
    this.log = log.child({ server: config.name });
    ({ catalog: this.catalog, backups: this.backups } = serverOn(storage, receiver, config));
    this.walArchive = new WalArchive(this.catalog);
    this.stream = new WalStream(this.catalog, log.child({ server: config.name, component: 'streaming' }), this.walArchive);
    this.stream.onSegment = async (name, sha256) => {
      this.onStreamSegment?.(name, sha256);
      await this.walArchived(name, await this.catalog.segmentSize());
    };
  }

  /**
   * The catalog's lock is no longer this receiver's (its lease lapsed or was taken over): from now
   * on every write is refused with the reason, the stream is closed and a running backup fails.
   * Fail closed: two receivers must never both acknowledge WAL of one server.
   */
  fence(err: BarmanError): void {
    if (this.fenced) return;
    this.fenced = new BarmanError(ErrorCode.CATALOG_LOCKED, `this receiver no longer holds the catalog of server ${this.config.name} and accepts no more writes for it: ${err.message}`, `${err.hint} Then restart this receiver (systemctl restart barman-receiver).`, { cause: err });
    this.log.error({ code: err.code }, this.fenced.message);
    const owner = this.streamOwner;
    if (owner) {
      this.streamOwner = undefined;
      void this.stream.close();
      owner.drop('the catalog lock was lost');
    }
    if (this.running) this.running.owner.drop('the catalog lock was lost');
  }

  /** Refuses any write once the lock is lost. */
  private writable(): void {
    if (this.fenced) throw this.fenced;
  }

  /** The server's agent daemon starts streaming WAL; answers where to start. Only one stream (the daemon's). */
  async openStream(owner: Peer, frame: StreamOpenFrame, onFlushed: (timeline: number, lsn: Lsn) => void, onSegment: (name: string, sha256: string) => void): Promise<Lsn | undefined> {
    this.writable();
    if (this.daemon?.id !== owner.id) {
      throw new BarmanError(ErrorCode.AGENT_NOT_CONNECTED, `this session is not the agent daemon of server ${this.config.name}; only that one streams WAL`, 'Restart the agent daemon (barman-agent daemon).');
    }
    this.streamOwner = owner;
    this.stream.onFlushed = (timeline, lsn) => {
      this.streamHealth.flushed(new Date(), this.stream.caughtUp);
      onFlushed(timeline, lsn);
    };
    this.onStreamSegment = onSegment;
    const branch = frame.switchLsn ? { parent: frame.parentTimeline, switchLsn: parseLsn(frame.switchLsn) } : undefined;
    // the stream names and cuts segments by the cluster's segment size: the catalog learns it (or checks it) first
    await this.catalog.learnIdentity({ systemIdentifier: frame.systemIdentifier, segmentSize: frame.segmentSize });
    const resume = await this.stream.open(frame.timeline, frame.systemIdentifier, frame.segmentSize, parseLsn(frame.serverLsn), branch);
    if (!this.streamingRecorded) {
      // durably: after a receiver restart `check` still knows this server's WAL is expected streamed
      if (!(await this.catalog.streamingRecord())) await this.catalog.saveStreamingRecord({ firstOpenedAt: new Date().toISOString() });
      this.streamingRecorded = true;
    }
    this.streamHealth.opened(new Date(), frame.timeoutSeconds, this.stream.caughtUp);
    return resume;
  }

  async appendStream(owner: Peer, frame: WalDataFrame): Promise<void> {
    this.writable();
    if (this.streamOwner?.id !== owner.id) throw new BarmanError(ErrorCode.PROTOCOL, 'WAL data on a session that does not own the stream', 'Restart the agent daemon.');
    try {
      await this.stream.append(frame.timeline, parseLsn(frame.startLsn), parseLsn(frame.walEnd), frame.data);
    } catch (err) {
      this.archiveFailed(err);
      throw err;
    }
    this.streamHealth.heard(new Date(), this.stream.caughtUp);
  }

  /** PostgreSQL answered the daemon's keepalive: the stream is alive, and PostgreSQL's WAL ends at least there. */
  streamKeepalive(owner: Peer, frame: StreamKeepaliveFrame): void {
    if (this.streamOwner?.id !== owner.id) return; // a stream replaced meanwhile: nothing to say about it
    this.stream.noteServerLsn(frame.timeline, parseLsn(frame.serverLsn));
    this.streamHealth.heard(new Date(), this.stream.caughtUp);
  }

  /** The stream as status shows it: its positions, and whether it is still heard from. */
  streamingState(now = new Date()): StreamingState {
    const raw = this.stream.state();
    const state = this.streamHealth.state(now, { active: raw.state === 'streaming', everStreamed: raw.state !== 'off' }, this.daemon !== undefined);
    return { ...raw, state, lastHeardAt: this.streamHealth.lastHeardAt?.toISOString() ?? '', caughtUpAt: this.streamHealth.caughtUpAt?.toISOString() ?? '' };
  }

  /**
   * A daemon asks to be the server's agent. One at a time, never two writers: a live daemon keeps
   * the server and the newcomer is refused, unless the newcomer is that same daemon come back
   * after a network blip (its old connection, half dead, is dropped), it asks to take over (the
   * old one is closed and told why), or the old one does not answer a ping (dropped as dead).
   */
  attachDaemon(peer: Peer, claim: DaemonClaim): Promise<void> {
    return this.attaching.run(() => this.decideDaemon(peer, claim));
  }

  private async decideDaemon(peer: Peer, claim: DaemonClaim): Promise<void> {
    const old = this.daemon;
    const oldClaim = this.daemonClaim;
    if (old && old.id !== peer.id) {
      if (oldClaim?.instance === claim.instance) {
        old.drop('the same agent daemon connected again');
      } else if (claim.takeover) {
        old.replace(`replaced by the agent daemon started with --takeover on host ${claim.host} (pid ${claim.pid}, from ${peer.remote})`);
      } else if ((await old.probe(DAEMON_PROBE_MS)) && this.daemon === old) {
        throw new BarmanError(
          ErrorCode.DAEMON_ALREADY_CONNECTED,
          `server ${this.config.name} already has a live agent daemon: connected since ${this.daemonSince?.toISOString()} from ${old.remote} (host ${oldClaim?.host}, pid ${oldClaim?.pid}); this one does not start`,
          'Run one barman-agent daemon per PostgreSQL server: stop that one first, or start this one with --takeover to replace it (the replaced one exits 0, so its systemd unit leaves it stopped).',
        );
      } else if (this.daemon === old) {
        old.drop('a new agent daemon connected and this one did not answer a ping');
      }
    }
    if (peer.closed) throw new BarmanError(ErrorCode.CONNECTION_LOST, 'the agent daemon went away while attaching', 'It reconnects by itself.');
    this.daemon = peer;
    this.daemonSince = new Date();
    this.daemonClaim = claim;
    // from now on `check` expects this server's daemon connected (as streaming.json does for a stream)
    if (!this.agentRecorded) {
      try {
        if (!(await this.catalog.agentRecord())) await this.catalog.saveAgentRecord({ firstAttachedAt: this.daemonSince.toISOString(), host: claim.host });
        this.agentRecorded = true;
      } catch (err) {
        this.log.warn({ err: String(err) }, 'cannot record that an agent daemon attached (agent.json); trying again at its next attach');
      }
    }
  }

  /**
   * An agent of this server authenticated. At the limit, the session silent longest (for at least
   * `quietMs`, with nothing in progress) is closed to make room: a client that opens sessions and
   * leaves them does not lock the server's own agents out. Without one, the newcomer is refused.
   */
  admit(peer: Peer, role: Role, quietMs: number): void {
    if (role === 'daemon') return;
    if (this.sessions.size >= MAX_SESSIONS_PER_SERVER) {
      const now = Date.now();
      let quietest: Peer | undefined;
      let longest = quietMs;
      for (const s of this.sessions) {
        const quiet = s.id === this.running?.owner.id ? undefined : s.quietFor?.(now);
        if (quiet !== undefined && quiet >= longest) {
          quietest = s;
          longest = quiet;
        }
      }
      if (!quietest) {
        this.log.warn({ code: ErrorCode.TOO_MANY_SESSIONS, sessions: this.sessions.size }, 'session refused: the server is at its session limit');
        throw new BarmanError(ErrorCode.TOO_MANY_SESSIONS, `server ${this.config.name} already has ${MAX_SESSIONS_PER_SERVER} sessions open on the receiver, all busy`, tooManyHint(this.config.name));
      }
      this.sessions.delete(quietest);
      this.log.warn({ code: ErrorCode.TOO_MANY_SESSIONS, evicted: quietest.id, silentSeconds: Math.round(longest / 1000) }, 'a silent session closed to make room for a new one');
      quietest.evict?.(new BarmanError(ErrorCode.TOO_MANY_SESSIONS, `session closed by the receiver: silent for ${Math.round(longest / 1000)} s while server ${this.config.name} is at its limit of ${MAX_SESSIONS_PER_SERVER} sessions`, tooManyHint(this.config.name)));
    }
    this.sessions.add(peer);
  }

  /** Opens an upload within the server's limit; its slot is held until releaseUpload. */
  async openUpload(open: () => Promise<Upload>): Promise<Upload> {
    this.writable();
    if (this.uploads.size + this.uploadsOpening >= MAX_UPLOADS_PER_SERVER) {
      throw new BarmanError(ErrorCode.TOO_MANY_UPLOADS, `server ${this.config.name} already has ${MAX_UPLOADS_PER_SERVER} files being received`, `Retry later (PostgreSQL retries archive_command by itself). If it persists: ${tooManyHint(this.config.name)}`);
    }
    this.uploadsOpening++;
    try {
      const upload = await open();
      this.uploads.add(upload);
      return upload;
    } finally {
      this.uploadsOpening--;
    }
  }

  releaseUpload(upload: Upload): void {
    this.uploads.delete(upload);
  }

  detach(peer: Peer): void {
    this.sessions.delete(peer);
    if (this.streamOwner?.id === peer.id) {
      this.streamOwner = undefined;
      void this.stream.close();
    }
    if (this.daemon?.id === peer.id) {
      this.daemon = undefined;
      this.daemonSince = undefined;
      this.daemonClaim = undefined;
      const gone = new BarmanError(ErrorCode.AGENT_NOT_CONNECTED, `the agent daemon of ${this.config.name} went away before it answered`, 'It reconnects by itself; ask again.');
      for (const cb of [...this.probes.values()]) cb(gone);
    }
    if (this.running?.owner.id === peer.id) {
      const { backupId } = this.running;
      this.running = undefined;
      this.backups.fail(backupId, 'the agent connection was lost during the backup').then(() => this.readAndNotify(backupId)).catch(() => undefined);
    }
  }

  /** Asks the connected daemon for a backup. `onResult` hears the new backup's ID, or the failure. */
  async requestBackup(onResult: (result: BackupInfo | BarmanError) => void): Promise<void> {
    const daemon = this.daemon;
    if (!daemon) {
      throw new BarmanError(ErrorCode.AGENT_NOT_CONNECTED, `no agent daemon of server ${this.config.name} is connected`, `Start one on the PostgreSQL host: barman-agent daemon (or run barman-agent backup there).`);
    }
    if (this.running) throw new BarmanError(ErrorCode.BACKUP_IN_PROGRESS, `backup ${this.running.backupId} of ${this.config.name} is still running`, 'Wait for it to finish, then start another.');
    const id = nextRequestId++;
    this.requests.set(id, onResult);
    await daemon.send({ type: 'backup-request', id });
  }

  /** The daemon refused or failed a backup request. */
  requestFailed(id: number, err: BarmanError): boolean {
    const cb = this.requests.get(id);
    if (!cb) return false;
    this.requests.delete(id);
    cb(err);
    return true;
  }

  async beginBackup(owner: Peer, start: BackupStart, requestId: number | undefined, canCompress: readonly WireCompression[] = []): Promise<BackupInfo> {
    this.writable();
    if (this.running) throw new BarmanError(ErrorCode.BACKUP_IN_PROGRESS, `backup ${this.running.backupId} of ${this.config.name} is still running`, 'Wait for it to finish, then start another.');
    const placeholder: RunningBackup = { backupId: '', manifest: [], owner, startedAt: Date.now(), files: 0, bytes: 0 };
    this.running = placeholder; // claimed before the first await: two begins cannot interleave
    try {
      const info = await this.backups.begin(start, canCompress);
      this.running = { ...placeholder, backupId: info.backupId };
      this.notify(info);
      if (requestId !== undefined) {
        const cb = this.requests.get(requestId);
        this.requests.delete(requestId);
        cb?.(info);
      }
      return info;
    } catch (err) {
      if (this.running === placeholder) this.running = undefined;
      if (requestId !== undefined && err instanceof BarmanError) this.requestFailed(requestId, err);
      throw err;
    }
  }

  async backupFile(owner: Peer, backupId: string, path: string, size: number, mtime: number): Promise<Upload> {
    const running = this.ownRunning(owner, backupId);
    const upload = await this.backups.beginFile(backupId, path, size, mtime, running.manifest);
    return {
      label: upload.label,
      write: async (chunk) => {
        await upload.write(chunk);
        running.bytes += chunk.length;
      },
      finish: async (sha256, crc32c) => {
        const status = await upload.finish(sha256, crc32c);
        running.files++;
        return status;
      },
      abort: () => upload.abort(),
    };
  }

  /** The agent's walk found this much to send. A backup no longer running here is left alone. */
  backupTotal(owner: Peer, backupId: string, files: number, bytes: number): void {
    const running = this.running;
    if (running && running.backupId === backupId && running.owner.id === owner.id) running.total = { files, bytes };
  }

  /** How far backup `backupId` is: live while its files arrive, final once they are all in. */
  backupProgress(backupId: string): BackupProgress | undefined {
    const running = this.running;
    if (running && running.backupId === backupId) return progressOf(running);
    return this.filesDone?.backupId === backupId ? this.filesDone : undefined;
  }

  async endBackup(owner: Peer, backupId: string, stop: BackupStop): Promise<BackupInfo> {
    const running = this.ownRunning(owner, backupId);
    this.writable();
    try {
      const info = await this.backups.end(backupId, stop, running.manifest);
      this.filesDone = progressOf(running);
      this.running = undefined;
      this.waitingGeneration++;
      this.notify(info);
      await this.walStored();
      return (await this.backups.read(backupId)) ?? info;
    } catch (err) {
      this.running = undefined;
      await this.backups.fail(backupId, err instanceof Error ? err.message : String(err));
      await this.readAndNotify(backupId);
      throw err;
    }
  }

  async abortBackup(owner: Peer, backupId: string, reason: string): Promise<void> {
    this.ownRunning(owner, backupId);
    this.running = undefined;
    await this.backups.fail(backupId, reason);
    await this.readAndNotify(backupId);
  }

  /**
   * A WAL file was archived: backups waiting for it may now be DONE. Reading every backup.info
   * happens only while some backup may be WAITING_FOR_WALS, not for every segment archived.
   */
  async walStored(): Promise<void> {
    if (this.fenced) return;
    if (this.noneWaitingAt === this.waitingGeneration) return;
    const generation = this.waitingGeneration;
    const { promoted, stillWaiting } = await this.backups.promoteComplete();
    for (const info of promoted) this.notify(info);
    // a backup that ended meanwhile bumped the generation: it is looked at next time
    if (stillWaiting === 0) this.noneWaitingAt = generation;
  }

  /** what a catalog change must carry (receiver/catalog/catalog.ts writeChangeKey); set while serving */
  private changeKey: Buffer | undefined;

  /** Serve holds the catalog now: a fresh key for changes, readable on this host only. */
  async openForChanges(): Promise<void> {
    const key = randomBytes(32);
    await this.catalog.writeChangeKey(key.toString('hex'));
    this.changeKey = key;
  }

  async closeForChanges(): Promise<void> {
    this.changeKey = undefined;
    await this.catalog.removeChangeKey();
  }

  /** A change the DBA asked for (keep, delete, cron), made by this service as the catalog's one writer. */
  changeCatalog(change: CatalogChange, key: string): Promise<BackupInfo | CronReport> {
    if (this.fenced) return Promise.reject(this.fenced);
    const refused = this.refuseWithoutKey(key, 'a catalog change');
    if (refused) return Promise.reject(refused);
    return this.asWriter(() => applyCatalogChange(this.config, this.backups, this.walArchive, change));
  }

  /** The key check of changeCatalog: an agent's token opens an admin session, never a change. */
  private refuseWithoutKey(key: string, what: string): BarmanError | undefined {
    const given = Buffer.from(key, 'hex');
    if (this.changeKey && given.length === this.changeKey.length && timingSafeEqual(given, this.changeKey)) return undefined;
    return new BarmanError(ErrorCode.AUTH_FAILED, `${what} for ${this.config.name} came without the key this receiver keeps in barman_home`, 'keep, delete, cron and drill are run on the backup host, by a user that can read barman_home; an agent cannot change the catalog.');
  }

  /** Runs a change of the catalog after the ones before it (one writer, one change at a time); its metrics follow. */
  private asWriter<T>(change: () => Promise<T>): Promise<T> {
    return this.changes
      .run(() => {
        this.writable();
        return change();
      })
      .finally(() => this.emit({ kind: 'catalog-changed' }));
  }

  /** serve's housekeeping: what `cron` does (retention, stale temporary files), by the same code, as the catalog's writer. */
  housekeep(now = new Date()): Promise<CronReport> {
    return this.asWriter(async () => (await applyCatalogChange(this.config, this.backups, this.walArchive, { action: 'cron' }, now)) as CronReport);
  }

  /** A drill the DBA asked for over an admin connection (`drill` while serve runs), with the key of barman_home. */
  requestDrill(options: DrillRequest, key: string): Promise<DrillRecord> {
    const refused = this.refuseWithoutKey(key, 'a drill');
    if (refused) return Promise.reject(refused);
    return this.drill(options);
  }

  /**
   * Runs a restore drill (one at a time per server; the runner also takes turns with other
   * servers') and records its outcome as the catalog's writer. The drill itself only reads the
   * catalog, so WAL and backups keep arriving meanwhile.
   */
  async drill(options: DrillRequest): Promise<DrillRecord> {
    if (!this.drillRunner) throw new BarmanError(ErrorCode.INTERNAL, 'this service runs no drills', 'Run barman-receiver drill on the backup host.');
    if (this.drilling) throw new BarmanError(ErrorCode.BACKUP_IN_PROGRESS, `a restore drill of ${this.config.name} is already running`, 'Wait for it to finish (barman-receiver status shows the last drill), then run another.');
    const run = this.drillRunner(options);
    this.drilling = run;
    try {
      const record = await run;
      await this.asWriter(() => this.catalog.recordDrill(record));
      return record;
    } finally {
      this.drilling = undefined;
    }
  }

  get drillRunning(): boolean {
    return this.drilling !== undefined;
  }

  // ---- what metrics follow ----------------------------------------------------------------------

  onEvent(listener: (event: ServerEvent) => void): () => void {
    this.eventListeners.add(listener);
    return () => this.eventListeners.delete(listener);
  }

  private emit(event: ServerEvent): void {
    for (const l of [...this.eventListeners]) {
      try {
        l(event);
      } catch (err) {
        this.log.warn({ err: String(err) }, 'a metrics listener failed');
      }
    }
  }

  /** A segment was archived (pushed or streamed, `bytes` its plain size): counted, and backups waiting for it may be DONE. */
  async walArchived(name: string, bytes: number): Promise<void> {
    this.emit({ kind: 'wal-archived', name, bytes });
    await this.walStored();
  }

  /** Archiving WAL failed here (a push refused, a stream that could not be written): counted by its error code. */
  archiveFailed(err: unknown): void {
    this.emit({ kind: 'archive-failed', reason: err instanceof BarmanError ? err.code : ErrorCode.INTERNAL });
  }

  /** An agent refused `file` as it was sent, and its stored copy, read back, was `found`: counted. */
  fileRefused(file: RefusedFile, found: StoredCopyFound): void {
    this.emit({ kind: 'file-refused', file, found });
  }

  // ---- PostgreSQL, asked through the daemon -----------------------------------------------------

  /**
   * Asks the connected daemon what PostgreSQL says now (settings, system identifier, slot; with
   * `switchWal`, after a forced WAL switch). Answers within `timeoutMs` or fails.
   */
  async probePostgres(switchWal: boolean, timeoutMs: number): Promise<PgProbeFrame> {
    const daemon = this.daemon;
    if (!daemon) {
      throw new BarmanError(ErrorCode.AGENT_NOT_CONNECTED, `no agent daemon of server ${this.config.name} is connected, so PostgreSQL cannot be asked`, 'Start one on the PostgreSQL host: barman-agent daemon (systemctl start barman-agent).');
    }
    const id = nextRequestId++;
    return new Promise<PgProbeFrame>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.probes.delete(id);
        reject(new BarmanError(ErrorCode.TIMEOUT, `the agent daemon of ${this.config.name} did not answer about PostgreSQL within ${Math.round(timeoutMs / 1000)} s`, 'Look at the daemon\'s log on the PostgreSQL host; an older barman-agent does not answer this request.'));
      }, timeoutMs);
      this.probes.set(id, (result) => {
        clearTimeout(timer);
        this.probes.delete(id);
        if (result instanceof BarmanError) reject(result);
        else resolve(result);
      });
      daemon.send({ type: 'pg-probe-request', id, switchWal }).catch((err: unknown) => this.probes.get(id)?.(asBarmanError(err)));
    });
  }

  /** The daemon's answer to a probe; false when it answers nothing this service asked (or from another session). */
  probeAnswered(from: Peer, frame: PgProbeFrame | { id: number; error: BarmanError }): boolean {
    const cb = this.probes.get(frame.id);
    if (!cb || this.daemon?.id !== from.id) return false;
    cb('error' in frame ? frame.error : frame);
    return true;
  }

  /** The backup in progress, if any. */
  get runningBackup(): string | undefined {
    return this.running?.backupId || undefined;
  }

  onBackupChange(listener: BackupListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private ownRunning(owner: Peer, backupId: string) {
    const running = this.running;
    if (!running || running.backupId !== backupId || running.owner.id !== owner.id) {
      throw new BarmanError(ErrorCode.BACKUP_FAILED, `backup ${backupId} is not running in this session`, 'Start a new backup; an interrupted one cannot be resumed.');
    }
    return running;
  }

  private async readAndNotify(backupId: string): Promise<void> {
    const info = await this.backups.read(backupId).catch(() => undefined);
    if (info) this.notify(info);
  }

  private notify(info: BackupInfo): void {
    this.emit({ kind: 'catalog-changed' });
    for (const l of [...this.listeners]) l(info);
  }
}

function tooManyHint(server: string): string {
  return `Something on the PostgreSQL host of ${server} opens sessions and keeps them busy (stuck barman-agent processes, or a script that connects in a loop): find and stop it (ps -ef | grep barman-agent), then retry.`;
}

function progressOf(r: RunningBackup): BackupProgress {
  return { backupId: r.backupId, files: r.files, bytes: r.bytes, elapsedMs: Date.now() - r.startedAt, ...(r.total ? { totalFiles: r.total.files, totalBytes: r.total.bytes } : {}) };
}
