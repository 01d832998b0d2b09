// What every benchmark section shares: wall-clock timing of whole programs, summary statistics,
// a throwaway PostgreSQL cluster run by the postgres OS user, a real receiver service, and a
// cleanup list that stops every process and removes every temp folder, pass or fail.
// The test harness (test/harness/) does the same jobs inside vitest; this runs without it.

import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createWriteStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import { type OpenServer, openCatalogStorage, serverOn } from '../receiver/catalog/open';
import { readStoredWal } from '../receiver/catalog/wal-archive';
import type { BackupInfo } from '../shared/backup/info';
import { loadReceiverConfig } from '../shared/config/receiver';

// ---- sections --------------------------------------------------------------------------------

/** What run.ts hands every section. */
export interface BenchContext {
  /** the run's temp folder; everything a section writes goes below it (one disk) */
  workDir: string;
  /** PostgreSQL's bin folder (README: $PG_BINDIR, pg_config --bindir, newest /usr/lib/postgresql/<version>/bin) */
  pgBin: string;
  /** the checkout, with dist/ freshly built */
  repoRoot: string;
  cleanup: Cleanup;
  log: (line: string) => void;
}

/** One section of bench/results.md. */
export interface SectionResult {
  title: string;
  markdown: string;
}

// ---- cleanup ---------------------------------------------------------------------------------

/** Things to undo at the end of the run, newest first. */
export class Cleanup {
  private readonly steps: Array<{ what: string; undo: () => Promise<void> | void }> = [];

  add(what: string, undo: () => Promise<void> | void): void {
    this.steps.push({ what, undo });
  }

  async runAll(log: (line: string) => void): Promise<void> {
    while (this.steps.length > 0) {
      const step = this.steps.pop()!;
      try {
        await step.undo();
      } catch (err) {
        log(`cleanup: ${step.what} failed: ${(err as Error).message}`);
      }
    }
  }
}

// ---- running programs ------------------------------------------------------------------------

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
/** the bench clock, ms */
export const now = (): number => Number(process.hrtime.bigint()) / 1e6;

export interface RunResult {
  stdout: string;
  stderr: string;
  /** spawn to exit */
  ms: number;
  /** every line the program wrote to stderr (split at \n and \r), with when it arrived (ms after spawn) */
  stderrLines: Array<{ ms: number; text: string }>;
}

/**
 * Runs a program to completion (as the postgres OS user through runuser when asked) and times it
 * from spawn to exit. Throws, with what it printed, unless it exits 0.
 */
export async function runOk(file: string, args: string[], options: { cwd?: string; asPostgres?: boolean; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  const [cmd, argv] = options.asPostgres ? ['runuser', ['-u', 'postgres', '--', file, ...args]] : [file, args];
  const started = now();
  const elapsed = () => now() - started;
  const child = spawn(cmd, argv, { cwd: options.cwd, env: options.env, stdio: ['ignore', 'pipe', 'pipe'] });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const stderrLines: RunResult['stderrLines'] = [];
  let partial = '';
  child.stdout!.on('data', (b: Buffer) => out.push(b));
  child.stderr!.on('data', (b: Buffer) => {
    err.push(b);
    const parts = (partial + b.toString('utf8')).split(/[\r\n]/);
    partial = parts.pop()!;
    const ms = elapsed();
    for (const text of parts) if (text.trim()) stderrLines.push({ ms, text });
  });
  const [code, signal] = await new Promise<[number | null, string | null]>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (c, sig) => resolve([c, sig]));
  });
  const ms = elapsed();
  if (partial.trim()) stderrLines.push({ ms, text: partial });
  const stdout = Buffer.concat(out).toString('utf8');
  const stderr = Buffer.concat(err).toString('utf8');
  if (code !== 0) throw new Error(`${[cmd, ...argv].join(' ')} failed (${code ?? signal})\n${stdout}${stderr}`);
  return { stdout, stderr, ms, stderrLines };
}

// ---- statistics ------------------------------------------------------------------------------

export interface Stats {
  n: number;
  median: number;
  p95: number;
  min: number;
  max: number;
  /** sum of all samples: the wall time of a sequential loop */
  total: number;
}

/** Nearest-rank percentile of sorted samples. */
function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

