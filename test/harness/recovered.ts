// What recovery tests need beyond a Cluster: a data directory that `recover` wrote, started as
// postgres on a port of its own (pg_ctl -o "-p N -k dir", so nothing is added to the directory
// and pg_verifybackup still sees it as recovered), and programs that run in the background
// (an agent daemon, a backup to kill half-way, pgbench) until the test ends them.

import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { postmasterPidOf } from './cluster';
import { agentBin, freePort, makeDir, pgBin, pgBinDir, productEnv, runPaths } from './env';
import { track, untrack, type Resource } from './resources';
import { describeRun, run, runOk, type RunResult } from './run';
import { sqlText } from './sql';
import { waitFor, type WaitOptions } from './wait';

/**
 * `pg_verifybackup -n -i barman_wal <dir>` (docs/commands.md, recover): the check a recovered directory passes before its first start.
 * `ignore`: more paths it skips, such as the data directory's own symlinks (it follows links, and manifests list files only).
 */
export function verifyRecoveredDirectory(dir: string, ignore: string[] = []): Promise<RunResult> {
  return run(pgBin('pg_verifybackup'), ['-n', '-i', 'barman_wal', ...ignore.flatMap((p) => ['-i', p]), dir]);
}

/** A data directory written by `recover` (or `restore`), run by postgres on its own port and socket folder. */
export class RecoveredCluster {
  readonly socketDir: string;
  readonly logFile: string;
  private readonly resource: Resource;

  private constructor(readonly pgdata: string, readonly dir: string, readonly port: number, readonly binDir: string) {
    this.socketDir = makeDir(join(dir, `socket-${port}`), 'postgres', 0o700);
    this.logFile = join(dir, `postgresql-${port}.log`);
    this.resource = track({
      what: `recovered cluster ${pgdata}`,
      dispose: () => this.stop('immediate'),
      killNow: () => {
        const pid = this.postmasterPid();
        if (pid) process.kill(pid, 'SIGQUIT');
      },
    });
  }

  /**
   * Starts the recovered directory `pgdata` as postgres; `dir` (postgres-writable) holds its socket
   * folder and log. `options` are more postgres command-line options (`-c name=value` pairs);
   * `binDir` the PostgreSQL binaries to run it with (default the machine's, pgBinDir()).
   * Resolves once pg_ctl sees it accepting connections (in recovery or not).
   */
  static async start(pgdata: string, dir: string, options: string[] = [], binDir = pgBinDir(), env?: Record<string, string>): Promise<RecoveredCluster> {
    const cluster = new RecoveredCluster(pgdata, dir, await freePort(), binDir);
    cluster.env = env;
    await cluster.start(options);
    return cluster;
  }

  /** more environment for the postmaster (and so its restore_command and archive_command) */
  env: Record<string, string> | undefined;

  get conninfo(): string {
    return `host=${this.socketDir} port=${this.port} user=postgres dbname=postgres`;
  }

  async start(options: string[] = []): Promise<void> {
    const postgresOptions = ['-p', String(this.port), '-k', this.socketDir, '-c', "listen_addresses=''", ...options].join(' ');
    const r = await run(join(this.binDir, 'pg_ctl'), ['-D', this.pgdata, '-l', this.logFile, '-o', postgresOptions, '-w', '-t', '120', 'start'], { asPostgres: true, cwd: this.dir, env: this.env });
    if (r.code !== 0) throw new Error(`the recovered cluster did not start\n${describeRun(r)}\n--- ${this.logFile}\n${this.logTail()}`);
  }

  async stop(mode: 'fast' | 'immediate' = 'fast'): Promise<void> {
    if (!this.postmasterPid()) return;
    await runOk(join(this.binDir, 'pg_ctl'), ['-D', this.pgdata, '-m', mode, '-w', '-t', '120', 'stop'], { asPostgres: true, cwd: this.dir });
  }

  /** Stops it now and forgets it (the test is done with it early). */
  async dispose(): Promise<void> {
    untrack(this.resource);
    await this.stop();
  }

  async psql(sql: string, database = 'postgres'): Promise<string> {
    return sqlText({ binDir: this.binDir, socketDir: this.socketDir, port: this.port, cwd: this.dir }, sql, database);
  }

