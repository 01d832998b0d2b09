// Helpers of the daemon section (bench/daemon.ts) that bench/lib.ts does not have: programs run
// as the postgres OS user in the background (the agent daemon, pgbench) until the section ends
// them, SQL sessions held open by the bench process itself (for timing single commits and polling
// pg_stat_replication at millisecond resolution), a recovered copy started on a socket of its own,
// and small measurements of the machine (CPU busy share, archive_status backlog, percentiles).

import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { createWriteStream, existsSync, readdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import pg from 'pg';
import { type BenchReceiver, type Cleanup, now, postgresAgentConfig, postgresDir, runOk, sleep } from './lib';

function postgresIds(): { uid: number; gid: number } {
  const id = (flag: string) => Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8' }).trim());
  return { uid: id('-u'), gid: id('-g') };
}

/**
 * A program left running (as postgres when asked: spawned with its uid/gid, so the pid is the
 * program's own and signals reach it directly), its stdout and stderr kept; stopped by `cleanup`.
 */
export class Background {
  private text = '';
  private readonly child: ChildProcess;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  /** `logFile`: everything it prints is also appended there (kept with KEEP_TMP=1, for a post-mortem) */
  constructor(file: string, args: string[], options: { cwd: string; asPostgres?: boolean; cleanup: Cleanup; what: string; logFile?: string }) {
    const ids = options.asPostgres ? postgresIds() : {};
    const env = options.asPostgres ? { ...process.env, HOME: options.cwd, USER: 'postgres', LOGNAME: 'postgres' } : process.env;
    this.child = spawn(file, args, { cwd: options.cwd, env, stdio: ['ignore', 'pipe', 'pipe'], ...ids });
    const logStream = options.logFile ? createWriteStream(options.logFile, { flags: 'a' }) : undefined;
    const keep = (b: Buffer) => {
      logStream?.write(b);
      this.text += b.toString('utf8');
      if (this.text.length > 4_000_000) this.text = this.text.slice(-2_000_000);
    };
    this.child.stdout!.on('data', keep);
    this.child.stderr!.on('data', keep);
    this.exited = new Promise((resolve) => this.child.once('close', (code, signal) => {
      logStream?.end();
      resolve({ code, signal });
    }));
    options.cleanup.add(`stop ${options.what} (pid ${this.child.pid})`, () => this.stop('SIGKILL').then(() => undefined));
  }

  get pid(): number {
    return this.child.pid!;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  output(): string {
    return this.text;
  }

  /** Sends `signal` (SIGKILL after `graceMs`) and waits for the exit. */
  async stop(signal: NodeJS.Signals = 'SIGTERM', graceMs = 15_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.running) {
      this.child.kill(signal);
      const killer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
      const result = await this.exited;
      clearTimeout(killer);
      return result;
    }
    return this.exited;
  }

  /** Waits until a line of its output matches `re`; fails when it exits first or after `timeoutMs`. */
  async waitForLine(re: RegExp, timeoutMs: number, after = 0): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hits = this.text.split('\n').filter((l) => re.test(l));
      if (hits.length > after) return hits.at(-1)!;
      if (!this.running) throw new Error(`exited before printing ${re}:\n${this.text.slice(-4000)}`);
      if (Date.now() > deadline) throw new Error(`no ${re} within ${timeoutMs / 1000} s:\n${this.text.slice(-4000)}`);
      await sleep(50);
    }
  }
}

/**
 * `barman-agent daemon -c <conf>` as a DBA runs it: the installed launcher (dist/barman-agent),
 * which execs Node with the daemon's settings (one malloc arena, a small young generation); or,
 * given `profileDir`, Node itself on the bundle under --cpu-prof, without those settings.
 */
export function startAgentDaemon(repoRoot: string, conf: string, options: ConstructorParameters<typeof Background>[2], profileDir?: string): Background {
  const dist = join(repoRoot, 'dist');
  return profileDir
    ? new Background(process.execPath, ['--cpu-prof', `--cpu-prof-dir=${profileDir}`, join(dist, 'barman-agent.cjs'), 'daemon', '-c', conf], options)
    : new Background(join(dist, 'barman-agent'), ['daemon', '-c', conf], options);
}

/** A SQL session of the bench process itself (as the postgres role, over a unix socket folder); ended by `cleanup`. */
export async function sqlSession(socketDir: string, port: number, cleanup: Cleanup, what: string): Promise<pg.Client> {
  const client = new pg.Client({ host: socketDir, port, user: 'postgres', database: 'postgres', application_name: `bench ${what}` });
  client.on('error', () => undefined); // the server going away (an immediate stop) is expected
  await client.connect();
  cleanup.add(`end SQL session ${what}`, () => client.end().catch(() => undefined));
  return client;
}

