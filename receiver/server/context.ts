// What the receiver holds for each configured PostgreSQL server: its catalog, its connected
// agent daemon (at most one), and the backup in progress (at most one), with whoever waits on it.

import type { BackupInfo } from '../../shared/backup/info';
import type { ManifestFile } from '../../shared/backup/manifest';
import type { Compression, ServerConfig } from '../../shared/config/receiver';
import { BarmanError, ErrorCode } from '../../shared/errors';
import type { BackupStart, BackupStop, Frame, StreamOpenFrame, WalDataFrame } from '../../shared/protocol/frames';
import { type Lsn, parseLsn } from '../../shared/wal/lsn';
import type { Logger } from 'pino';
import { WalStream } from '../catalog/streaming';
import { BackupCatalog } from '../catalog/backups';
import { ServerCatalog } from '../catalog/catalog';
import type { Upload } from '../catalog/upload';
import { WalArchive } from '../catalog/wal-archive';

/** The side of a session the server context needs: a way to talk to it and to name it. */
export interface Peer {
  readonly id: string;
  send(frame: Frame): Promise<void>;
  replace(reason: string): void;
}

export type BackupListener = (info: BackupInfo) => void;

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
  private running: { backupId: string; manifest: ManifestFile[]; owner: Peer } | undefined;
  private readonly listeners = new Set<BackupListener>();
  /** bumped when a backup starts waiting for its WAL; walStored skips the catalog while it equals noneWaitingAt */
  private waitingGeneration = 0;
  private noneWaitingAt = -1;
  /** backup requests sent to the daemon, by request id: told the backup's ID, or why it failed */
  private readonly requests = new Map<number, (result: BackupInfo | BarmanError) => void>();

  constructor(barmanHome: string, readonly config: ServerConfig, compression: Compression, log: Logger) {
    this.catalog = new ServerCatalog(barmanHome, config.name);
    this.walArchive = new WalArchive(this.catalog, compression);
    this.backups = new BackupCatalog(this.catalog);
    this.stream = new WalStream(this.catalog, log.child({ server: config.name, component: 'streaming' }));
    this.stream.onSegment = async (name, sha256) => {
      this.onStreamSegment?.(name, sha256);
      await this.walStored();
    };
  }

  /** A daemon starts streaming WAL; answers where to start. Only one stream (the newest daemon's). */
  async openStream(owner: Peer, frame: StreamOpenFrame, onFlushed: (timeline: number, lsn: Lsn) => void, onSegment: (name: string, sha256: string) => void): Promise<Lsn | undefined> {
    this.streamOwner = owner;
    this.stream.onFlushed = onFlushed;
    this.onStreamSegment = onSegment;
    const branch = frame.switchLsn ? { parent: frame.parentTimeline, switchLsn: parseLsn(frame.switchLsn) } : undefined;
    // the stream names and cuts segments by the cluster's segment size: the catalog learns it (or checks it) first
    await this.catalog.learnIdentity({ systemIdentifier: frame.systemIdentifier, segmentSize: frame.segmentSize });
    return this.stream.open(frame.timeline, frame.systemIdentifier, frame.segmentSize, parseLsn(frame.serverLsn), branch);
  }

  async appendStream(owner: Peer, frame: WalDataFrame): Promise<void> {
    if (this.streamOwner?.id !== owner.id) throw new BarmanError(ErrorCode.PROTOCOL, 'WAL data on a session that does not own the stream', 'Restart the agent daemon.');
    await this.stream.append(frame.timeline, parseLsn(frame.startLsn), parseLsn(frame.walEnd), frame.data);
  }

  /** A daemon connected: it becomes the server's agent; an older one is closed (never two writers). */
  attachDaemon(peer: Peer): void {
    const old = this.daemon;
    this.daemon = peer;
    this.daemonSince = new Date();
    if (old && old.id !== peer.id) old.replace('another agent daemon for this server connected');
  }

  detach(peer: Peer): void {
    if (this.streamOwner?.id === peer.id) {
      this.streamOwner = undefined;
      void this.stream.close();
    }
    if (this.daemon?.id === peer.id) {
      this.daemon = undefined;
      this.daemonSince = undefined;
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

  async beginBackup(owner: Peer, start: BackupStart, requestId: number | undefined): Promise<BackupInfo> {
    if (this.running) throw new BarmanError(ErrorCode.BACKUP_IN_PROGRESS, `backup ${this.running.backupId} of ${this.config.name} is still running`, 'Wait for it to finish, then start another.');
    const placeholder = { backupId: '', manifest: [], owner };
    this.running = placeholder; // claimed before the first await: two begins cannot interleave
    try {
      const info = await this.backups.begin(start);
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
    return this.backups.beginFile(backupId, path, size, mtime, running.manifest);
  }

  async endBackup(owner: Peer, backupId: string, stop: BackupStop): Promise<BackupInfo> {
    const running = this.ownRunning(owner, backupId);
    try {
      const info = await this.backups.end(backupId, stop, running.manifest);
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
    if (this.noneWaitingAt === this.waitingGeneration) return;
    const generation = this.waitingGeneration;
    const { promoted, stillWaiting } = await this.backups.promoteComplete();
    for (const info of promoted) this.notify(info);
    // a backup that ended meanwhile bumped the generation: it is looked at next time
    if (stillWaiting === 0) this.noneWaitingAt = generation;
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
    for (const l of [...this.listeners]) l(info);
  }
}