  /** pg_ctl promote (a standby becomes a primary on a new timeline); waitPromoted() then waits for it. */
  async promote(): Promise<void> {
    await runOk(join(this.binDir, 'pg_ctl'), ['-D', this.pgdata, '-w', '-t', '120', 'promote'], { asPostgres: true, cwd: this.dir });
  }

  /** Waits until recovery has ended and the cluster was promoted (pg_is_in_recovery() = false). */
  async waitPromoted(options: WaitOptions = {}): Promise<void> {
    await waitFor(`${this.pgdata} to finish recovery and promote`, async () => {
      if (!this.postmasterPid()) throw new Error(`postmaster exited\n--- ${this.logFile}\n${this.logTail()}`);
      return (await this.psql('select pg_is_in_recovery()')) === 'f';
    }, { timeoutMs: 120_000, intervalMs: 200, ...options }).catch((err: Error) => {
      throw new Error(`${err.message}\n--- ${this.logFile}\n${this.logTail()}`);
    });
  }

  /** The timeline it writes WAL on now (from the current WAL file's name). */
  async timeline(): Promise<number> {
    return parseInt((await this.psql('select pg_walfile_name(pg_current_wal_lsn())')).slice(0, 8), 16);
  }

  postmasterPid(): number | undefined {
    return postmasterPidOf(this.pgdata);
  }

  logTail(lines = 40): string {
    try {
      return readFileSync(this.logFile, 'utf8').split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  }
}

export function startRecovered(pgdata: string, dir: string, options: string[] = [], binDir?: string, env?: Record<string, string>): Promise<RecoveredCluster> {
  return RecoveredCluster.start(pgdata, dir, options, binDir, env);
}

/**
 * The environment of a PostgreSQL host where barman-agent is installed: the launcher on PATH as
 * `barman-agent` (so `restore_command = 'barman-agent get-wal %f %p'` runs as written) and the
 * agent configuration found through $BARMAN_AGENT_CONFIG.
 */
export function agentHostEnv(agentConfigPath: string): Record<string, string> {
  return { PATH: `${runPaths().binDir}:${process.env.PATH ?? '/usr/bin:/bin'}`, BARMAN_AGENT_CONFIG: agentConfigPath };
}

/** A program left running while the test does other things; its whole process group is signalled. */
export class Background {
  private out = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly resource: Resource;

  constructor(private readonly child: ChildProcess, readonly command: string) {
    const record = (b: Buffer) => {
      this.out += b.toString('utf8');
    };
    child.stdout!.on('data', record);
    child.stderr!.on('data', record);
    this.exited = new Promise((resolve) => child.once('close', (code, signal) => resolve({ code, signal })));
    this.resource = track({
      what: `background ${command}`,
      dispose: async () => {
        this.signal('SIGKILL');
        await this.exited;
      },
      killNow: () => this.signal('SIGKILL'),
    });
    void this.exited.then(() => untrack(this.resource));
  }

  get pid(): number {
    return this.child.pid!;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** stdout and stderr so far, interleaved as they came. */
  output(): string {
    return this.out;
  }

  /** Signals the program and everything it started (runuser, node, ...), by process group. */
  signal(signal: NodeJS.Signals): void {
    try {
      process.kill(-this.child.pid!, signal);
    } catch {
      // already gone
    }
  }

  /** Signals it and waits until it is gone. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.running) this.signal(signal);
    return this.exited;
  }
}

/** Starts a program in its own process group, as postgres unless `asPostgres: false`. */
export function startBackground(file: string, args: string[], options: { asPostgres?: boolean; cwd?: string } = {}): Background {
  const asPostgres = options.asPostgres ?? true;
  const [cmd, argv] = asPostgres ? ['runuser', ['-u', 'postgres', '--', file, ...args]] : [file, args];
  const child = spawn(cmd, argv, { cwd: options.cwd ?? runPaths().runRoot, env: productEnv(), stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  return new Background(child, [cmd, ...argv].join(' '));
}

/** `barman-agent ...args` left running (a daemon, a backup to interrupt), as postgres. */
export function startAgentInBackground(args: string[]): Background {
  return startBackground(process.execPath, [agentBin(), ...args]);
}