/** One value of a one-row query. */
export async function value<T = string>(client: pg.Client, sql: string, params: unknown[] = []): Promise<T> {
  const row = (await client.query(sql, params)).rows[0] as Record<string, T> | undefined;
  if (!row) throw new Error(`no row from: ${sql}`);
  return Object.values(row)[0]!;
}

/**
 * A data directory written by `recover`, started as postgres on its own socket folder (`pg_ctl -o
 * "-p port -k dir"`, nothing added to the directory) until recovery ended and it was promoted;
 * stopped by `cleanup` or its `stop()`.
 */
export async function startRecoveredCopy(pgBin: string, pgdata: string, dir: string, port: number, cleanup: Cleanup, timeoutMs = 600_000): Promise<{ ms: number; sql: pg.Client; stop: () => Promise<void> }> {
  const socket = postgresDir(join(dir, 'copy-socket'));
  const log = join(dir, 'copy.log');
  const pgCtl = join(pgBin, 'pg_ctl');
  let sql: pg.Client | undefined;
  const stop = async () => {
    await sql?.end().catch(() => undefined);
    if (existsSync(join(pgdata, 'postmaster.pid'))) await runOk(pgCtl, ['-D', pgdata, '-m', 'immediate', '-w', 'stop'], { asPostgres: true, cwd: dir });
  };
  cleanup.add(`stop recovered copy ${pgdata}`, stop);
  const started = now();
  await runOk(pgCtl, ['-D', pgdata, '-l', log, '-o', `-p ${port} -k ${socket} -c listen_addresses=''`, '-w', '-t', String(timeoutMs / 1000), 'start'], { asPostgres: true, cwd: dir }).catch((err: Error) => {
    throw new Error(`${err.message}\n--- ${log}\n${existsSync(log) ? readFileSync(log, 'utf8').slice(-4000) : ''}`);
  });
  for (;;) {
    if (!sql) sql = await sqlSession(socket, port, cleanup, 'recovered copy').catch(() => undefined);
    if (sql && (await value<boolean>(sql, 'select pg_is_in_recovery()').catch(() => true)) === false) break;
    if (now() - started > timeoutMs) throw new Error(`${pgdata}: not promoted after ${timeoutMs / 1000} s; see ${log}`);
    await sleep(20);
  }
  return { ms: now() - started, sql, stop };
}

/**
 * A TCP port free on 127.0.0.1 now. The receiver's catalog commands (status, backup) reach the
 * service at the `listen` of its configuration, so that must name the real port, not 0.
 */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/** The last `lines` lines of a text file that match `re` ('' when there is no such file). */
export function tailMatching(path: string, re: RegExp, lines = 20): string {
  if (!existsSync(path)) return '';
  return readFileSync(path, 'utf8').split('\n').filter((l) => re.test(l)).slice(-lines).join('\n');
}

/** .ready files in PostgreSQL's archive_status: segments waiting for archive_command. */
export function readyCount(pgdata: string): number {
  return readdirSync(join(pgdata, 'pg_wal', 'archive_status')).filter((n) => n.endsWith('.ready')).length;
}

/** Busy share of all CPUs between two readings of /proc/stat. */
export class CpuBusy {
  private readonly start = CpuBusy.read();

  private static read(): { busy: number; total: number } {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    const idle = f[3]! + f[4]!; // idle + iowait
    const total = f.slice(0, 8).reduce((a, b) => a + b, 0); // user .. steal (guest time is inside user)
    return { busy: total - idle, total };
  }

  /** 0..1 since construction */
  share(): number {
    const end = CpuBusy.read();
    return (end.busy - this.start.busy) / Math.max(1, end.total - this.start.total);
  }
}

/** Nearest-rank percentile (p in 0..100); NaN without samples. */
export function percentile(samples: number[], p: number): number {
  if (samples.length === 0) return Number.NaN;
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

/**
 * The agent configuration of a bench cluster in `clusterDir` (BenchCluster: socket/, pgdata/, port
 * 5432) for `barman-agent daemon` with streaming on through slot barman_<server>.
 */
export function streamingAgentConfig(receiver: BenchReceiver, agentDir: string, clusterDir: string, server: string, values: Record<string, string> = {}): string {
  return postgresAgentConfig(receiver, agentDir, server, {
    conninfo: `host=${join(clusterDir, 'socket')} port=5432 user=postgres dbname=postgres`,
    pgdata: join(clusterDir, 'pgdata'),
    streaming: 'on',
    slot_name: `barman_${server}`,
    create_slot: 'auto',
    log_level: 'info',
    ...values,
  });
}