export function stats(samples: number[]): Stats {
  if (samples.length === 0) throw new Error('no samples');
  const sorted = [...samples].sort((a, b) => a - b);
  const mid = sorted.length / 2;
  const median = sorted.length % 2 ? sorted[Math.floor(mid)]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
  return { n: sorted.length, median, p95: percentile(sorted, 95), min: sorted[0]!, max: sorted.at(-1)!, total: sorted.reduce((a, b) => a + b, 0) };
}

export const fmtMs = (ms: number): string => (ms >= 99.95 ? ms.toFixed(0) : ms.toFixed(1));
export const fmtRatio = (r: number): string => `${r.toFixed(2)}×`;
/** megabytes (10^6 bytes) per second */
export const mbPerSecond = (bytes: number, ms: number): number => bytes / 1e6 / (ms / 1000);

export function markdownTable(header: string[], rows: string[][]): string {
  const line = (cells: string[]) => `| ${cells.join(' | ')} |`;
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n');
}

// ---- machine ---------------------------------------------------------------------------------

export function pgBinDir(): string {
  // as README says: $PG_BINDIR, else `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin
  const fromPgConfig = (): string | undefined => {
    try {
      return execFileSync('pg_config', ['--bindir'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    } catch {
      return undefined;
    }
  };
  const root = '/usr/lib/postgresql';
  const newest = existsSync(root)
    ? readdirSync(root).filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a)).map((v) => join(root, v, 'bin'))
    : [];
  const dirs = [process.env.PG_BINDIR, fromPgConfig(), ...newest].filter((d): d is string => Boolean(d));
  const dir = dirs.find((d) => existsSync(join(d, 'initdb')));
  if (!dir) throw new Error(`no initdb in ${dirs.join(', ') || '(no candidates)'}; set PG_BINDIR`);
  return dir;
}

export function loadAverage(): string {
  return readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' / ');
}

/** Bytes free to an unprivileged user on the filesystem holding `path`. */
export function freeBytes(path: string): number {
  const s = statfsSync(path);
  return s.bavail * s.bsize;
}

// ---- processes -------------------------------------------------------------------------------

/** A kB field of /proc/<pid>/status (VmRSS, VmHWM), or undefined once the process is gone. */
export function procStatusKb(pid: number, field: 'VmRSS' | 'VmHWM'): number | undefined {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** CPU seconds (user + system) a process has used so far, from /proc/<pid>/stat. */
export function procCpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // fields after the command name (which may hold spaces) start at the state, field 3
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]); // utime, stime: fields 14 and 15
  return ticks / 100; // USER_HZ is 100 on Linux
}

/**
 * Peak memory of a long-running process over a stretch of time: resets its high-water mark
 * (clear_refs 5, root only) and also samples VmRSS, in case the reset is not allowed.
 */
export class RssWatch {
  private maxKb = 0;
  private readonly timer: NodeJS.Timeout;
  private readonly resetOk: boolean;

  constructor(private readonly pid: number, intervalMs = 100) {
    let ok = true;
    try {
      writeFileSync(`/proc/${pid}/clear_refs`, '5');
    } catch {
      ok = false;
    }
    this.resetOk = ok;
    this.sample();
    this.timer = setInterval(() => this.sample(), intervalMs);
  }

  private sample(): void {
    this.maxKb = Math.max(this.maxKb, procStatusKb(this.pid, 'VmRSS') ?? 0);
  }

  /** Stops sampling; the peak in kB (VmHWM since the reset where it worked, else the sampled maximum). */
  stop(): number {
    clearInterval(this.timer);
    this.sample();
    const hwm = this.resetOk ? procStatusKb(this.pid, 'VmHWM') : undefined;
    return Math.max(this.maxKb, hwm ?? 0);
  }
}

const TIME_BIN = '/usr/bin/time';

/**
 * runOk under GNU time when it is there: adds the program's peak RSS (kB) and CPU seconds.
 * `outDir` must be writable by whoever runs it (postgres when asPostgres).
 */
