// A real PostgreSQL cluster in a temp folder, run by the postgres OS user: initdb (or
// pg_basebackup of another cluster), its own port and socket folder, and, when asked, archiving
// through the agent as installed: archive_command = '<bin>/barman-agent -c <agent.conf> push %p'
// (the sh launcher, which runs <bin>/barman-agent.cjs with the node on PATH when it cannot answer alone).

import { appendFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type AgentConfigOptions, writeAgentConfig } from './agent';
import { archiveCommandLine } from './cli';
import { chownTo, freePort, makeDir, makeTempDir, pgBinDir } from './env';
import { listDir } from './fs';
import { track } from './resources';
import { describeRun, run, runOk } from './run';
import { sqlText } from './sql';
import { waitFor, type WaitOptions } from './wait';

export type ConfValue = string | number | boolean;

export interface ClusterOptions {
  /** label of the temp folder */
  name?: string;
  /** archive_mode = on with the agent as archive_command (needs agentConfig) */
  archive?: boolean;
  /** the agent configuration archive_command uses: a file, or options to write one (pgdata and conninfo filled in) */
  agentConfig?: string | Omit<AgentConfigOptions, 'pgdata' | 'conninfo' | 'dir'>;
  /** more postgresql.conf settings (they win over the harness's) */
  extraConf?: Record<string, ConfValue>;
  /** initdb --wal-segsize, in MB (default 16, PostgreSQL's default) */
  walSegmentSizeMB?: number;
  /** the PostgreSQL binaries (initdb, pg_ctl, ...) of this cluster: pgBinDirFor(major); default pgBinDir(), the machine's */
  binDir?: string;
  /** more environment for the postmaster, and so for its archive_command (PATH, say) */
  env?: Record<string, string>;
}

export interface CloneOptions extends Omit<ClusterOptions, 'walSegmentSizeMB' | 'binDir'> {
  /** pg_basebackup -X: none leaves the WAL to restore_command */
  walMethod?: 'none' | 'fetch' | 'stream';
  /** which signal file to create in the copy */
  signal?: 'standby' | 'recovery';
}

export interface ArchiverStats {
  archivedCount: number;
  lastArchivedWal: string;
  failedCount: number;
  lastFailedWal: string;
  /** segments waiting in archive_status/*.ready */
  ready: number;
}

export type StopMode = 'smart' | 'fast' | 'immediate';

export const quoteConf = (v: ConfValue): string => `'${String(v).replace(/'/g, "''")}'`;

export class Cluster {
  readonly pgdata: string;
  readonly socketDir: string;
  readonly logFile: string;
  agentConfigPath: string | undefined;
  /** more environment for the postmaster (ClusterOptions.env) */
  env: Record<string, string> | undefined;

  private constructor(readonly dir: string, readonly port: number, readonly binDir: string) {
    this.pgdata = join(dir, 'pgdata');
    this.socketDir = makeDir(join(dir, 'socket'), 'postgres', 0o700);
    this.logFile = join(dir, 'postgresql.log');
    track({
      what: `PostgreSQL cluster ${this.pgdata}`,
      dispose: () => this.dispose(),
      killNow: () => {
        const pid = this.postmasterPid();
        if (pid) process.kill(pid, 'SIGQUIT');
      },
    });
  }

  /** initdb a new cluster (not started; call start()). */
  static async create(options: ClusterOptions = {}): Promise<Cluster> {
    const cluster = new Cluster(makeTempDir(options.name ?? 'cluster', 'postgres', 0o755), await freePort(), options.binDir ?? pgBinDir());
    // (no --no-instructions: PostgreSQL 13's initdb does not know it; its output is not shown anyway)
    const args = ['-D', cluster.pgdata, '-U', 'postgres', '-A', 'trust', '-E', 'UTF8', '--locale=C', '--no-sync', `--wal-segsize=${options.walSegmentSizeMB ?? 16}`];
    await runOk(cluster.tool('initdb'), args, { asPostgres: true, cwd: cluster.dir });
    cluster.configure(options, {
      wal_level: 'replica',
      max_wal_senders: 10,
      max_replication_slots: 10,
      // the cluster's own durability is not under test; the receiver's is
      fsync: 'off',
      max_wal_size: '1GB',
    });
    return cluster;
  }

  /** A copy of a running cluster made with pg_basebackup, on its own port (not started). */
  static async fromBaseBackup(source: Cluster, options: CloneOptions = {}): Promise<Cluster> {
    const cluster = new Cluster(makeTempDir(options.name ?? 'clone', 'postgres', 0o755), await freePort(), source.binDir);
    const args = ['-D', cluster.pgdata, '-h', source.socketDir, '-p', String(source.port), '-U', 'postgres', '-X', options.walMethod ?? 'stream', '-c', 'fast', '--no-sync'];
    await runOk(cluster.tool('pg_basebackup'), args, { asPostgres: true, cwd: cluster.dir });
    cluster.configure(options, {});
    if (options.signal) {
      const file = join(cluster.pgdata, `${options.signal}.signal`);
      writeFileSync(file, '', { mode: 0o600 });
      chownTo(file, 'postgres');
    }
    return cluster;
  }

