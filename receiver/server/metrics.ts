// What `GET /metrics` answers (Prometheus text format, made by prom-client), per server (label
// `server`): WAL arriving and the live RPO (stream-health.ts works it out, as for `status`),
// archive counters, files an agent refused, backups, the catalog's size at rest and the last restore drill.
//
// Counters count what this process saw (they start at 0 with it, as Prometheus expects of a
// counter); gauges come from the catalog, so they are right after a restart. A scrape walks
// nothing: the last WAL's arrival, the backups and the last drill are kept here and refreshed
// when the server context says they changed; the catalog's size at rest is a walk made in the
// background at start, after a change (at most once a minute for WAL alone) and every 10 minutes.

import { Counter, Gauge, Registry } from 'prom-client';
import type { Logger } from 'pino';
import { BACKUP_STATUSES, type BackupInfo } from '../../shared/backup/info';
import { Turns } from '../../shared/turns';
import type { DrillRecord } from '../catalog/catalog';
import type { ServerContext, ServerEvent } from './context';
import { liveProtection, type Protection } from './stream-health';

/** a change of backups or retention is walked this soon after (debounced) */
const WALK_AFTER_CHANGE_MS = 1000;
/** new WAL alone is walked at most this often */
const WALK_AFTER_WAL_MS = 60_000;
/** and the whole catalog this often anyway (something outside the service may have changed it) */
const WALK_EVERY_MS = 10 * 60_000;

interface Snapshot {
  server: string;
  lastWalAt: Date | undefined;
  agentConnected: boolean;
  protection: Protection;
  /** undefined when the catalog could not be read */
  backups: BackupInfo[] | undefined;
  lastDrill: DrillRecord | undefined;
  catalogBytes: number | undefined;
}

const seconds = (ms: number) => Math.max(0, ms / 1000);

/** What the metrics keep of one server between scrapes. */
class ServerWatch {
  private lastWalAt: Date | undefined;
  private backups: Promise<BackupInfo[]> | undefined;
  private lastDrill: Promise<DrillRecord | undefined> | undefined;
  private catalogBytes: number | undefined;
  private lastWalk = 0;
  private walkTimer: NodeJS.Timeout | undefined;
  private walkDue = 0;
  private walking: Promise<void> | undefined;
  private walkAgain = false;
  private stopped = false;
  private readonly unsubscribe: () => void;

  constructor(readonly ctx: ServerContext, private readonly counters: { segments: Counter<'server'>; bytes: Counter<'server'>; failures: Counter<'server' | 'reason'>; refused: Counter<'server' | 'file' | 'found'> }, private readonly log: Logger) {
    const server = ctx.config.name;
    // present from the start at 0, so rate() sees the first archived segment, and increase() the first damaged copy
    counters.segments.inc({ server }, 0);
    counters.bytes.inc({ server }, 0);
    for (const file of ['wal', 'backup-file']) counters.refused.inc({ server, file, found: 'damaged' }, 0);
    this.unsubscribe = ctx.onEvent((e) => this.onEvent(e));
  }

  async start(): Promise<void> {
    this.lastWalAt ??= (await this.ctx.catalog.lastSegment().catch(() => undefined))?.receivedAt;
    this.scheduleWalk(0);
  }

  stop(): void {
    this.stopped = true;
    this.unsubscribe();
    clearTimeout(this.walkTimer);
  }

  private onEvent(e: ServerEvent): void {
    const server = this.ctx.config.name;
    switch (e.kind) {
      case 'wal-archived':
        this.lastWalAt = new Date();
        this.counters.segments.inc({ server });
        this.counters.bytes.inc({ server }, e.bytes);
        this.scheduleWalk(Math.max(WALK_AFTER_CHANGE_MS, this.lastWalk + WALK_AFTER_WAL_MS - Date.now()));
        return;
      case 'archive-failed':
        this.counters.failures.inc({ server, reason: e.reason });
        return;
      case 'file-refused':
        this.counters.refused.inc({ server, file: e.file, found: e.found });
        return;
      case 'catalog-changed':
        this.backups = undefined;
        this.lastDrill = undefined;
        this.scheduleWalk(WALK_AFTER_CHANGE_MS);
    }
  }