export async function runMeasured(file: string, args: string[], outDir: string, options: Parameters<typeof runOk>[2] = {}): Promise<RunResult & { peakKb?: number; cpuSeconds?: number }> {
  if (!existsSync(TIME_BIN)) return runOk(file, args, options);
  const out = join(outDir, `time-${randomBytes(4).toString('hex')}.txt`);
  const result = await runOk(TIME_BIN, ['-f', '%M %U %S', '-o', out, file, ...args], options);
  const [kb, user, sys] = readFileSync(out, 'utf8').trim().split('\n').at(-1)!.split(' ').map(Number);
  rmSync(out, { force: true });
  return { ...result, peakKb: kb, cpuSeconds: user! + sys! };
}

export function machineInfo(pgBin: string): Record<string, string> {
  const sh = (cmd: string, args: string[]) => {
    try {
      return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    } catch {
      return '?';
    }
  };
  const cpu = /model name\s*:\s*(.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? '?';
  return {
    date: new Date().toISOString(),
    nproc: sh('nproc', []),
    cpu,
    memory: sh('sh', ['-c', "awk '/MemTotal/ {printf \"%.1f GiB\", $2/1048576}' /proc/meminfo"]),
    'memory touched for the first time / rewritten, µs per 4 KiB page': pageTouchMicros(),
    kernel: sh('uname', ['-sr']),
    // other work on the machine is the main source of noise; this says how much there was
    'load average at start (1/5/15 min)': loadAverage(),
    node: process.version,
    postgresql: sh(join(pgBin, 'postgres'), ['--version']),
  };
}

/**
 * What a page of memory costs the first time a process writes it (the kernel's page fault, and on
 * a virtual machine the hypervisor's work behind it) against writing it again, in µs per 4 KiB
 * page of 64 MiB of anonymous memory: every new process pays the first for each page it touches,
 * Node's start-up included. On the small VM we measure on it was about 100 times the second
 * (19-20 µs against 0.2): compare ratios between machines with this in mind.
 */
function pageTouchMicros(): string {
  const size = 64 * 1024 * 1024;
  const pages = size / 4096;
  // (not zero-filled: untouched until written)
  const buf = Buffer.allocUnsafeSlow(size);
  const t0 = now();
  buf.fill(1);
  const t1 = now();
  buf.fill(2);
  const t2 = now();
  const us = (ms: number) => (ms * 1000) / pages;
  return `${us(t1 - t0).toFixed(1)} / ${us(t2 - t1).toFixed(2)}`;
}

// ---- temp folders ----------------------------------------------------------------------------

const POSTGRES_IDS = (): { uid: number; gid: number } => ({
  uid: Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim()),
  gid: Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim()),
});

/**
 * The run's working folder (below $BENCH_DIR, default the system temp folder), removed at the end
 * unless KEEP_TMP=1. Everything a section writes goes below it, so all of it is on one disk.
 */