  /** A program of this cluster's PostgreSQL version. */
  tool(name: string): string {
    return join(this.binDir, name);
  }

  /** libpq conninfo for the agent and for psql. */
  get conninfo(): string {
    return `host=${this.socketDir} port=${this.port} user=postgres dbname=postgres`;
  }

  private configure(options: ClusterOptions, base: Record<string, ConfValue>): void {
    this.env = options.env;
    if (options.agentConfig !== undefined) {
      this.agentConfigPath = typeof options.agentConfig === 'string'
        ? options.agentConfig
        : writeAgentConfig({ ...options.agentConfig, pgdata: this.pgdata, conninfo: this.conninfo, dir: makeDir(join(this.dir, 'agent'), 'postgres') }).path;
    }
    if (options.archive && !this.agentConfigPath) throw new Error('archive: true needs agentConfig');
    this.appendConf({
      ...base,
      port: this.port,
      listen_addresses: '',
      unix_socket_directories: this.socketDir,
      archive_mode: options.archive ? 'on' : 'off',
      archive_command: options.archive ? archiveCommandLine(this.agentConfigPath!) : '',
      log_line_prefix: '%m [%p] %q%a ',
      ...options.extraConf,
    });
  }

  /** Appends settings to postgresql.conf (later lines win); reload() or restart() to apply. */
  appendConf(settings: Record<string, ConfValue>): void {
    const lines = Object.entries(settings).map(([k, v]) => `${k} = ${quoteConf(v)}`);
    appendFileSync(join(this.pgdata, 'postgresql.conf'), `\n# barman-ts test harness\n${lines.join('\n')}\n`);
  }

  async start(): Promise<void> {
    const r = await run(this.tool('pg_ctl'), ['-D', this.pgdata, '-l', this.logFile, '-w', '-t', '120', 'start'], { asPostgres: true, cwd: this.dir, env: this.env });
    if (r.code !== 0) throw new Error(`PostgreSQL did not start\n${describeRun(r)}\n--- ${this.logFile}\n${this.logTail()}`);
  }

  async stop(mode: StopMode = 'fast'): Promise<void> {
    if (!this.isRunning()) return;
    await runOk(this.tool('pg_ctl'), ['-D', this.pgdata, '-m', mode, '-w', '-t', '120', 'stop'], { asPostgres: true, cwd: this.dir });
  }

  async restart(mode: StopMode = 'fast'): Promise<void> {
    await this.stop(mode);
    await this.start();
  }

  /**
   * SIGKILL to the postmaster, as the OOM killer does: no shutdown checkpoint, no goodbye to
   * anyone connected. Waits until its children (backends, WAL senders) have noticed and exited
   * too, so start() can follow (it runs crash recovery).
   */
  async crash(): Promise<void> {
    const pid = this.postmasterPid();
    if (!pid) throw new Error(`crash(): no postmaster runs for ${this.pgdata}`);
    const children = childrenOf(pid);
    process.kill(pid, 'SIGKILL');
    await waitFor(`postmaster ${pid} and its ${children.length} children to exit`, () => [pid, ...children].every((p) => !isAlive(p)), { timeoutMs: 60_000 });
  }

  async reload(): Promise<void> {
    await this.psql('select pg_reload_conf()');
  }

  /** pg_ctl promote, waiting until the copy accepts writes on its new timeline. */
  async promote(): Promise<void> {
    await runOk(this.tool('pg_ctl'), ['-D', this.pgdata, '-w', '-t', '120', 'promote'], { asPostgres: true, cwd: this.dir });
  }

  /** Runs SQL as psql -X -q -A -t would (test/harness/sql.ts: psql, or the pg client for packaged binaries); returns its output without the last newline. */
  async psql(sql: string, database = 'postgres'): Promise<string> {
    return sqlText({ binDir: this.binDir, socketDir: this.socketDir, port: this.port, cwd: this.dir }, sql, database);
  }

  /**
   * Writes a WAL record and switches to a new segment, so every call completes exactly one
   * segment. Returns the name of the segment it completed.
   */
  async switchWal(): Promise<string> {
    return this.psql("select pg_walfile_name(pg_switch_wal()) from (select pg_logical_emit_message(false, 'barman-test', 'switch')) m");
  }

  async systemIdentifier(): Promise<string> {
    return this.psql('select system_identifier from pg_control_system()');
  }

