// A restore drill: proof, before the disaster, that a backup comes back and how long it takes.
// The backup is recovered (by `recover`'s own code) into a scratch directory in $TMPDIR on the
// backup host, started on a private socket directory and a free port, as the `postgres` user
// when run as root (else as the user running it: PostgreSQL only refuses root), waited for until
// recovery has finished and it accepts connections, checked (pg_amcheck on every database when
// the binaries have it, drill_query when configured), then stopped and removed. The RTO is the
// time from the start of the restore to that ready, checked cluster.
//
// A drill only reads the catalog (recording its outcome is the catalog writer's job: ServerContext
// or receiver/commands/drill.ts) and never reaches the production cluster: the copy listens on no
// TCP address, archives nothing (archive_mode off, as every recovered copy), waits for no
// synchronous standby, and takes its connection rules from a pg_hba.conf of its own.

import { createHash } from 'node:crypto';
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, openSync, promises as fs } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join, resolve } from 'node:path';
import type { Logger } from 'pino';
import type { ReceiverConfig } from '../../shared/config/receiver';
import { BarmanError, ErrorCode, asBarmanError } from '../../shared/errors';
import { checkRecoveryBinaries } from '../../shared/postgres/binaries';
import { majorOf } from '../../shared/postgres/version';
import { parseTargetTime } from '../recovery/plan';
import type { DrillRecord } from '../catalog/catalog';
import { withServer } from '../catalog/open';
import { lookupOwner, recover } from '../commands/recover';
import { requireServer } from '../commands/servers';

/** how long a restored copy may take to finish recovery before the drill gives up on it */
const RECOVERY_TIMEOUT_MS = 6 * 3600 * 1000;
/** how long a stopping copy gets for a fast shutdown before it is stopped at once */
const STOP_WAIT_MS = 60_000;
/** the roles a drill connects as: initdb's default superuser, then the OS user the copy runs as */
const ROLES = ['postgres'];

export interface DrillOptions {
  /** backup ID, latest or oldest (default latest) */
  backup?: string;
  /** ISO 8601: recover to this time instead of the end of WAL */
  targetTime?: string;
  signal?: AbortSignal;
  log?: Logger;
}

type Check = DrillRecord['checks'][number];

/** The OS user the copy runs as: postgres when we are root (PostgreSQL refuses root), else ourselves. */
function runAs(): { uid: number; gid: number; name: string } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  return { ...lookupOwner('postgres'), name: 'postgres' };
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

/** Runs a program as the copy's user; resolves with its exit code and output (bounded). */
function runTool(file: string, args: string[], user: ReturnType<typeof runAs>, cwd: string): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { cwd, uid: user?.uid, gid: user?.gid, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', LANG: 'C.UTF-8', PGCONNECT_TIMEOUT: '10' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const take = (b: Buffer) => {
      if (output.length < 64 * 1024) output += b.toString('utf8');
    };
    child.stdout.on('data', take);
    child.stderr.on('data', take);
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, output }));
  });
}

