// Asynchronous archiving: the daemon watches pg_wal/archive_status/ for .ready files (chokidar;
// not pg_wal/ itself, where PostgreSQL recycles segments by renaming them) and pushes those
// segments ahead of PostgreSQL, a few at once, over its one connection. Each durable ack goes
// into the spool, so PostgreSQL's own `barman-agent push` finds it and returns at once.

import { join } from 'node:path';
import type { Logger } from 'pino';
import { asBarmanError } from '../../shared/errors';
import type { AgentConnection } from '../../shared/protocol/client';
import { parseWalFileName } from '../../shared/wal/names';
import type { AckSpool } from './spool';

const PARALLEL_PUSHES = 4;
/** re-scan for .ready files now and then: a missed event must not stall archiving */
const RESCAN_MS = 10_000;

export class AsyncArchiver {
  private conn: AgentConnection | undefined;
  private readonly pending = new Set<string>();
  private readonly running = new Set<string>();
  private watcher: { close(): Promise<void> } | undefined;
  private rescanTimer: NodeJS.Timeout | undefined;
  pushed = 0;

  constructor(private readonly pgdata: string, private readonly spool: AckSpool, private readonly log: Logger) {}

  private get statusDir(): string {
    return join(this.pgdata, 'pg_wal', 'archive_status');
  }

  async start(): Promise<void> {
    await this.spool.ensure();
    const { watch } = await import('chokidar');
    const watcher = watch(this.statusDir, { depth: 0, ignoreInitial: false });
    watcher.on('add', (path: string) => this.onReady(path));
    watcher.on('error', (err: unknown) => this.log.warn({ err: String(err) }, 'watching archive_status failed'));
    this.watcher = watcher;
    this.rescanTimer = setInterval(() => this.rescan().catch((err: unknown) => this.log.warn({ err: String(err) }, 'rescanning archive_status failed')), RESCAN_MS);
    this.rescanTimer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.rescanTimer);
    await this.watcher?.close();
  }

  /** The daemon's connection came up (or went away: undefined). */
  attach(conn: AgentConnection | undefined): void {
    this.conn = conn;
    if (conn) this.pump();
  }

  private onReady(path: string): void {
    const m = /([^/]+)\.ready$/.exec(path);
    if (!m || !parseWalFileName(m[1]!)) return;
    this.pending.add(m[1]!);
    this.pump();
  }

  private async rescan(): Promise<void> {
    const { readdir } = await import('node:fs/promises');
    for (const f of await readdir(this.statusDir).catch(() => [] as string[])) this.onReady(join(this.statusDir, f));
    // acks PostgreSQL has used (its .done exists) are no longer needed
    const done = new Set((await readdir(this.statusDir).catch(() => [] as string[])).filter((f) => f.endsWith('.done')).map((f) => f.slice(0, -5)));
    for (const name of await this.spool.list()) if (done.has(name)) await this.spool.remove(name);
  }

  private pump(): void {
    const conn = this.conn;
    if (!conn) return;
    // history files first, then oldest segments: the order PostgreSQL itself archives in
    const order = [...this.pending].filter((n) => !this.running.has(n)).sort((a, b) => Number(b.endsWith('.history')) - Number(a.endsWith('.history')) || a.localeCompare(b));
    for (const name of order) {
      if (this.running.size >= PARALLEL_PUSHES) return;
      this.pending.delete(name);
      this.running.add(name);
      void this.pushOne(conn, name).finally(() => {
        this.running.delete(name);
        this.pump();
      });
    }
  }

  private async pushOne(conn: AgentConnection, name: string): Promise<void> {
    if (await this.spool.lookup(name)) return;
    try {
      const ack = await conn.putFile({ kind: 'wal', name }, join(this.pgdata, 'pg_wal', name));
      if (!ack) return;
      await this.spool.record(name, ack.sha256);
      this.pushed++;
      this.log.debug({ wal: name, status: ack.status }, 'WAL pushed ahead of PostgreSQL');
    } catch (err) {
      const e = asBarmanError(err);
      // a segment already archived by PostgreSQL (and recycled) is gone: nothing to do
      if (e.code === 'LOCAL_FILE') return;
      this.log.warn({ wal: name, code: e.code }, `async push failed: ${e.message}`);
      // PostgreSQL's own push will retry it; the next rescan picks it up again too
    }
  }
}