  async archiverStats(): Promise<ArchiverStats> {
    const row = await this.psql(
      "select archived_count, coalesce(last_archived_wal, ''), failed_count, coalesce(last_failed_wal, ''), " +
        "(select count(*) from pg_ls_archive_statusdir() where name like '%.ready') from pg_stat_archiver",
    );
    const [archived, lastArchived, failed, lastFailed, ready] = row.split('|');
    return { archivedCount: Number(archived), lastArchivedWal: lastArchived!, failedCount: Number(failed), lastFailedWal: lastFailed!, ready: Number(ready) };
  }

  /** WAL file names by archive state, from pg_wal/archive_status (.ready: waiting, .done: archived). */
  archiveStatus(): { ready: string[]; done: string[] } {
    const files = listDir(join(this.pgdata, 'pg_wal', 'archive_status'));
    const named = (ext: string) => files.filter((f) => f.endsWith(ext)).map((f) => f.slice(0, -ext.length));
    return { ready: named('.ready'), done: named('.done') };
  }

  /** The file PostgreSQL has for a WAL name (pg_wal/<name>). */
  walFile(name: string): string {
    return join(this.pgdata, 'pg_wal', name);
  }

  /**
   * Waits until PostgreSQL counts these WAL files as archived (archive_status/<name>.done, or
   * recycled without a .ready). Wakes the archiver with a reload while waiting: after failures
   * it otherwise sleeps up to a minute before retrying.
   */
  async waitArchived(names: string | string[], options: WaitOptions = {}): Promise<void> {
    const pending = new Set(typeof names === 'string' ? [names] : names);
    const status = join(this.pgdata, 'pg_wal', 'archive_status');
    let polls = 0;
    await waitFor(`PostgreSQL to archive ${[...pending].join(', ')}`, async () => {
      for (const name of [...pending]) {
        const done = existsSync(join(status, `${name}.done`)) || (!existsSync(join(status, `${name}.ready`)) && !existsSync(this.walFile(name)));
        if (done) pending.delete(name);
      }
      if (pending.size === 0) return true;
      if (++polls % 20 === 0) await this.reload();
      return false;
    }, { timeoutMs: 120_000, intervalMs: 100, ...options }).catch((err: Error) => {
      throw new Error(`${err.message}; still not archived: ${[...pending].join(', ')}\n--- last lines of ${this.logFile}\n${this.logTail()}`);
    });
  }

  /** Waits until no segment waits for the archiver; returns the archiver's counters then. */
  async waitArchiverIdle(options: WaitOptions = {}): Promise<ArchiverStats> {
    let polls = 0;
    return waitFor('the archiver to have nothing left to archive', async () => {
      const stats = await this.archiverStats();
      if (stats.ready === 0) return stats;
      if (++polls % 20 === 0) await this.reload();
      return false;
    }, { timeoutMs: 120_000, intervalMs: 100, ...options });
  }

  postmasterPid(): number | undefined {
    return postmasterPidOf(this.pgdata);
  }

  isRunning(): boolean {
    return this.postmasterPid() !== undefined;
  }

  logTail(lines = 40): string {
    try {
      return readFileSync(this.logFile, 'utf8').split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  }

  private async dispose(): Promise<void> {
    if (!this.isRunning()) return;
    const r = await run(this.tool('pg_ctl'), ['-D', this.pgdata, '-m', 'immediate', '-w', '-t', '60', 'stop'], { asPostgres: true, cwd: this.dir });
    const pid = this.postmasterPid();
    if (pid) {
      process.kill(pid, 'SIGKILL');
      throw new Error(`pg_ctl stop -m immediate left postmaster ${pid} running (killed it)\n${describeRun(r)}`);
    }
  }
}

/** The pids whose parent is `pid`, from /proc. */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const entry of listDir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so read after the last ')'
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) out.push(Number(entry));
    } catch {
      // exited meanwhile
    }
  }
  return out;
}

/** Alive and not a zombie (a killed child is a zombie until reaped, and kill(pid, 0) still succeeds on it). */
function isAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/** The live postmaster of a data directory, from postmaster.pid; undefined when none runs. */
export function postmasterPidOf(pgdata: string): number | undefined {
  try {
    const pid = Number(readFileSync(join(pgdata, 'postmaster.pid'), 'utf8').split('\n')[0]);
    process.kill(pid, 0);
    return pid;
  } catch {
    return undefined;
  }
}

export function createCluster(options: ClusterOptions = {}): Promise<Cluster> {
  return Cluster.create(options);
}

/** pg_basebackup of a running cluster into a new one on its own port (not started). */
export function cloneCluster(source: Cluster, options: CloneOptions = {}): Promise<Cluster> {
  return Cluster.fromBaseBackup(source, options);
}