  /** The catalog's size at rest is walked `delayMs` from now (or sooner, when already due sooner). */
  private scheduleWalk(delayMs: number): void {
    if (this.stopped) return;
    const due = Date.now() + delayMs;
    if (this.walkTimer && this.walkDue <= due) return;
    clearTimeout(this.walkTimer);
    this.walkDue = due;
    this.walkTimer = setTimeout(() => {
      this.walkTimer = undefined;
      void this.walk();
    }, delayMs);
    this.walkTimer.unref();
  }

  private async walk(): Promise<void> {
    if (this.walking) {
      this.walkAgain = true;
      return;
    }
    this.walking = (async () => {
      try {
        this.catalogBytes = await this.ctx.catalog.bytesAtRest();
      } catch (err) {
        this.log.warn({ server: this.ctx.config.name, err: String(err) }, 'cannot measure the catalog for metrics');
      }
      this.lastWalk = Date.now();
    })();
    await this.walking;
    this.walking = undefined;
    if (this.walkAgain) {
      this.walkAgain = false;
      this.scheduleWalk(WALK_AFTER_CHANGE_MS);
    } else {
      this.scheduleWalk(WALK_EVERY_MS);
    }
  }

  /** What this server's gauges say now. A catalog that cannot be read leaves its gauges out (logged), never the other servers'. */
  async snapshot(now: Date): Promise<Snapshot> {
    const { ctx } = this;
    const unreadable = (what: string) => (err: unknown) => {
      this.log.warn({ server: ctx.config.name, err: String(err) }, `cannot read the ${what} for metrics`);
      return undefined;
    };
    this.backups ??= ctx.backups.list();
    this.lastDrill ??= ctx.catalog.drills().then((d) => d[d.length - 1]);
    const backups = await this.backups.catch((err: unknown) => {
      this.backups = undefined;
      return unreadable('backups')(err);
    });
    const lastDrill = await this.lastDrill.catch((err: unknown) => {
      this.lastDrill = undefined;
      return unreadable('restore drills')(err);
    });
    const agentConnected = ctx.daemon !== undefined;
    const streamInUse = (await ctx.catalog.streamingRecord().catch(() => undefined)) !== undefined;
    const streaming = ctx.streamingState(now);
    // WAL received: a segment archived, or streamed WAL flushed (a quiet streamed server fills a segment slowly)
    const flushed = streaming.lastFlushAt ? new Date(streaming.lastFlushAt) : undefined;
    const lastWalAt = flushed && (!this.lastWalAt || flushed > this.lastWalAt) ? flushed : this.lastWalAt;
    return {
      server: ctx.config.name,
      lastWalAt,
      agentConnected,
      protection: liveProtection(now, { streaming, agentConnected, streamInUse, lastArchivedAt: this.lastWalAt }),
      backups,
      lastDrill,
      catalogBytes: this.catalogBytes,
    };
  }
}

export class ReceiverMetrics {
  private readonly registry = new Registry();
  private readonly watches: ServerWatch[];
  /** scrapes answered one after the other: each sets every gauge from its own snapshot */
  private readonly rendering = new Turns();
  private readonly gauges;

