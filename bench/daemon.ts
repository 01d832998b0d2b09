// Section "daemon": what `barman-agent daemon` buys, on one cluster under one load.
//   (a) archive_command = `barman-agent push %p`, no daemon: a process and a connection per segment;
//   (b) the same archive_command with the daemon running (streaming = on): it pushes .ready
//       segments ahead of PostgreSQL, and push answers from the daemon's durable ack;
//   (c) archive_command = `cp %p <dir>/%f && sync`, the baseline.
// Each mode runs the same pgbench (the fastest this machine runs) while archive_status is sampled
// every 250 ms, then a WAL switch and the drain until nothing is left to archive. Then, with the
// daemon streaming under light load: ms from a commit returning to the receiver's flush of it
// (as PostgreSQL sees it: pg_stat_replication.flush_lsn of the daemon's application_name, which
// only moves when the receiver reported its fsync); and the RPO of an immediate stop without a
// WAL switch (recover latest from the catalog, count rows against the primary's).

import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Client } from 'pg';
import type { OpenServer } from '../receiver/catalog/open';
import { Background, CpuBusy, freePort, now, percentile, readyCount, sleep, sqlSession, startRecoveredCopy, tailMatching, value } from './daemon-lib';
import {
  BenchCluster,
  type BenchContext,
  copyStoredWal,
  fmtMs,
  fmtRatio,
  loadAverage,
  markdownTable,
  openCatalog,
  postgresAgentConfig,
  postgresDir,
  procCpuSeconds,
  runOk,
  type SectionResult,
  startReceiver,
  stats,
} from './lib';

const SERVER = 'main';
const SLOT = 'barman_main';
const APPLICATION_NAME = 'barman_receive_main';
const SCALE = Number(process.env.BENCH_DAEMON_SCALE ?? 10);
const LOAD_SECONDS = Number(process.env.BENCH_DAEMON_SECONDS ?? 30);
const LAG_PROBES = Number(process.env.BENCH_DAEMON_PROBES ?? 200);
/** rounds of ~15 MB of inserts + pg_switch_wal() that make the backlog of the capacity runs */
const BACKLOG_ROUNDS = Number(process.env.BENCH_DAEMON_BACKLOG ?? 32);
const ACK_PROBES = 10;
/** the heavy load: pgbench's simple-update script without the contended branch/teller updates */
const HEAVY = ['-n', '-N', '-M', 'prepared', '-c', '4', '-j', '2'];
/** the light steady load under the lag and RPO measurements (transactions per second) */
const LIGHT_RATE = 200;
const SAMPLE_MS = 250;
const POLL_MS = 5;
const PROBE_TIMEOUT_MS = 10_000;
const DRAIN_TIMEOUT_MS = 300_000;
/** port of the recovered copy (on its own socket folder) */
const COPY_PORT = 5434;

type ModeKey = 'push' | 'daemon' | 'cp';

interface ArchiverStats {
  archived: number;
  failed: number;
  last: string;
}

interface ModeRun {
  key: ModeKey;
  loadMs: number;
  tps: number;
  walBytes: number;
  archivedDuringLoad: number;
  archivedTotal: number;
  failed: number;
  /** .ready counts sampled every SAMPLE_MS while pgbench ran */
  ready: number[];
  readyAtLoadEnd: number;
  /** pgbench's end to nothing left to archive (WAL switch included) */
  drainMs: number;
  /** busy share of all CPUs while pgbench ran */
  cpuBusy: number;
  receiverCpu: number;
  daemonCpu?: number;
  loadAverage: string;
}

/** A ready-made backlog archived by a mode, with nothing else going on. */
interface CapacityRun {
  key: ModeKey;
  segments: number;
  /** archive_command set (and the daemon started, in mode daemon) → PostgreSQL has archived them all */
  archivedMs: number;
  /** → every one of them is in the catalog, final name (push and daemon modes) */
  durableMs?: number;
  failed: number;
  receiverCpu: number;
  daemonCpu?: number;
  loadAverage: string;
}

/** `barman-agent push` answered from a durable ack, next to the agent's bare start-up (ms each). */
interface AckPushRun {
  push: number[];
  startup: number[];
}

interface LagRun {
  lags: number[];
  /** the time between the last poll that did not see the flush and the one that did */
  windows: number[];
  pgFlushLag: number[];
  timeouts: number;
  /** the waits between polls: how many, and how long they took (setTimeout overshoots) */
  sleeps: number;
  sleptMs: number;
  firstPollHits: number;
  status: { state: string; flush_lsn: string | null; server_lsn: string | null; lag_bytes: number | null; rpo_seconds: number | null };
  lightTps: number;
}

interface RpoRun {
  backupId: string;
  backupMs: number;
  /** commit of the marker returned → pg_ctl stop -m immediate returned */
  stopMs: number;
  markerInCopy: boolean;
  primary: { history: number; probes: number; markers: number };
  copy: { history: number; probes: number; markers: number };
  recoverMs: number;
  copyStartMs: number;
  /** the daemon's stream was back on the restarted primary */
  streamResumed: boolean;
  /** `status --json` streaming.flush_lsn after the crash, before recovery */
  receiverFlushLsn: string | null;
  /** crash recovery's "redo done at": where the last WAL record of the primary starts */
  primaryRedoDone: string | undefined;
  /** bytes from the receiver's flush position to that record's start (negative: the receiver has it) */
  unstreamedBytes: number | undefined;
}