/** Recovers, starts, checks, stops and removes; returns what happened (a failed drill is a result, not an exception). */
export async function drillBackup(config: ReceiverConfig, serverName: string, options: DrillOptions = {}): Promise<DrillRecord> {
  const server = requireServer(config, serverName);
  // what is not a drill at all (no such backup, a malformed time) is refused, not recorded
  if (options.targetTime !== undefined) parseTargetTime(options.targetTime);
  const info = await withServer(config, server, ({ backups }) => backups.resolve(options.backup ?? 'latest'));
  if (info.status !== 'DONE') throw new BarmanError(ErrorCode.BACKUP_FAILED, `backup ${info.backupId} is ${info.status}, not DONE`, `Drill a DONE backup (barman-receiver list-backups ${server.name}).`);

  const at = new Date();
  const checks: Check[] = [];
  const log = options.log?.child({ server: server.name, backup: info.backupId, component: 'drill' });
  const record = (error: string | null, rtoSeconds: number | null): DrillRecord => ({
    at: at.toISOString(), backupId: info.backupId, passed: error === null, rtoSeconds, ...(options.targetTime ? { targetTime: options.targetTime } : {}), checks, error,
  });
  const fail = (name: string, detail: string): DrillRecord => {
    checks.push({ name, ok: false, detail });
    return record(`${name}: ${detail}`, null);
  };

  let binDir: string;
  try {
    const found = checkRecoveryBinaries(info.backupId, info.pgVersion, server.pgBindir, process.env, 'pg_bindir =');
    if (!found) throw new BarmanError(ErrorCode.PG_VERSION_MISMATCH, `this host has no PostgreSQL ${majorOf(info.pgVersion)} server binaries`, `Install PostgreSQL ${majorOf(info.pgVersion)} on the backup host, or name its binaries with pg_bindir = in [${server.name}].`);
    binDir = found.dir;
    checks.push({ name: 'binaries', ok: true, detail: `PostgreSQL ${found.major} in ${found.dir}` });
  } catch (err) {
    return fail('binaries', asBarmanError(err).message);
  }

  const user = runAs();
  const prefix = drillScratchPrefix(config.barmanHome, server.name);
  await removeLeftovers(prefix, log);
  const scratch = await fs.mkdtemp(join(tmpdir(), prefix));
  let postmaster: ChildProcess | undefined;
  const stopOnAbort = () => void (postmaster && stopCopy(postmaster));
  options.signal?.addEventListener('abort', stopOnAbort);
  try {
    // who runs this drill: a later drill removes this directory only once that process is gone
    await fs.writeFile(join(scratch, OWNER_FILE), JSON.stringify({ pid: process.pid, startTicks: await startTicksOf(process.pid) }));
    await fs.chmod(scratch, 0o700);
    if (user) await fs.chown(scratch, user.uid, user.gid);
    const pgdata = join(scratch, 'pgdata');
    const socketDir = join(scratch, 'socket');
    await fs.mkdir(socketDir, { mode: 0o700 });
    if (user) await fs.chown(socketDir, user.uid, user.gid);

    // the restore, by recover's code: every data file checked against its manifest as it is written
    const started = Date.now();
    const tablespaces = Object.fromEntries(info.tablespaces.map((t) => [t.name, join(scratch, 'tablespaces', t.oid)]));
    try {
      // a stop asked meanwhile (serve stopping) ends the restore at its next progress report
      const plan = await recover(config, server.name, info.backupId, pgdata, { targetTime: options.targetTime, tablespaces, owner: user?.name, pgBindir: binDir }, () => throwIfStopped(options.signal));
      checks.push({ name: 'restore', ok: true, detail: `${plan.files.length} files, ${plan.wals.length} WAL files, target: ${plan.targetDescription}` });
    } catch (err) {
      throwIfStopped(options.signal);
      return fail('restore', asBarmanError(err).message);
    }
    throwIfStopped(options.signal);
    log?.info('restored; starting it');

    // connection rules and settings of its own, so the copy answers only here and waits on no one
    const own = async (path: string, content: string) => {
      await fs.writeFile(path, content, { mode: 0o600 });
      if (user) await fs.chown(path, user.uid, user.gid);
    };
    await own(join(scratch, 'pg_hba.conf'), 'local all all trust\n');
    await own(join(scratch, 'pg_ident.conf'), '');
    // Debian keeps postgresql.conf in /etc: a data directory without one still starts
    if (!(await fs.stat(join(pgdata, 'postgresql.conf')).catch(() => undefined))) await own(join(pgdata, 'postgresql.conf'), '');
    const port = await freePort();
    const settings: Record<string, string> = {
      data_directory: pgdata, port: String(port), listen_addresses: '', unix_socket_directories: socketDir,
      hba_file: join(scratch, 'pg_hba.conf'), ident_file: join(scratch, 'pg_ident.conf'), external_pid_file: '',
      archive_mode: 'off', synchronous_standby_names: '', primary_conninfo: '', hot_standby: 'off', cluster_name: 'barman-drill',
      logging_collector: 'off', log_destination: 'stderr', ssl: 'off', shared_buffers: '128MB', huge_pages: 'off',
    };
    const logPath = join(scratch, 'postgresql.log');
    const logFd = openSync(logPath, 'a', 0o600);
    try {
      postmaster = spawn(join(binDir, 'postgres'), ['-D', pgdata, ...Object.entries(settings).flatMap(([k, v]) => ['-c', `${k}=${v}`])], {
        cwd: scratch, uid: user?.uid, gid: user?.gid, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', LANG: 'C.UTF-8' }, stdio: ['ignore', logFd, logFd],
      });
    } finally {
      closeSync(logFd);
    }
    const exited = new Promise<number | null>((resolve) => postmaster!.once('exit', (code) => resolve(code)));
    postmaster.once('error', () => undefined);
    const logTail = async () => (await fs.readFile(logPath, 'utf8').catch(() => '')).split('\n').filter((l) => /FATAL|PANIC|ERROR|could not/.test(l)).slice(-5).join(' | ') || 'see the log';

    const pg = (await import('pg')).default;
    let role: string | undefined;
    const connect = async (database: string) => {
      for (const r of role ? [role] : [...ROLES, ...(user ? [] : [userInfo().username])]) {
        const client = new pg.Client({ host: socketDir, port, user: r, database, connectionTimeoutMillis: 10_000 });
        client.on('error', () => undefined);
        try {
          await client.connect();
          role = r;
          return client;
        } catch (err) {
          await client.end().catch(() => undefined);
          if (!/role .* does not exist/.test((err as Error).message)) throw err;
        }
      }
      throw new BarmanError(ErrorCode.POSTGRES, `the restored copy has neither of the roles ${ROLES.join(', ')}`, 'A drill connects as postgres (the superuser initdb makes by default).');
    };

    // ready: recovery over (hot_standby is off: it accepts connections only then)
    let ready: { timeline: string } | undefined;
    let gaveUp: string | undefined;
    let exitCode: number | null | undefined;
    void exited.then((c) => (exitCode = c));
    while (!ready && !gaveUp) {
      throwIfStopped(options.signal);
      if (exitCode !== undefined) {
        gaveUp = `PostgreSQL exited (${exitCode}) before recovery finished: ${await logTail()}`;
        break;
      }
      if (Date.now() - started > RECOVERY_TIMEOUT_MS) {
        gaveUp = `recovery did not finish within ${RECOVERY_TIMEOUT_MS / 3600_000} hours`;
        break;
      }
      try {
        const client = await connect('template1');
        try {
          const row = (await client.query<{ r: boolean; tli: string }>("select pg_is_in_recovery() as r, (select timeline_id::text from pg_control_checkpoint()) as tli")).rows[0]!;
          if (!row.r) ready = { timeline: row.tli };
        } finally {
          await client.end().catch(() => undefined);
        }
      } catch (err) {
        if (err instanceof BarmanError) {
          gaveUp = err.message;
          break;
        }
        // starting up, still recovering, socket not there yet: asked again shortly
      }
      if (!ready) await new Promise((r) => setTimeout(r, 250));
    }
    if (!ready) return fail('recovery', gaveUp!);
    checks.push({ name: 'recovery', ok: true, detail: `recovery finished, accepting connections (timeline ${ready.timeline}) ${((Date.now() - started) / 1000).toFixed(1)} s after the restore began` });
    log?.info('recovered and accepting connections; checking it');

    const amcheck = join(binDir, 'pg_amcheck');
    if (await fs.stat(amcheck).catch(() => undefined)) {
      const r = await runTool(amcheck, ['--all', '--install-missing', '-h', socketDir, '-p', String(port), '-U', role ?? 'postgres', '--no-password'], user, scratch);
      if (r.code === 0) checks.push({ name: 'pg_amcheck', ok: true, detail: 'every database checked, no corruption found' });
      // pg_amcheck without the amcheck extension on this host (no contrib package) checks nothing: said, not failed
      else if (/extension "amcheck" is not available|could not open extension control file/.test(r.output)) checks.push({ name: 'pg_amcheck', ok: true, detail: `skipped: the amcheck extension is not installed with ${binDir} (PostgreSQL's contrib)` });
      else return fail('pg_amcheck', `exit ${r.code}: ${r.output.trim().split('\n').slice(0, 6).join(' | ').slice(0, 1000)}`);
    } else {
      checks.push({ name: 'pg_amcheck', ok: true, detail: `skipped: ${binDir} has no pg_amcheck` });
    }

    if (server.drillQuery) {
      const database = server.drillDatabase ?? 'postgres';
      try {
        const client = await connect(database);
        try {
          const result = await client.query({ text: server.drillQuery, rowMode: 'array' });
          const first = (Array.isArray(result) ? result[result.length - 1] : result)?.rows?.[0] as unknown[] | undefined;
          checks.push({ name: 'drill_query', ok: true, detail: `in ${database}: ${first ? first.map(String).join(', ').slice(0, 200) : 'no rows'}` });
        } finally {
          await client.end().catch(() => undefined);
        }
      } catch (err) {
        return fail('drill_query', `in ${database}: ${(err as Error).message}`);
      }
    }
    const rto = Math.round((Date.now() - started) / 100) / 10;
    log?.info({ rtoSeconds: rto }, 'restore drill passed');
    return record(null, rto);
  } finally {
    options.signal?.removeEventListener('abort', stopOnAbort);
    if (postmaster) await stopCopy(postmaster);
    await fs.rm(scratch, { recursive: true, force: true }).catch((err: unknown) => log?.warn({ err: String(err), scratch }, 'cannot remove the drill\'s scratch directory'));
  }
}

