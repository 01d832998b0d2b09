// The agent daemon as the PostgreSQL host runs it (`barman-agent daemon`, as postgres, until the
// test ends it), its pino log read back across restarts, and the backup host's view of it:
// `barman-receiver status <srv> --json`, polled until the stream has caught up with PostgreSQL.

import { type ChildProcess, spawn } from 'node:child_process';
import { appendFileSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parseLsn } from '../../shared/wal/lsn';
import { runReceiverCli } from './cli';
import type { Cluster } from './cluster';
import { agentBin, productEnv, runPaths } from './env';
import type { Receiver } from './receiver';
import { track } from './resources';
import { describeRun, type RunResult } from './run';
import { waitFor, type WaitOptions } from './wait';

/** One pino line of the daemon's log. */
export interface DaemonLogLine {
  level: number;
  msg: string;
  [field: string]: unknown;
}

/**
 * A daemon belongs to the scope it was started in (a file's beforeAll, say) across restarts: a
 * test may kill and restart it, and the new process lives on after that test, as the old one would.
 */
export class AgentDaemon {
  private child: ChildProcess | undefined;
  private exited: Promise<number | null> = Promise.resolve(null);
  private out = '';
  /** where the output of current run starts in `out` */
  private runStart = 0;
  private runs = 0;
  /** every run's output, also kept next to the configuration (KEEP_TMP=1 keeps it) */
  readonly logFile: string;

  private constructor(readonly configPath: string, private readonly args: string[]) {
    this.logFile = join(dirname(configPath), 'daemon.log');
    track({
      what: `barman-agent daemon -c ${configPath}`,
      dispose: async () => {
        this.signal('SIGKILL');
        await this.exited;
      },
      killNow: () => this.signal('SIGKILL'),
    });
    this.spawn();
  }

  /**
   * Starts `barman-agent daemon -c <configPath> [...args]` as postgres; stopped (SIGKILL) when the
   * scope it was started in ends.
   */
  static start(configPath: string, args: string[] = []): AgentDaemon {
    return new AgentDaemon(configPath, args);
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Everything every run printed, in order; a line `--- daemon run N (pid P)` starts each run. */
  output(): string {
    return this.out;
  }

  /** The pino lines of every run (or only of the current one); other output is skipped. */
  logLines(currentRunOnly = false): DaemonLogLine[] {
    const text = currentRunOnly ? this.out.slice(this.runStart) : this.out;
    const lines: DaemonLogLine[] = [];
    for (const line of text.split('\n')) {
      if (!line.startsWith('{')) continue;
      try {
        lines.push(JSON.parse(line) as DaemonLogLine);
      } catch {
        // a line cut short by a kill
      }
    }
    return lines;
  }

  /** Log lines whose message matches, across runs (or in the current run). */
  linesMatching(msg: RegExp, currentRunOnly = false): DaemonLogLine[] {
    return this.logLines(currentRunOnly).filter((l) => msg.test(l.msg));
  }

  /**
   * Waits until the log (all runs) has more than `after` lines whose message matches `msg`;
   * returns the newest. Fails at once when the daemon exited.
   */
  async waitForLog(msg: RegExp, after = 0, options: WaitOptions = {}): Promise<DaemonLogLine> {
    return waitFor(`the agent daemon to log ${msg} (more than ${after} times)`, () => {
      const found = this.linesMatching(msg);
      if (found.length > after) return found.at(-1)!;
      if (!this.running) throw new Error('the daemon exited');
      return false;
    }, { timeoutMs: 60_000, intervalMs: 100, ...options }).catch((err: Error) => {
      throw new Error(`${err.message}\n--- daemon output (end; all of it in ${this.logFile})\n${this.out.slice(-6000)}`);
    });
  }

  /** Waits until the daemon has opened a WAL stream: a `streaming WAL` line after `after` such lines. */
  async waitStreaming(after = 0, options: WaitOptions = {}): Promise<DaemonLogLine> {
    return this.waitForLog(/^streaming WAL$/, after, options);
  }

  /** Resolves with the exit code (null after a signal) once the current run has ended. */
  waitExit(): Promise<number | null> {
    return this.exited;
  }

  /** SIGKILL: the daemon dies wherever it is, as in a crash or an OOM kill. */
  async kill(): Promise<void> {
    this.signal('SIGKILL');
    await this.exited;
  }

  /**
   * SIGTERM to the agent process itself (not to runuser, which would die of the signal it passes
   * on and hide the exit code): the daemon finishes or abandons its work and exits; resolves with
   * its exit code.
   */
  async stop(): Promise<number | null> {
    const agent = this.agentPid();
    if (agent) process.kill(agent, 'SIGTERM');
    else this.signal('SIGTERM');
    return this.exited;
  }

  /** The barman-agent process under runuser. */
  private agentPid(): number | undefined {
    if (!this.running) return undefined;
    try {
      const pid = this.child!.pid!;
      const first = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/)[0];
      return first ? Number(first) : undefined;
    } catch {
      return undefined;
    }
  }