export async function daemonSection(ctx: BenchContext): Promise<SectionResult> {
  const dir = postgresDir(join(ctx.workDir, 'daemon'));
  const node = process.execPath;
  const agent = join(ctx.repoRoot, 'dist', 'barman-agent.cjs');
  const receiverCli = join(ctx.repoRoot, 'dist', 'barman-receiver.cjs');
  const pgbench = join(ctx.pgBin, 'pgbench');

  const receiver = await startReceiver(join(dir, 'receiver'), ctx.repoRoot, ctx.cleanup, SERVER, { listen: `127.0.0.1:${await freePort()}`, compression: 'none' });
  const catalog = await openCatalog(receiver, SERVER, ctx.cleanup);
  const clusterDir = join(dir, 'cluster');
  const agentConf = postgresAgentConfig(receiver, join(dir, 'agent'), SERVER, {
    conninfo: `host=${join(clusterDir, 'socket')} port=5432 user=postgres dbname=postgres`,
    pgdata: join(clusterDir, 'pgdata'),
    streaming: 'on',
    slot_name: SLOT,
    create_slot: 'auto',
    application_name: APPLICATION_NAME,
    log_level: 'info',
  });
  const cluster = await BenchCluster.start(clusterDir, ctx.pgBin, ctx.cleanup, {
    archive_mode: 'on',
    // empty: PostgreSQL keeps .ready files until a command is set (each mode sets its own)
    archive_command: "''",
    max_wal_size: "'4GB'",
    checkpoint_timeout: "'1h'",
  });
  const target = ['-h', cluster.socketDir, '-p', String(cluster.port), '-U', 'postgres', 'postgres'];
  const ctl = await sqlSession(cluster.socketDir, cluster.port, ctx.cleanup, 'control');
  const segmentBytes = Number(await value(ctl, "select setting from pg_settings where name = 'wal_segment_size'")); // in bytes (unit B) since PostgreSQL 11

  ctx.log(`daemon: pgbench -i -s ${SCALE}`);
  await runOk(pgbench, ['-i', '-q', '-s', String(SCALE), ...target], { asPostgres: true, cwd: clusterDir });
  await ctl.query('create table lag_probe (id int primary key, at timestamptz not null default clock_timestamp())');
  await ctl.query('create table rpo_marker (id int primary key, note text not null)');
  await ctl.query('create table filler (id int, pad text)');

  let daemon: Background | undefined;
  const archiverStats = async (): Promise<ArchiverStats> => {
    const r = (await ctl.query<{ a: string; f: string; l: string }>("select archived_count as a, failed_count as f, coalesce(last_archived_wal, '') as l from pg_stat_archiver")).rows[0]!;
    return { archived: Number(r.a), failed: Number(r.f), last: r.l };
  };
  const walLsn = () => value(ctl, 'select pg_current_wal_lsn()::text');
  const walBytesBetween = async (from: string, to: string) => Number(await value(ctl, 'select pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)', [to, from]));

  /** What a stuck archiver left behind: PostgreSQL's archiving errors, the catalog's errors/, the daemon's and receiver's last words. */
  const evidence = () => {
    const pgLog = join(clusterDir, 'postgresql.log');
    const errorsDir = join(receiver.barmanHome, SERVER, 'errors');
    return [
      `--- ${pgLog} (archiving)`, tailMatching(pgLog, /archiv|ERROR|HINT/),
      `--- ${errorsDir}`, existsSync(errorsDir) ? readdirSync(errorsDir).join(' ') : '(none)',
      '--- daemon (end)', daemon?.output().slice(-3000) ?? '(not running)',
      '--- receiver (end)', receiver.logTail().slice(-3000),
    ].join('\n');
  };

  /** Switches WAL and waits until every .ready file is gone and the switched segment is archived; ms taken. */
  const drain = async (what: string): Promise<number> => {
    const started = now();
    const seg = await value(ctl, 'select pg_walfile_name(pg_switch_wal())');
    for (;;) {
      const st = await archiverStats();
      const ready = readyCount(cluster.pgdata);
      if (ready === 0 && st.last >= seg) return now() - started;
      if (now() - started > DRAIN_TIMEOUT_MS) {
        throw new Error(`${what}: ${ready} segments still .ready (last archived ${st.last || 'none'}, waiting for ${seg}, ${st.failed} failures) after ${DRAIN_TIMEOUT_MS / 1000} s\n${evidence()}`);
      }
      await sleep(20);
    }
  };

  const setArchiveCommand = async (command: string, settle = true) => {
    await ctl.query(`alter system set archive_command = '${command.replaceAll("'", "''")}'`);
    await ctl.query('select pg_reload_conf()');
    if (settle) await sleep(300); // the archiver rereads its settings on SIGHUP, between two segments
  };

  const commands: Record<ModeKey, string> = {
    push: `${node} ${agent} -c ${agentConf} push %p`,
    daemon: `${node} ${agent} -c ${agentConf} push %p`,
    cp: `cp %p ${postgresDir(join(dir, 'cp-archive'))}/%f && sync`,
  };

  const startDaemon = async () => {
    ctx.log('daemon: starting barman-agent daemon (streaming = on)');
    daemon = new Background(node, [agent, 'daemon', '-c', agentConf], { cwd: join(dir, 'agent'), asPostgres: true, cleanup: ctx.cleanup, what: 'barman-agent daemon', logFile: join(dir, 'agent', 'daemon.log') });
  };

  /**
   * Capacity: with archiving paused (archive_command '', no daemon), BACKLOG_ROUNDS rounds of
   * inserts and WAL switches leave a backlog of .ready segments; then the mode's command is set
   * (and the daemon started) and the clock runs until PostgreSQL has archived them all.
   */
  const capacity = async (key: ModeKey): Promise<CapacityRun> => {
    await setArchiveCommand('');
    await ctl.query('truncate filler');
    for (let i = 0; i < BACKLOG_ROUNDS; i++) {
      await ctl.query("insert into filler select g, repeat('x', 900) from generate_series(1, 15000) g");
      await ctl.query('select pg_switch_wal()');
    }
    await ctl.query('checkpoint');
    await runOk('sync', []);
    const names = readdirSync(join(cluster.pgdata, 'pg_wal', 'archive_status')).filter((n) => /^[0-9A-F]{24}\.ready$/.test(n)).map((n) => n.slice(0, 24));
    const loadAvg = loadAverage();
    ctx.log(`daemon: capacity ${key}: ${names.length} segments ready (load average ${loadAvg})`);
    const before = await archiverStats();
    const receiverCpu0 = procCpuSeconds(receiver.pid);
    const started = now();
    if (key === 'daemon') await startDaemon();
    await setArchiveCommand(commands[key], false);
    const daemonCpu0 = daemon ? procCpuSeconds(daemon.pid) : 0;
    let durableMs: number | undefined;
    for (;;) {
      const t = now() - started;
      if (durableMs === undefined && key !== 'cp') {
        const stored = new Set(await catalog.catalog.listSegments());
        if (names.every((n) => stored.has(n))) durableMs = t;
      }
      const st = await archiverStats();
      if ((durableMs !== undefined || key === 'cp') && st.archived - before.archived >= names.length && readyCount(cluster.pgdata) === 0) {
        return { key, segments: names.length, archivedMs: now() - started, durableMs, failed: st.failed - before.failed, receiverCpu: procCpuSeconds(receiver.pid) - receiverCpu0, daemonCpu: daemon ? procCpuSeconds(daemon.pid) - daemonCpu0 : undefined, loadAverage: loadAvg };
      }
      if (t > DRAIN_TIMEOUT_MS) throw new Error(`capacity ${key}: ${readyCount(cluster.pgdata)} of ${names.length} segments still .ready after ${DRAIN_TIMEOUT_MS / 1000} s (${st.failed - before.failed} failures)\n${evidence()}`);
      await sleep(20);
    }
  };

  const runMode = async (key: ModeKey): Promise<ModeRun> => {
    await setArchiveCommand(commands[key]);
    // what earlier steps left (pgbench -i's WAL, the switch) is archived before the clock starts,
    // every mode starts right after a checkpoint (the same full-page-image share of its WAL) and
    // with the kernel's dirty pages written back
    await drain(`${key}: before the load`);
    await ctl.query('checkpoint');
    await runOk('sync', []);
    const loadAvg = loadAverage();
    ctx.log(`daemon: mode ${key}: pgbench ${HEAVY.join(' ')} -T ${LOAD_SECONDS} (load average ${loadAvg})`);
    const before = await archiverStats();
    const lsn0 = await walLsn();
    const receiverCpu0 = procCpuSeconds(receiver.pid);
    const daemonCpu0 = daemon ? procCpuSeconds(daemon.pid) : 0;
    const ready: number[] = [];
    const sampler = setInterval(() => ready.push(readyCount(cluster.pgdata)), SAMPLE_MS);
    const cpu = new CpuBusy();
    const started = now();
    let bench;
    try {
      ready.push(readyCount(cluster.pgdata));
      bench = await runOk(pgbench, [...HEAVY, '-T', String(LOAD_SECONDS), ...target], { asPostgres: true, cwd: clusterDir });
    } finally {
      clearInterval(sampler);
    }
    const loadMs = now() - started;
    const cpuBusy = cpu.share();
    const readyAtLoadEnd = readyCount(cluster.pgdata);
    const mid = await archiverStats();
    const lsn1 = await walLsn();
    const drainMs = await drain(`${key}: after the load`);
    const after = await archiverStats();
    const tps = Number(/tps = ([\d.]+) \(without initial connection time\)/.exec(bench.stdout)?.[1] ?? Number.NaN);
    return {
      key,
      loadMs,
      tps,
      walBytes: await walBytesBetween(lsn0, lsn1),
      archivedDuringLoad: mid.archived - before.archived,
      archivedTotal: after.archived - before.archived,
      failed: after.failed - before.failed,
      ready,
      readyAtLoadEnd,
      drainMs,
      cpuBusy,
      receiverCpu: procCpuSeconds(receiver.pid) - receiverCpu0,
      daemonCpu: daemon ? procCpuSeconds(daemon.pid) - daemonCpu0 : undefined,
      loadAverage: loadAvg,
    };
  };

  // the baseline first, then per-call push, then the daemon, which stays on for the lag and RPO
  // measurements (its replication slot would hold WAL back while it is off, so it is created last);
  // each mode: its capacity run, then its run under load
  const modes: ModeRun[] = [];
  const capacities: CapacityRun[] = [];
  for (const key of ['cp', 'push', 'daemon'] as const) {
    capacities.push(await capacity(key));
    if (key === 'daemon') await daemon!.waitForLine(/"msg":"streaming WAL"/, 60_000);
    modes.push(await runMode(key));
  }
  await ctl.query('truncate filler');

  // what one archive_command costs PostgreSQL when the daemon was first: a segment (copied from the
  // catalog, under a name no cluster here uses) with its ack in the spool, pushed by a fresh
  // process as PostgreSQL would, next to `barman-agent --version` (start-up and no work)
  ctx.log('daemon: push answered from the ack vs agent start-up');
  const ackProbe: AckPushRun = { push: [], startup: [] };
  {
    const name = '000000FF00000000000000FF';
    const probeDir = postgresDir(join(dir, 'ack-probe'));
    const seg = join(probeDir, name);
    const source = (await catalog.catalog.listSegments())[0]!;
    await copyStoredWal(catalog, source, seg);
    const ackDir = postgresDir(join(dir, 'agent', 'spool', 'acked'));
    writeFileSync(join(ackDir, name), `${createHash('sha256').update(readFileSync(seg)).digest('hex')}\n`, { mode: 0o600 });
    await runOk('chown', ['postgres:postgres', seg, join(ackDir, name)]);
    for (let i = 0; i < ACK_PROBES; i++) {
      ackProbe.startup.push((await runOk(node, [agent, '--version'], { asPostgres: true, cwd: probeDir })).ms);
      // were the ack not taken, this would send a foreign segment, which the receiver refuses (exit 1)
      ackProbe.push.push((await runOk(node, [agent, '-c', agentConf, 'push', seg], { asPostgres: true, cwd: probeDir })).ms);
    }
    rmSync(join(ackDir, name), { force: true });
  }
  const catalogCheck = await checkCatalog(catalog, segmentBytes, [...modes, ...capacities].filter((m) => m.key !== 'cp').map((m) => ('archivedTotal' in m ? m.archivedTotal : m.segments)));

  // ---- (d) streaming lag under a light steady load ----------------------------------------------
  ctx.log(`daemon: streaming lag, ${LAG_PROBES} probe commits under pgbench -R ${LIGHT_RATE}`);
  const light = () => new Background(pgbench, ['-n', '-N', '-c', '2', '-j', '1', '-R', String(LIGHT_RATE), '-T', '3600', ...target], { cwd: clusterDir, asPostgres: true, cleanup: ctx.cleanup, what: 'light pgbench' });
  const lightLoad = light();
  const probe = await sqlSession(cluster.socketDir, cluster.port, ctx.cleanup, 'lag probe');
  const watch = await sqlSession(cluster.socketDir, cluster.port, ctx.cleanup, 'lag watch');
  await sleep(2000);
  const historyBefore = Number(await value(ctl, 'select count(*) from pgbench_history'));
  const lagStarted = now();
  const lag: LagRun = { lags: [], windows: [], pgFlushLag: [], timeouts: 0, sleeps: 0, sleptMs: 0, firstPollHits: 0, status: { state: '?', flush_lsn: null, server_lsn: null, lag_bytes: null, rpo_seconds: null }, lightTps: 0 };
  for (let i = 0; i < LAG_PROBES; i++) {
    await probe.query('insert into lag_probe (id) values ($1)', [i]);
    const committed = now();
    // the commit record ends at or before the flush position once the commit returned
    const lsn = await value(probe, 'select pg_current_wal_flush_lsn()::text');
    let previous = committed;
    for (let polls = 1; ; polls++) {
      const row = (await watch.query<{ ok: boolean; lag_ms: number | null }>('select flush_lsn >= $1::pg_lsn as ok, extract(epoch from flush_lag) * 1000 as lag_ms from pg_stat_replication where application_name = $2', [lsn, APPLICATION_NAME])).rows[0];
      const t = now();
      if (row?.ok) {
        lag.lags.push(t - committed);
        lag.windows.push(t - previous);
        if (row.lag_ms !== null) lag.pgFlushLag.push(Number(row.lag_ms));
        if (polls === 1) lag.firstPollHits++;
        break;
      }
      if (t - committed > PROBE_TIMEOUT_MS) {
        lag.timeouts++;
        break;
      }
      previous = t;
      await sleep(POLL_MS);
      lag.sleeps++;
      lag.sleptMs += now() - t;
    }
    await sleep(10 + Math.random() * 40); // probes out of step with pgbench's schedule
  }
  const lagSeconds = (now() - lagStarted) / 1000;
  lag.lightTps = (Number(await value(ctl, 'select count(*) from pgbench_history')) - historyBefore) / lagSeconds;
  const status = JSON.parse((await runOk(node, [receiverCli, 'status', '-c', receiver.config, SERVER, '--json'])).stdout) as { streaming: LagRun['status']; rpo_seconds: number | null };
  lag.status = { ...status.streaming, rpo_seconds: status.rpo_seconds };
  await lightLoad.stop();

  // ---- (e) RPO of an immediate stop --------------------------------------------------------------
  ctx.log('daemon: RPO: backup through the daemon, then an immediate stop right after a commit');
  const backupStarted = now();
  const backupId = (await runOk(node, [receiverCli, 'backup', '-c', receiver.config, SERVER, '--wait'])).stdout.trim();
  const backupMs = now() - backupStarted;
  const crashLoad = light();
  await sleep(3000);
  const agentDaemon = daemon!;
  const streamLinesBefore = agentDaemon.output().split('\n').filter((l) => l.includes('"msg":"streaming WAL"')).length;
  await probe.query("insert into rpo_marker values (1, 'committed just before the crash')");
  const markerCommitted = now();
  await cluster.stop('immediate'); // pg_ctl stop -m immediate: no checkpoint, no WAL switch
  const stopMs = now() - markerCommitted;
  await crashLoad.stop(); // its connections died with the server
  await sleep(2000); // whatever the daemon had in flight reaches the receiver (or not)
  const crashed = JSON.parse((await runOk(node, [receiverCli, 'status', '-c', receiver.config, SERVER, '--json'])).stdout) as { streaming: { flush_lsn: string | null } };

  const rpoDir = postgresDir(join(dir, 'rpo'));
  const dest = join(rpoDir, 'pgdata');
  const recoverStarted = now();
  await runOk(node, [receiverCli, 'recover', '-c', receiver.config, SERVER, 'latest', dest], { cwd: rpoDir });
  const recoverMs = now() - recoverStarted;
  const copy = await startRecoveredCopy(ctx.pgBin, dest, rpoDir, COPY_PORT, ctx.cleanup);
  const counts = async (c: Client) => ({
    history: Number(await value(c, 'select count(*) from pgbench_history')),
    probes: Number(await value(c, 'select count(*) from lag_probe')),
    markers: Number(await value(c, 'select count(*) from rpo_marker')),
  });
  const copyCounts = await counts(copy.sql);
  await copy.stop();

  // the primary comes back (crash recovery): what it holds is what was committed
  const pgCtl = join(ctx.pgBin, 'pg_ctl');
  ctx.cleanup.add(`stop restarted primary ${cluster.pgdata}`, async () => {
    if (existsSync(join(cluster.pgdata, 'postmaster.pid'))) await runOk(pgCtl, ['-D', cluster.pgdata, '-m', 'immediate', '-w', 'stop'], { asPostgres: true, cwd: clusterDir });
  });
  const pgLog = join(clusterDir, 'postgresql.log');
  await runOk(pgCtl, ['-D', cluster.pgdata, '-l', pgLog, '-w', '-t', '300', 'start'], { asPostgres: true, cwd: clusterDir });
  const after = await sqlSession(cluster.socketDir, cluster.port, ctx.cleanup, 'after restart');
  const primaryCounts = await counts(after);
  const primaryRedoDone = /redo done at ([0-9A-F]+\/[0-9A-F]+)/.exec(tailMatching(pgLog, /redo done at/, 1))?.[1];
  const receiverFlushLsn = crashed.streaming.flush_lsn;
  const unstreamedBytes = primaryRedoDone && receiverFlushLsn ? Number(await value(after, 'select pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)', [primaryRedoDone, receiverFlushLsn])) : undefined;
  const streamResumed = await agentDaemon.waitForLine(/"msg":"streaming WAL"/, 60_000, streamLinesBefore).then(() => true, () => false);
  await after.end();

  const termStarted = now();
  // SIGTERM should drain and exit; 45 s before SIGKILL, so a slow stop is measured rather than cut short
  const daemonExit = await agentDaemon.stop('SIGTERM', 45_000);
  const daemonStopMs = now() - termStarted;
  const pushedLine = agentDaemon.output().split('\n').find((l) => l.includes('"msg":"daemon stopped"'));
  const daemonPushed = pushedLine ? (JSON.parse(pushedLine) as { pushed?: number }).pushed : undefined;
  await runOk(pgCtl, ['-D', cluster.pgdata, '-m', 'fast', '-w', 'stop'], { asPostgres: true, cwd: clusterDir });
  await receiver.stop();

  const rpo: RpoRun = { backupId, backupMs, stopMs, markerInCopy: copyCounts.markers === 1, primary: primaryCounts, copy: copyCounts, recoverMs, copyStartMs: copy.ms, streamResumed, receiverFlushLsn, primaryRedoDone, unstreamedBytes };
  return {
    title: 'daemon: archiving with per-call `push`, with the daemon, with `cp && sync`; streaming lag; RPO of an immediate stop',
    markdown: report(modes, capacities, ackProbe, lag, rpo, { segmentBytes, catalogCheck, daemonExit: daemonExit.code ?? daemonExit.signal ?? '?', daemonStopMs, daemonPushed }),
  };
}

