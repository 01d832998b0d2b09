// Running a program to completion, as root or as the postgres OS user, and collecting what it
// printed. A bound on run time keeps a hung program from hanging the suite; it is a safety net,
// never something a test asserts on.

import { spawn } from 'node:child_process';
import { productEnv, runPaths } from './env';
import { track, untrack } from './resources';

export interface RunResult {
  /** exit code; null when ended by a signal */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** stdout as bytes, for programs that print file content */
  stdoutBytes: Buffer;
  /** the command line, for failure messages */
  command: string;
}

export interface RunOptions {
  /** run as the postgres OS user (through runuser), the way PostgreSQL runs the agent */
  asPostgres?: boolean;
  cwd?: string;
  env?: Record<string, string>;
  input?: string | Buffer;
  /** kill the program (its whole process group) after this long; default 120 s */
  timeoutMs?: number;
}

export async function run(file: string, args: string[], options: RunOptions = {}): Promise<RunResult> {
  const [cmd, argv] = options.asPostgres ? ['runuser', ['-u', 'postgres', '--', file, ...args]] : [file, args];
  const command = [cmd, ...argv].join(' ');
  const child = spawn(cmd, argv, {
    cwd: options.cwd ?? runPaths().runRoot,
    env: productEnv(options.env),
    stdio: ['pipe', 'pipe', 'pipe'],
    // its own process group, so a timeout kills runuser and what it started together
    detached: true,
  });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout.on('data', (b: Buffer) => out.push(b));
  child.stderr.on('data', (b: Buffer) => err.push(b));
  child.stdin.on('error', () => undefined);
  child.stdin.end(options.input ?? '');
  const killGroup = (): void => {
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      // already gone
    }
  };
  // a test that ends (or times out) while this runs takes the program down with it
  const resource = track({ what: command, dispose: killGroup, killNow: killGroup });
  const timeoutMs = options.timeoutMs ?? 120_000;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    killGroup();
  }, timeoutMs);
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (c, s) => resolve([c, s]));
  }).finally(() => {
    clearTimeout(timer);
    untrack(resource);
  });
  const stdoutBytes = Buffer.concat(out);
  const result: RunResult = { code, signal, stdout: stdoutBytes.toString('utf8'), stderr: Buffer.concat(err).toString('utf8'), stdoutBytes, command };
  if (timedOut) throw new Error(`${command} did not finish within ${timeoutMs / 1000} s (killed)\n${describeRun(result)}`);
  return result;
}

/** A run's outcome as text, for assertion messages. */
export function describeRun(r: RunResult): string {
  const cut = (s: string) => (s.length > 4000 ? `${s.slice(0, 4000)}… (${s.length} chars)` : s);
  return `$ ${r.command}\nexit ${r.code ?? r.signal}\n--- stdout\n${cut(r.stdout)}\n--- stderr\n${cut(r.stderr)}`;
}

/** Runs and throws unless the exit code is 0; returns stdout. */
export async function runOk(file: string, args: string[], options: RunOptions = {}): Promise<string> {
  const r = await run(file, args, options);
  if (r.code !== 0) throw new Error(`command failed\n${describeRun(r)}`);
  return r.stdout;
}