  constructor(contexts: ServerContext[], log: Logger) {
    const registers = [this.registry];
    const gauge = <L extends string>(name: string, help: string, labelNames: L[]) => new Gauge<L>({ name, help, labelNames, registers });
    const counter = <L extends string>(name: string, help: string, labelNames: L[]) => new Counter<L>({ name, help, labelNames, registers });
    const counters = {
      segments: counter('barman_archived_segments_total', 'WAL segments archived (pushed or streamed) since the service started', ['server']),
      bytes: counter('barman_archived_bytes_total', 'Plain bytes of the WAL segments archived since the service started', ['server']),
      failures: counter('barman_archive_failures_total', 'WAL files that could not be archived since the service started, by error code', ['server', 'reason']),
      refused: counter('barman_refused_files_total', 'Catalog files an agent refused as it was sent them since the service started, by file (wal, backup-file) and what reading the stored copy back found (damaged, intact, unchecked, gone)', ['server', 'file', 'found']),
    };
    this.gauges = {
      lastWalAge: gauge('barman_last_wal_received_age_seconds', 'Seconds since WAL last arrived: a segment archived, or streamed WAL flushed', ['server']),
      rpoSeconds: gauge('barman_rpo_seconds', 'What a loss of the primary now would cost, in seconds of WAL (0 while streaming is caught up)', ['server']),
      rpoBytes: gauge('barman_rpo_bytes', 'What a loss of the primary now would cost, in bytes of WAL PostgreSQL sent that are not flushed here', ['server']),
      lagBytes: gauge('barman_streaming_lag_bytes', 'WAL PostgreSQL has sent that the receiver has not flushed yet', ['server']),
      streamingUp: gauge('barman_streaming_up', '1 while WAL streaming is heard from, 0 otherwise (off, stale or disconnected)', ['server']),
      agentConnected: gauge('barman_agent_connected', '1 while the server\'s agent daemon is connected', ['server']),
      backups: gauge('barman_backups', 'Backups in the catalog by status', ['server', 'status']),
      lastBackupAge: gauge('barman_last_backup_age_seconds', 'Seconds since the newest DONE backup ended', ['server']),
      lastBackupSize: gauge('barman_last_backup_size_bytes', 'Bytes of the newest DONE backup\'s files', ['server']),
      lastBackupDuration: gauge('barman_last_backup_duration_seconds', 'How long the newest DONE backup took, from its start to its end', ['server']),
      catalogBytes: gauge('barman_catalog_bytes', 'Bytes the server\'s catalog takes at rest', ['server']),
      drillSuccess: gauge('barman_last_drill_success', '1 when the last restore drill passed, 0 when it failed', ['server']),
      drillTimestamp: gauge('barman_last_drill_timestamp_seconds', 'When the last restore drill started (Unix time)', ['server']),
      drillRto: gauge('barman_last_drill_rto_seconds', 'Seconds the last restore drill took from the start of the restore to a ready, checked cluster', ['server']),
    };
    this.watches = contexts.map((ctx) => new ServerWatch(ctx, counters, log));
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  async start(): Promise<void> {
    for (const w of this.watches) await w.start();
  }

  stop(): void {
    for (const w of this.watches) w.stop();
  }

  /** The text a scrape gets. */
  render(now = new Date()): Promise<string> {
    return this.rendering.run(() => this.renderNow(now));
  }

  private async renderNow(now: Date): Promise<string> {
    const snapshots = await Promise.all(this.watches.map((w) => w.snapshot(now)));
    const g = this.gauges;
    for (const gauge of Object.values(g)) gauge.reset();
    for (const s of snapshots) {
      const server = s.server;
      const set = (gauge: Gauge<'server'>, value: number | null | undefined) => {
        if (value !== null && value !== undefined && Number.isFinite(value)) gauge.set({ server }, value);
      };
      set(g.lastWalAge, s.lastWalAt && seconds(now.getTime() - s.lastWalAt.getTime()));
      set(g.rpoSeconds, s.protection.rpoSeconds);
      set(g.rpoBytes, s.protection.rpoBytes);
      set(g.lagBytes, s.protection.lagBytes);
      set(g.streamingUp, s.protection.state === 'streaming' ? 1 : 0);
      set(g.agentConnected, s.agentConnected ? 1 : 0);
      if (s.backups) for (const status of BACKUP_STATUSES) g.backups.set({ server, status }, s.backups.filter((b) => b.status === status).length);
      const last = s.backups?.filter((b) => b.status === 'DONE').pop();
      if (last) {
        set(g.lastBackupAge, seconds(now.getTime() - Date.parse(last.endTime)));
        set(g.lastBackupSize, last.size);
        set(g.lastBackupDuration, seconds(Date.parse(last.endTime) - Date.parse(last.beginTime)));
      }
      set(g.catalogBytes, s.catalogBytes);
      if (s.lastDrill) {
        set(g.drillSuccess, s.lastDrill.passed ? 1 : 0);
        set(g.drillTimestamp, Date.parse(s.lastDrill.at) / 1000);
        set(g.drillRto, s.lastDrill.rtoSeconds);
      }
    }
    return this.registry.metrics();
  }
}