/** The catalog holds at least as many segments as the push and daemon modes archived, each a whole segment. */
async function checkCatalog(open: OpenServer, segmentBytes: number, counts: number[]): Promise<string> {
  const segments = await open.catalog.listSegments();
  const archived = counts.reduce((a, b) => a + b, 0);
  if (segments.length < archived) throw new Error(`the catalog holds ${segments.length} WAL segments, PostgreSQL archived ${archived} through push in the push and daemon modes`);
  const wrong: string[] = [];
  for (const name of segments) {
    // stored plain (compression none): the stored size is the segment's
    const stored = await open.catalog.findWal(name);
    if (stored?.compression !== 'none' || stored.size !== segmentBytes) wrong.push(name);
  }
  if (wrong.length > 0) throw new Error(`catalog segments of the wrong size: ${wrong.slice(0, 5).join(', ')}`);
  return `the catalog holds ${segments.length} whole WAL segments (PostgreSQL archived ${archived} through \`push\` in modes (a) and (b), the rest came before them)`;
}

function report(modes: ModeRun[], capacities: CapacityRun[], ackProbe: AckPushRun, lag: LagRun, rpo: RpoRun, extra: { segmentBytes: number; catalogCheck: string; daemonExit: number | string; daemonStopMs: number; daemonPushed: number | undefined }): string {
  const labels: Record<ModeKey, string> = {
    push: '(a) `barman-agent push %p`, no daemon',
    daemon: '(b) `barman-agent push %p` + `barman-agent daemon` (streaming on)',
    cp: '(c) `cp %p <dir>/%f && sync` (baseline)',
  };
  const order: ModeKey[] = ['push', 'daemon', 'cp'];
  const byKey = (k: ModeKey) => modes.find((m) => m.key === k)!;
  const capOf = (k: ModeKey) => capacities.find((c) => c.key === k)!;
  const segs = (bytes: number) => bytes / extra.segmentBytes;
  const f1 = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : '?');
  const f2 = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : '?');
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
  const perLoad = (m: ModeRun) => m.archivedDuringLoad / (m.loadMs / 1000);
  const overall = (m: ModeRun) => m.archivedTotal / ((m.loadMs + m.drainMs) / 1000);
  const capRate = (c: CapacityRun) => c.segments / (c.archivedMs / 1000);
  const cpu = (receiver: number, daemon: number | undefined) => `${f1(receiver)} / ${daemon === undefined ? '–' : f1(daemon)}`;

  const modeTable = markdownTable(
    ['archive_command', 'pgbench tps', 'WAL MB/s', 'segments made/s', 'archived/s during load', 'archived/s load + drain', '.ready max', '.ready mean', '.ready at load end', 'drain s', 'failed', 'CPU busy', 'CPU s receiver / daemon'],
    order.map((k) => {
      const m = byKey(k);
      return [
        labels[k], f1(m.tps), f1(m.walBytes / 1e6 / (m.loadMs / 1000)), f2(segs(m.walBytes) / (m.loadMs / 1000)), f2(perLoad(m)), f2(overall(m)),
        String(Math.max(...m.ready)), f1(mean(m.ready)), String(m.readyAtLoadEnd), f1(m.drainMs / 1000), String(m.failed), `${(m.cpuBusy * 100).toFixed(0)} %`, cpu(m.receiverCpu, m.daemonCpu),
      ];
    }),
  );
  const capacityTable = markdownTable(
    ['archive_command', 'backlog (segments)', 'until PostgreSQL archived all, s', 'segments/s', 'ms per segment', 'until all in the catalog, s', 'failed', 'CPU s receiver / daemon'],
    order.map((k) => {
      const c = capOf(k);
      return [labels[k], String(c.segments), f1(c.archivedMs / 1000), f2(capRate(c)), fmtMs(c.archivedMs / c.segments), c.durableMs === undefined ? '–' : f1(c.durableMs / 1000), String(c.failed), cpu(c.receiverCpu, c.daemonCpu)];
    }),
  );

  const p = (xs: number[], q: number) => fmtMs(percentile(xs, q));
  const row = (what: string, xs: number[]) => [what, String(xs.length), p(xs, 50), p(xs, 90), p(xs, 99), p(xs, 100)];
  const lowerBounds = lag.lags.map((l, i) => l - lag.windows[i]!);
  const lagTable = markdownTable(
    ['commit → receiver flush (ms)', 'n', 'p50', 'p90', 'p99', 'max'],
    [
      row('measured: commit returned → pg_stat_replication.flush_lsn ≥ its LSN', lag.lags),
      row('… lower bound (the last poll that had not seen it yet)', lowerBounds),
      row("PostgreSQL's own `flush_lag` at that moment", lag.pgFlushLag),
    ],
  );

  const lost = (k: 'history' | 'probes' | 'markers') => rpo.primary[k] - rpo.copy[k];
  const totalLost = lost('history') + lost('probes') + lost('markers');
  const rpoTable = markdownTable(
    ['committed rows', 'primary after crash recovery', 'recovered copy (latest)', 'lost'],
    [
      ['marker row committed right before the stop', String(rpo.primary.markers), String(rpo.copy.markers), String(lost('markers'))],
      [`pgbench_history (pgbench -R ${LIGHT_RATE} running through the stop)`, String(rpo.primary.history), String(rpo.copy.history), String(lost('history'))],
      ['lag_probe (from the lag measurement)', String(rpo.primary.probes), String(rpo.copy.probes), String(lost('probes'))],
    ],
  );

  const daemonMode = byKey('daemon');
  const pushMode = byKey('push');
  const cpMode = byKey('cp');
  const met = (ok: boolean) => (ok ? 'met' : '**not met**');
  const lagP99 = percentile(lag.lags, 99);
  const readyMax = (m: ModeRun) => Math.max(...m.ready);
  const keptUp = modes.every((m) => m.readyAtLoadEnd <= 1 && readyMax(m) <= 2);
  const goals = markdownTable(
    ['goal', 'measured', ''],
    [
      ['the daemon archives faster than `cp && sync` (capacity: a backlog archived with nothing else running)', `${f2(capRate(capOf('daemon')))} vs ${f2(capRate(capOf('cp')))} segments/s (${fmtRatio(capRate(capOf('daemon')) / capRate(capOf('cp')))}); per-call push ${f2(capRate(capOf('push')))}`, met(capRate(capOf('daemon')) > capRate(capOf('cp')))],
      ['… and under load (segments/s over load + drain; bounded by the WAL pgbench made)', `${f2(overall(daemonMode))} vs ${f2(overall(cpMode))} (per-call push ${f2(overall(pushMode))}); pgbench made ${f2(segs(daemonMode.walBytes) / (daemonMode.loadMs / 1000))} vs ${f2(segs(cpMode.walBytes) / (cpMode.loadMs / 1000))} segments/s`, keptUp ? 'not decided by this load: every mode kept up, so each archived what its pgbench made' : met(overall(daemonMode) > overall(cpMode))],
      ['the daemon never lets the .ready backlog grow under the fastest pgbench', `max ${readyMax(daemonMode)}, ${daemonMode.readyAtLoadEnd} at the end of the load (per-call push: max ${readyMax(pushMode)}; cp: max ${readyMax(cpMode)})`, met(readyMax(daemonMode) <= 2 && daemonMode.readyAtLoadEnd <= 1)],
      ['streaming lag p99 < 100 ms', `${fmtMs(lagP99)} ms (p50 ${fmtMs(percentile(lag.lags, 50))} ms, ${lag.timeouts} probes not flushed within ${PROBE_TIMEOUT_MS / 1000} s)`, met(lagP99 < 100 && lag.timeouts === 0)],
      ['RPO after an immediate stop: 0 lost transactions', `${totalLost} lost; the marker row ${rpo.markerInCopy ? 'is' : 'is **not**'} in the recovered copy`, met(totalLost === 0)],
    ],
  );

  const meanSleep = lag.sleptMs / Math.max(1, lag.sleeps);
  const unstreamed = rpo.unstreamedBytes === undefined ? 'could not be compared' : rpo.unstreamedBytes > 0 ? `starts ${rpo.unstreamedBytes} bytes past it` : `lies within it (${-rpo.unstreamedBytes} bytes before its end)`;
  return [
    `One cluster (\`pgbench -i -s ${SCALE}\`, synchronous_commit on, fsync on, max_wal_size 4GB), one \`barman-receiver serve\` on this host (compression none, \`barman_home\` on the same disk as the \`cp\` folder). Modes in this order, each first its capacity run, then its run under load: (c), (a), (b) — the daemon comes last because its replication slot would hold WAL back while it is off, and it stays on for the lag and RPO measurements.`,
    '',
    `**Under load.** Every mode runs \`pgbench ${HEAVY.join(' ')} -T ${LOAD_SECONDS}\` (the fastest this 2-CPU machine runs: no contended branch/teller updates, prepared statements), right after a checkpoint with the archiver idle; \`.ready\` files in \`pg_wal/archive_status\` are counted every ${SAMPLE_MS} ms while it runs and \`pg_stat_archiver.archived_count\` is read before and after. Then \`pg_switch_wal()\` and the drain, until no \`.ready\` file is left and the switched segment is \`last_archived_wal\` (bounded at ${DRAIN_TIMEOUT_MS / 60_000} minutes).`,
    '',
    modeTable,
    '',
    `With the daemon on, pgbench ran at ${(100 * daemonMode.tps / pushMode.tps).toFixed(0)} % of its rate with per-call push alone (${(100 * daemonMode.tps / cpMode.tps).toFixed(0)} % of the \`cp\` run): the walsender, the daemon and the receiver share the two CPUs with it, and the receiver takes in every segment twice, streamed and pushed by the daemon's archiver (whichever arrives second is read whole, hashed and dropped as a duplicate).`,
    '',
    `"segments made/s" is the WAL pgbench wrote (pg_current_wal_lsn() before and after, in ${extra.segmentBytes / 1048576} MiB segments); while "archived/s during load" keeps up with it the backlog stays flat, and then archived/s only says how much WAL the load made. CPU busy is the share of both CPUs in use while pgbench ran (every process on the machine, other work included); CPU s are the receiver's and the daemon's own user + system seconds over load and drain.`,
    '',
    `**Capacity.** With archiving paused (\`archive_command = ''\`, no daemon), ${BACKLOG_ROUNDS} rounds of ~15 MB of inserts + \`pg_switch_wal()\` leave a backlog of \`.ready\` segments; the clock starts when the mode's archive_command is set (and, in (b), the daemon is started: its start-up is in the time) and stops when PostgreSQL has archived them all. "until all in the catalog" is when every one of them was in the receiver's \`wals/\` under its final name (durable).`,
    '',
    capacityTable,
    '',
    `PostgreSQL's archiver runs archive_command for one segment at a time and counts a segment archived only when that command returns, so with the daemon each segment still costs one \`barman-agent push\` process, which finds the daemon's ack, hashes the local file and compares: measured alone (${ackProbe.push.length} runs, a 16 MiB segment with its ack in the spool), median ${fmtMs(stats(ackProbe.push).median)} ms (p95 ${fmtMs(stats(ackProbe.push).p95)}), of which ${fmtMs(stats(ackProbe.startup).median)} ms is the agent's start-up alone (\`barman-agent --version\`, median, p95 ${fmtMs(stats(ackProbe.startup).p95)}). That puts a ceiling of about ${f1(1000 / stats(ackProbe.push).median)} segments/s on archiving with the daemon, whatever the daemon itself achieves.`,
    '',
    `Checks: ${extra.catalogCheck}; the daemon exited ${extra.daemonExit} on SIGTERM after ${fmtMs(extra.daemonStopMs)} ms${extra.daemonPushed === undefined ? '' : ` and had pushed ${extra.daemonPushed} files ahead of PostgreSQL over the whole run`}.`,
    '',
    `### Streaming lag (daemon streaming, pgbench -R ${LIGHT_RATE} -c 2 running: ${f1(lag.lightTps)} tps)`,
    '',
    `${lag.lags.length + lag.timeouts} probe commits (single-row inserts on a connection of their own, 10–50 ms apart); after each, pg_current_wal_flush_lsn() is read and pg_stat_replication.flush_lsn of \`application_name = ${APPLICATION_NAME}\` polled until it reaches that LSN. That column is the position the daemon reported back, and the daemon reports only what the receiver has fsynced into \`streaming/<segment>.partial\`, so this is commit → durable on the backup host → known to PostgreSQL.`,
    '',
    lagTable,
    '',
    `Resolution: polls ${POLL_MS} ms apart (setTimeout; measured mean ${f1(meanSleep)} ms) plus a query round trip each; the true lag lies between the first two rows. ${lag.firstPollHits} of ${lag.lags.length} probes were already flushed at the first poll (about a millisecond after the commit returned).`,
    `\`barman-receiver status ${SERVER} --json\` right after: streaming.state ${lag.status.state}, flush_lsn ${lag.status.flush_lsn ?? '–'}, server_lsn ${lag.status.server_lsn ?? '–'}, lag_bytes ${lag.status.lag_bytes ?? '–'}, rpo_seconds ${lag.status.rpo_seconds ?? '–'}.`,
    '',
    '### RPO of an immediate stop',
    '',
    `A catalog backup first (\`barman-receiver backup ${SERVER} --wait\`, taken by the daemon: ${rpo.backupId}, ${f1(rpo.backupMs / 1000)} s). With pgbench -R ${LIGHT_RATE} running and the daemon streaming (asynchronously: no synchronous_standby_names), one marker row is committed and \`pg_ctl stop -m immediate\` run as soon as the commit returns (no WAL switch; pg_ctl returned ${fmtMs(rpo.stopMs)} ms after the commit).`,
    `Then \`barman-receiver recover ${SERVER} latest\` (${f1(rpo.recoverMs / 1000)} s) and the copy started until promoted (${f1(rpo.copyStartMs / 1000)} s); the primary is restarted (crash recovery) and its rows are what was committed. The receiver had flushed up to ${rpo.receiverFlushLsn ?? '?'} when the primary was down; the primary's last WAL record (crash recovery's "redo done at ${rpo.primaryRedoDone ?? '?'}") ${unstreamed}. The daemon's stream ${rpo.streamResumed ? 'came back by itself on the restarted primary' : '**did not come back** within 60 s on the restarted primary'}.`,
    '',
    rpoTable,
    '',
    '### Against the goals',
    '',
    goals,
    '',
    `Noise: one run of each mode, on a small VM shared with other work (load average at the start of the load runs of (c), (a), (b): ${modes.map((m) => m.loadAverage).join(' → ')}). pgbench, PostgreSQL, the agent processes and the receiver share the same two CPUs, so each mode slows the load it archives, and \`sync\` in (c) flushes every dirty page of the machine, not only the segment. Treat differences under about 20 % as noise; the backlog columns and the capacity ratios are the robust figures.`,
  ].join('\n');
}