/** A drill stopped on the way (serve stopping) is no result: it is not recorded. */
function throwIfStopped(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new BarmanError(ErrorCode.INTERNAL, 'the restore drill was stopped before it finished (the service is stopping)', 'Run the drill again.');
}

const SCRATCH_PREFIX = 'barman-drill-';

/**
 * The start of the names of a server's scratch directories in $TMPDIR: the server, and a short
 * hash of the catalog's barman_home, so that two receivers on one host with a server of the same
 * name never take each other's running drill for a leftover.
 */
export function drillScratchPrefix(barmanHome: string, server: string): string {
  return `${SCRATCH_PREFIX}${server}-${createHash('sha256').update(resolve(barmanHome)).digest('hex').slice(0, 8)}-`;
}
/** in a scratch directory: the process running that drill */
const OWNER_FILE = 'drill.owner';

/** A process's start time (field 22 of /proc/<pid>/stat), which tells it from a later one with the same PID. */
async function startTicksOf(pid: number): Promise<string | undefined> {
  const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  return stat?.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
}

/**
 * What a drill left behind when its process died (kill -9, a crash, a power cut): its scratch
 * directory and maybe its copy, still running. Removed at the start of the server's next drill;
 * a directory whose drill still runs (another `drill` command) is left alone.
 */