export function makeWorkDir(cleanup: Cleanup, log: (line: string) => void): string {
  const base = process.env.BENCH_DIR ?? tmpdir();
  mkdirSync(base, { recursive: true });
  const dir = mkdtempSync(join(base, 'barman-bench-'));
  chmodSync(dir, 0o755); // postgres must reach its cluster below it
  cleanup.add(`remove ${dir}`, () => {
    if (process.env.KEEP_TMP === '1') log(`KEEP_TMP=1: kept ${dir}`);
    else rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

/** mkdir owned by the postgres OS user. */
export function postgresDir(path: string): string {
  mkdirSync(path, { recursive: true, mode: 0o700 });
  const { uid, gid } = POSTGRES_IDS();
  chownSync(path, uid, gid);
  return path;
}

// ---- PostgreSQL ------------------------------------------------------------------------------

/** A throwaway cluster run by postgres, reachable only through its own socket folder. */
/** `show server_version` of every cluster a benchmark started: results.md records what was measured. */
export const serverVersionsUsed = new Set<string>();

export class BenchCluster {
  readonly pgdata: string;
  readonly socketDir: string;
  /** PostgreSQL's default; only the cluster's own socket folder serves it */
  readonly port = 5432;
  private running = false;

  private constructor(readonly dir: string, readonly pgBin: string) {
    this.pgdata = join(dir, 'pgdata');
    this.socketDir = postgresDir(join(dir, 'socket'));
  }

  /** initdb + start, with `settings` appended to postgresql.conf; stopped by `cleanup`. */
  static async start(dir: string, pgBin: string, cleanup: Cleanup, settings: Record<string, string>): Promise<BenchCluster> {
    const c = new BenchCluster(postgresDir(dir), pgBin);
    await runOk(join(pgBin, 'initdb'), ['-D', c.pgdata, '-U', 'postgres', '-A', 'trust', '--no-sync', '--no-instructions'], { asPostgres: true, cwd: dir });
    const conf = { listen_addresses: "''", unix_socket_directories: `'${c.socketDir}'`, ...settings };
    writeFileSync(join(c.pgdata, 'postgresql.auto.conf'), Object.entries(conf).map(([k, v]) => `${k} = ${v}\n`).join(''));
    chownSync(join(c.pgdata, 'postgresql.auto.conf'), POSTGRES_IDS().uid, POSTGRES_IDS().gid);
    cleanup.add(`stop cluster ${c.pgdata}`, () => c.stop('immediate'));
    await runOk(join(pgBin, 'pg_ctl'), ['-D', c.pgdata, '-l', join(dir, 'postgresql.log'), '-w', 'start'], { asPostgres: true, cwd: dir });
    c.running = true;
    serverVersionsUsed.add(await c.psql('show server_version'));
    return c;
  }

  /** Runs a SQL script through psql as postgres; returns its unaligned, tuples-only output. */
  async psql(sql: string): Promise<string> {
    const script = join(this.dir, 'script.sql');
    writeFileSync(script, sql, { mode: 0o644 });
    const args = ['-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-h', this.socketDir, '-U', 'postgres', '-d', 'postgres', '-f', script];
    return (await runOk(join(this.pgBin, 'psql'), args, { asPostgres: true, cwd: this.dir })).stdout.trim();
  }

  async stop(mode: 'fast' | 'immediate' = 'fast'): Promise<void> {
    if (!this.running) return;
    this.running = false;
    await runOk(join(this.pgBin, 'pg_ctl'), ['-D', this.pgdata, '-m', mode, '-w', 'stop'], { asPostgres: true, cwd: this.dir });
  }
}

// ---- the receiver ----------------------------------------------------------------------------

export interface BenchReceiver {
  url: string;
  barmanHome: string;
  /** the receiver's configuration file, for its catalog commands */
  config: string;
  /** the service's process (node itself, no wrapper) */
  pid: number;
  /** root-owned token file of `server` */
  tokenFile: string;
  /** an agent configuration file for `server`, with the right token */
  agentConfig: string;
  stop(): Promise<void>;
  /** the last lines the service logged, for failure messages */
  logTail(): string;
}

/**
 * `barman-receiver serve` from dist/ (the installed launcher) with one server section and a fresh token, on a port the
 * kernel picks (read back from its "receiver listening" log line).
 */
export async function startReceiver(dir: string, repoRoot: string, cleanup: Cleanup, server: string, extra: Record<string, string> = {}, nodeArgs: string[] = []): Promise<BenchReceiver> {
  mkdirSync(dir, { recursive: true });
  const tokenFile = join(dir, `${server}.token`);
  writeFileSync(tokenFile, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  const barmanHome = join(dir, 'barman_home');
  const config = join(dir, 'barman.conf');
  const barman = { barman_home: barmanHome, listen: '127.0.0.1:0', log_level: 'info', ...extra };
  const ini = (name: string, values: Record<string, string>) => `[${name}]\n${Object.entries(values).map(([k, v]) => `${k} = ${v}`).join('\n')}\n`;
  writeFileSync(config, `${ini('barman', barman)}\n${ini(server, { token_file: tokenFile })}`);

  // as installed: the launcher (one malloc arena) execs Node, so the pid is the service's; with
  // Node options (a CPU profile, which Node refuses in NODE_OPTIONS), Node itself runs the bundle
  // (without the launcher's malloc settings: such a run's figures are not comparable anyway)
  const [file, args] = nodeArgs.length > 0 ? [process.execPath, [...nodeArgs, join(repoRoot, 'dist', 'barman-receiver.cjs')]] : [join(repoRoot, 'dist', 'barman-receiver'), []];
  const child: ChildProcess = spawn(file, [...args, 'serve', '-c', config], { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  let recent = '';
  child.stderr!.on('data', (b: Buffer) => {
    recent = (recent + b.toString('utf8')).slice(-16_384);
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(killer);
    }
  };
  cleanup.add(`stop receiver (pid ${child.pid})`, stop);
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`receiver did not listen within 30 s:\n${recent}`)), 30_000);
    const onData = () => {
      // complete lines only: a chunk may end inside one
      const line = recent.split('\n').slice(0, -1).find((l) => l.includes('"receiver listening"'));
      if (!line) return;
      clearTimeout(timer);
      child.stderr!.off('data', onData);
      resolve((JSON.parse(line) as { port: number }).port);
    };
    child.stderr!.on('data', onData);
    child.once('exit', (code) => reject(new Error(`receiver exited (${code}) before listening:\n${recent}`)));
  });
  const url = `ws://127.0.0.1:${port}`;
  const agentConfig = join(dir, 'agent.conf');
  writeFileSync(agentConfig, ini('agent', { receiver: url, server, token_file: tokenFile, spool_dir: join(dir, 'agent-spool'), log_level: 'warn' }));
  return { url, barmanHome, config, pid: child.pid!, tokenFile, agentConfig, stop, logTail: () => recent };
}

/**
 * An agent configuration the postgres OS user can use (as archive_command, or to take a backup):
 * a postgres-owned folder with a copy of the token (0600), the config (0644) and a spool folder.
 */
export function postgresAgentConfig(receiver: BenchReceiver, dir: string, server: string, values: Record<string, string>): string {
  postgresDir(dir);
  const { uid, gid } = POSTGRES_IDS();
  const tokenFile = join(dir, `${server}.token`);
  writeFileSync(tokenFile, readFileSync(receiver.tokenFile), { mode: 0o600 });
  chownSync(tokenFile, uid, gid);
  const config = join(dir, 'agent.conf');
  const agent = { receiver: receiver.url, server, token_file: tokenFile, spool_dir: postgresDir(join(dir, 'spool')), log_level: 'warn', ...values };
  writeFileSync(config, `[agent]\n${Object.entries(agent).map(([k, v]) => `${k} = ${v}`).join('\n')}\n`, { mode: 0o644 });
  return config;
}

/**
 * A bench receiver's catalog as the receiver itself reads it (receiver/catalog/open.ts): WAL and
 * backups are found by the catalog's own functions, never by a file-name pattern. Read-only use.
 */
export async function openCatalog(receiver: BenchReceiver, server: string, cleanup: Cleanup): Promise<OpenServer> {
  const config = loadReceiverConfig(receiver.config);
  const storage = await openCatalogStorage(config);
  cleanup.add(`close the catalog storage of ${receiver.config}`, () => storage.close());
  return serverOn(storage, config, config.servers.get(server)!);
}

/**
 * Waits until backup `id` is DONE in the catalog: a backup ends WAITING_FOR_WALS until the segment
 * holding its end is archived, which PostgreSQL's archiver may still be pushing.
 */
export async function waitForBackupDone(open: OpenServer, id: string, timeoutMs = 600_000): Promise<BackupInfo> {
  const deadline = Date.now() + timeoutMs;
  for (let info = await open.backups.read(id); ; info = await open.backups.read(id)) {
    if (info.status === 'DONE') return info;
    if (info.status !== 'WAITING_FOR_WALS' && info.status !== 'STARTED') throw new Error(`backup ${id} is ${info.status}`);
    if (Date.now() > deadline) throw new Error(`backup ${id} still ${info.status} after ${timeoutMs / 1000} s`);
    await sleep(100);
  }
}

/** Writes the plain bytes of archived WAL file `name` to `path` (checked against its stored checksum). */
export async function copyStoredWal(open: OpenServer, name: string, path: string): Promise<void> {
  const stored = await open.catalog.findWal(name);
  if (!stored) throw new Error(`${name} is not in the catalog of ${open.config.name}`);
  await pipeline(Readable.from(readStoredWal(open.catalog, stored)), createWriteStream(path));
}

// ---- CPU profiles ----------------------------------------------------------------------------

/**
 * The functions a process spent its CPU in, from the .cpuprofile files `node --cpu-prof` wrote
 * into `dir`: self time per function (name, file:line), largest first, with the total busy time
 * (idle excluded).
 */
export function cpuProfileTop(dir: string, count: number): { busyMs: number; top: Array<{ what: string; ms: number }> } {
  const self = new Map<string, number>();
  let busyMs = 0;
  for (const file of existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.cpuprofile')) : []) {
    const profile = JSON.parse(readFileSync(join(dir, file), 'utf8')) as {
      nodes: Array<{ id: number; callFrame: { functionName: string; url: string; lineNumber: number } }>;
      samples: number[];
      timeDeltas: number[];
    };
    const byId = new Map(profile.nodes.map((n) => [n.id, n.callFrame]));
    profile.samples.forEach((id, i) => {
      const frame = byId.get(id)!;
      if (frame.functionName === '(idle)') return;
      const ms = (profile.timeDeltas[i] ?? 0) / 1000;
      const what = `${frame.functionName || '(anonymous)'}${frame.url ? ` ${frame.url.split('/').pop()}:${frame.lineNumber + 1}` : ''}`;
      self.set(what, (self.get(what) ?? 0) + ms);
      busyMs += ms;
    });
  }
  return { busyMs, top: [...self].sort((a, b) => b[1] - a[1]).slice(0, count).map(([what, ms]) => ({ what, ms })) };
}

// ---- recovered copies ------------------------------------------------------------------------

/**
 * Starts a recovered data directory as postgres (on `port`, its socket in `socketDir`), waits
 * until a query answers and pg_is_in_recovery() is false, and checks that it holds `accounts`
 * pgbench_accounts rows (the figures count only if the copy holds the data). Returns the time from
 * `pg_ctl start` to out of recovery, and how to stop it (also registered with `cleanup`).
 */
export async function startRecoveredCopy(o: { pgBin: string; pgdata: string; name: string; work: string; socketDir: string; port: number; accounts: string; cleanup: Cleanup }): Promise<{ ms: number; stop: () => Promise<void> }> {
  const pgCtl = join(o.pgBin, 'pg_ctl');
  const stop = async () => {
    if (existsSync(join(o.pgdata, 'postmaster.pid'))) await runOk(pgCtl, ['-D', o.pgdata, '-m', 'immediate', '-w', 'stop'], { asPostgres: true, cwd: o.work });
  };
  o.cleanup.add(`stop recovered copy ${o.pgdata}`, stop);
  const started = now();
  await runOk(pgCtl, ['-D', o.pgdata, '-l', join(o.work, `${o.name}.log`), '-o', `-p ${o.port} -k ${o.socketDir}`, '-w', '-t', '600', 'start'], { asPostgres: true, cwd: o.work });
  const psql = (sql: string) => runOk(join(o.pgBin, 'psql'), ['-X', '-A', '-t', '-h', o.socketDir, '-p', String(o.port), '-U', 'postgres', '-d', 'postgres', '-c', sql], { asPostgres: true, cwd: o.work });
  for (;;) {
    const inRecovery = (await psql('select 1, pg_is_in_recovery()').catch(() => ({ stdout: '' }))).stdout.trim();
    if (inRecovery === '1|f') break;
    if (now() - started > 600_000) throw new Error(`${o.name}: not out of recovery after 10 minutes; see ${join(o.work, `${o.name}.log`)}`);
    await sleep(20);
  }
  const ms = now() - started;
  const got = (await psql('select count(*) from pgbench_accounts')).stdout.trim();
  if (got !== o.accounts) throw new Error(`${o.name}: recovered copy has ${got} pgbench_accounts rows, the source ${o.accounts}`);
  return { ms, stop };
}

/** Waits until PostgreSQL has no segment left to archive (no `.ready` file in pg_wal/archive_status). */
export async function waitForArchiver(pgdata: string, timeoutMs = 600_000): Promise<void> {
  const status = join(pgdata, 'pg_wal', 'archive_status');
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ready = readdirSync(status).filter((n) => n.endsWith('.ready'));
    if (ready.length === 0) return;
    if (Date.now() > deadline) throw new Error(`the archiver still has ${ready.length} segments to push after ${timeoutMs / 1000} s (${ready[0]} ...)`);
    await sleep(50);
  }
}