  /** Starts it again (after kill or stop), with the same configuration. */
  restart(): void {
    if (this.running) throw new Error('the agent daemon is still running');
    this.spawn();
  }

  private spawn(): void {
    // its own process group: a signal reaches runuser and the agent under it alike
    const child = spawn('runuser', ['-u', 'postgres', '--', process.execPath, agentBin(), 'daemon', '-c', this.configPath, ...this.args], { cwd: runPaths().runRoot, env: productEnv(), stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    this.child = child;
    this.runStart = this.out.length;
    this.record(`--- daemon run ${++this.runs} (pid ${child.pid})\n`);
    child.stdout!.on('data', (b: Buffer) => this.record(b.toString('utf8')));
    child.stderr!.on('data', (b: Buffer) => this.record(b.toString('utf8')));
    this.exited = new Promise((resolve) => child.once('close', (code) => resolve(code)));
  }

  private record(text: string): void {
    this.out += text;
    appendFileSync(this.logFile, text);
  }

  private signal(signal: NodeJS.Signals): void {
    if (!this.running) return;
    try {
      process.kill(-this.child!.pid!, signal);
    } catch {
      // already gone
    }
  }
}

export function startDaemon(configPath: string, args: string[] = []): AgentDaemon {
  return AgentDaemon.start(configPath, args);
}

/** What docs/commands.md promises `status <srv> --json` holds (at least). */
export interface StatusJson {
  server: string;
  agent: { connected: boolean };
  wal: { last_segment: string | null; last_received_at: string | null };
  streaming: { state: string; received_lsn: string | null; flush_lsn: string | null; server_lsn?: string | null; lag_bytes: number | null };
  backups: { count: number; last_id: string | null; running?: string | null };
  rpo_seconds: number | null;
}

/** `barman-receiver status <server> --json` on the backup host. */
export async function receiverStatus(receiver: Receiver, server: string): Promise<StatusJson> {
  const r = await runReceiverCli(['status', '-c', receiver.configPath, server, '--json']);
  if (r.code !== 0) throw new Error(`status failed\n${describeRun(r)}`);
  return JSON.parse(r.stdout) as StatusJson;
}

/** `barman-receiver check <server>` on the backup host: exit 0 only when every check passed. */
export function receiverCheck(receiver: Receiver, server: string): Promise<RunResult> {
  return runReceiverCli(['check', '-c', receiver.configPath, server]);
}

/**
 * Waits until the receiver streams and has flushed everything PostgreSQL has flushed now
 * (pg_current_wal_flush_lsn() when called), with no lag left; returns that status.
 */
export async function waitStreamCaughtUp(receiver: Receiver, server: string, cluster: Pick<Cluster, 'psql'>, options: WaitOptions = {}): Promise<StatusJson> {
  const targetText = await cluster.psql('select pg_current_wal_flush_lsn()');
  const target = parseLsn(targetText);
  let last: StatusJson | undefined;
  return waitFor(`the receiver to stream and flush WAL up to ${targetText}`, async () => {
    last = await receiverStatus(receiver, server);
    const s = last.streaming;
    return s.state === 'streaming' && s.flush_lsn && parseLsn(s.flush_lsn) >= target && s.lag_bytes === 0 ? last : false;
  }, { timeoutMs: 60_000, intervalMs: 200, ...options }).catch((err: Error) => {
    throw new Error(`${err.message}\n--- last status\n${JSON.stringify(last, null, 2)}`);
  });
}