async function removeLeftovers(prefix: string, log: Logger | undefined): Promise<void> {
  for (const name of await fs.readdir(tmpdir()).catch(() => [] as string[])) {
    if (!name.startsWith(prefix)) continue;
    const dir = join(tmpdir(), name);
    const owner = await fs.readFile(join(dir, OWNER_FILE), 'utf8').then((t) => JSON.parse(t) as { pid: number; startTicks?: string }, () => undefined);
    if (owner && (await startTicksOf(owner.pid)) === owner.startTicks && owner.startTicks !== undefined) continue;
    const pid = Number((await fs.readFile(join(dir, 'pgdata', 'postmaster.pid'), 'utf8').catch(() => '')).split('\n')[0]);
    if (pid > 0 && (await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).includes(join(dir, 'pgdata'))) {
      log?.warn({ pid, dir }, 'a restored copy left running by an earlier drill: stopping it');
      try {
        process.kill(pid, 'SIGQUIT');
      } catch {
        // gone meanwhile
      }
      for (let i = 0; i < 100 && (await startTicksOf(pid)) !== undefined; i++) await new Promise((r) => setTimeout(r, 100));
    }
    log?.warn({ dir }, 'removing what an earlier drill left behind');
    await fs.rm(dir, { recursive: true, force: true }).catch(() => undefined);
  }
}

/** Fast shutdown; an immediate one (then a kill) for a copy that does not stop. */
async function stopCopy(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const within = (ms: number) => Promise.race([exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms).unref())]);
  for (const [signal, wait] of [['SIGINT', STOP_WAIT_MS], ['SIGQUIT', 10_000], ['SIGKILL', 10_000]] as const) {
    try {
      child.kill(signal);
    } catch {
      return;
    }
    if (await within(wait)) return;
  }
}
