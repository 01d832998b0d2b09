// Section "daemon": what `barman-agent daemon` (streaming = on) does for a cluster that archives
// through the installed launcher (`dist/barman-agent push %p`, answered from the daemon's acks):
//   (d) ms from a commit returning to the receiver's flush of it (as PostgreSQL sees it:
//       pg_stat_replication.flush_lsn of the daemon's application_name, which only moves when the
//       receiver reported its fsync), under a light steady load;
//   (e) the RPO of an immediate stop without a WAL switch (recover latest from the catalog, count
//       rows against the primary's).
// Archiving throughput, and the .ready backlog under the fastest pgbench, are the archive section's
// (bench/archive.ts), measured there next to `cp && sync` and pgBackRest.

import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Client } from 'pg';
import type { OpenServer } from '../receiver/catalog/open';
import { Background, freePort, percentile, readyCount, sqlSession, startRecoveredCopy, streamingAgentConfig, tailMatching, value } from './daemon-lib';
import { BenchCluster, type BenchContext, fmtMs, markdownTable, now, openCatalog, postgresDir, runOk, type SectionResult, sleep, startReceiver } from './lib';

const SERVER = 'main';
const APPLICATION_NAME = 'barman_receive_main';
const SCALE = Number(process.env.BENCH_DAEMON_SCALE ?? 10);
const LAG_PROBES = Number(process.env.BENCH_DAEMON_PROBES ?? 200);
/** the light steady load under the lag and RPO measurements (transactions per second) */
const LIGHT_RATE = 200;
/** its clients: at most this many commits can be in flight, waiting for the synchronous standby, when the server stops */
const LIGHT_CLIENTS = 2;
const POLL_MS = 5;
const PROBE_TIMEOUT_MS = 10_000;
const DRAIN_TIMEOUT_MS = 300_000;
/** port of the recovered copy (on its own socket folder) */
const COPY_PORT = 5434;

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
  const launcher = join(ctx.repoRoot, 'dist', 'barman-agent');
  const receiverCli = join(ctx.repoRoot, 'dist', 'barman-receiver');
  const pgbench = join(ctx.pgBin, 'pgbench');

  const receiver = await startReceiver(join(dir, 'receiver'), ctx.repoRoot, ctx.cleanup, SERVER, { listen: `127.0.0.1:${await freePort()}`, compression: 'none' });
  const clusterDir = join(dir, 'cluster');
  const agentConf = streamingAgentConfig(receiver, join(dir, 'agent'), clusterDir, SERVER, { application_name: APPLICATION_NAME });
  const cluster = await BenchCluster.start(clusterDir, ctx.pgBin, ctx.cleanup, {
    archive_mode: 'on',
    // the installed launcher: answers from the daemon's acks without Node
    archive_command: `'${launcher} -c ${agentConf} push %p'`,
    max_wal_size: "'4GB'",
    checkpoint_timeout: "'1h'",
  });
  const target = ['-h', cluster.socketDir, '-p', String(cluster.port), '-U', 'postgres', 'postgres'];
  const ctl = await sqlSession(cluster.socketDir, cluster.port, ctx.cleanup, 'control');

  ctx.log('daemon: starting barman-agent daemon (streaming = on)');
  const daemon = new Background(node, [agent, 'daemon', '-c', agentConf], { cwd: join(dir, 'agent'), asPostgres: true, cleanup: ctx.cleanup, what: 'barman-agent daemon', logFile: join(dir, 'agent', 'daemon.log') });
  await daemon.waitForLine(/"msg":"streaming WAL"/, 60_000);
  ctx.log(`daemon: pgbench -i -s ${SCALE}`);
  await runOk(pgbench, ['-i', '-q', '-s', String(SCALE), ...target], { asPostgres: true, cwd: clusterDir });
  await ctl.query('create table lag_probe (id int primary key, at timestamptz not null default clock_timestamp())');
  await ctl.query('create table rpo_marker (id int primary key, note text not null)');

  /** What a stuck archiver left behind: PostgreSQL's archiving errors, the catalog's errors/, the daemon's and receiver's last words. */
  const evidence = () => {
    const pgLog = join(clusterDir, 'postgresql.log');
    const errorsDir = join(receiver.barmanHome, SERVER, 'errors');
    return [
      `--- ${pgLog} (archiving)`, tailMatching(pgLog, /archiv|ERROR|HINT/),
      `--- ${errorsDir}`, existsSync(errorsDir) ? readdirSync(errorsDir).join(' ') : '(none)',
      '--- daemon (end)', daemon.output().slice(-3000),
      '--- receiver (end)', receiver.logTail().slice(-3000),
    ].join('\n');
  };

  // what pgbench -i made is archived (through the daemon's acks) before anything is measured
  await ctl.query('select pg_switch_wal()');
  for (const t = now(); readyCount(cluster.pgdata) > 0; await sleep(20)) {
    if (now() - t > DRAIN_TIMEOUT_MS) throw new Error(`daemon: .ready files left after ${DRAIN_TIMEOUT_MS / 1000} s\n${evidence()}`);
  }

  // ---- (d) streaming lag under a light steady load ----------------------------------------------
  ctx.log(`daemon: streaming lag, ${LAG_PROBES} probe commits under pgbench -R ${LIGHT_RATE}`);
  const light = () => new Background(pgbench, ['-n', '-N', '-c', String(LIGHT_CLIENTS), '-j', '1', '-R', String(LIGHT_RATE), '-T', '3600', ...target], { cwd: clusterDir, asPostgres: true, cleanup: ctx.cleanup, what: 'light pgbench' });
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
  const status = JSON.parse((await runOk(receiverCli, ['status', '-c', receiver.config, SERVER, '--json'])).stdout) as { streaming: LagRun['status']; rpo_seconds: number | null };
  lag.status = { ...status.streaming, rpo_seconds: status.rpo_seconds };
  await lightLoad.stop();

  // ---- (e) RPO of an immediate stop --------------------------------------------------------------
  ctx.log('daemon: RPO: backup through the daemon, then an immediate stop right after a commit');
  const backupStarted = now();
  const backupId = (await runOk(receiverCli, ['backup', '-c', receiver.config, SERVER, '--wait'])).stdout.trim();
  const backupMs = now() - backupStarted;
  // RPO 0 is the promise of synchronous streaming (README "RPO = 0"): every commit waits for the
  // receiver's fsync. Asynchronous streaming may lose the last commits an immediate stop cuts off
  // before the walsender sent them, which is what the lag above measures.
  await ctl.query(`alter system set synchronous_standby_names = '${APPLICATION_NAME}'`);
  await ctl.query('select pg_reload_conf()');
  for (const t = now(); (await value(ctl, `select coalesce(max(sync_state), '') from pg_stat_replication where application_name = '${APPLICATION_NAME}'`)) !== 'sync'; await sleep(50)) {
    if (now() - t > 60_000) throw new Error(`daemon: PostgreSQL did not take ${APPLICATION_NAME} for its synchronous standby within 60 s\n${evidence()}`);
  }
  const crashLoad = light();
  await sleep(3000);
  const agentDaemon = daemon;
  const streamLinesBefore = agentDaemon.output().split('\n').filter((l) => l.includes('"msg":"streaming WAL"')).length;
  await probe.query("insert into rpo_marker values (1, 'committed just before the crash')");
  const markerCommitted = now();
  await cluster.stop('immediate'); // pg_ctl stop -m immediate: no checkpoint, no WAL switch
  const stopMs = now() - markerCommitted;
  await crashLoad.stop(); // its connections died with the server
  await sleep(2000); // whatever the daemon had in flight reaches the receiver (or not)
  const crashed = JSON.parse((await runOk(receiverCli, ['status', '-c', receiver.config, SERVER, '--json'])).stdout) as { streaming: { flush_lsn: string | null } };

  const rpoDir = postgresDir(join(dir, 'rpo'));
  const dest = join(rpoDir, 'pgdata');
  const recoverStarted = now();
  await runOk(receiverCli, ['recover', '-c', receiver.config, SERVER, 'latest', dest], { cwd: rpoDir });
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
  const catalogCheck = await checkCatalog(await openCatalog(receiver, SERVER, ctx.cleanup), join(cluster.pgdata, 'pg_wal', 'archive_status'));
  await runOk(pgCtl, ['-D', cluster.pgdata, '-m', 'fast', '-w', 'stop'], { asPostgres: true, cwd: clusterDir });
  await receiver.stop();

  const rpo: RpoRun = { backupId, backupMs, stopMs, markerInCopy: copyCounts.markers === 1, primary: primaryCounts, copy: copyCounts, recoverMs, copyStartMs: copy.ms, streamResumed, receiverFlushLsn, primaryRedoDone, unstreamedBytes };
  return {
    title: 'daemon: archiving with per-call `push`, with the daemon, with `cp && sync`; streaming lag; RPO of an immediate stop',
    markdown: report(lag, rpo, { catalogCheck, daemonExit: daemonExit.code ?? daemonExit.signal ?? '?', daemonStopMs, daemonPushed }),
  };
}

/** Every segment PostgreSQL still marks archived (.done) is in the catalog (as the catalog itself lists them). */
async function checkCatalog(open: OpenServer, statusDir: string): Promise<string> {
  const stored = new Set(await open.catalog.listSegments());
  const done = readdirSync(statusDir).filter((f) => /^[0-9A-F]{24}\.done$/.test(f)).map((f) => f.slice(0, 24));
  const missing = done.filter((n) => !stored.has(n));
  if (missing.length > 0) throw new Error(`PostgreSQL counts ${missing.length} segments archived that the catalog lacks: ${missing.slice(0, 5).join(', ')}`);
  return `the catalog holds ${stored.size} WAL segments, among them all ${done.length} PostgreSQL still lists as archived (.done)`;
}

function report(lag: LagRun, rpo: RpoRun, extra: { catalogCheck: string; daemonExit: number | string; daemonStopMs: number; daemonPushed: number | undefined }): string {
  const f1 = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : '?');
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
  // pgbench commits the stop cut off before they returned, at most one per client: not losses (the
  // report's paragraph under rpoTable says why)
  const unacknowledged = (rpo.unstreamedBytes ?? 0) > 0 && lost('history') > 0 && lost('history') <= LIGHT_CLIENTS ? lost('history') : 0;
  const acknowledgedLost = totalLost - unacknowledged;
  const rpoTable = markdownTable(
    ['committed rows', 'primary after crash recovery', 'recovered copy (latest)', 'missing from the copy'],
    [
      ['marker row committed right before the stop', String(rpo.primary.markers), String(rpo.copy.markers), String(lost('markers'))],
      [`pgbench_history (pgbench -R ${LIGHT_RATE} running through the stop)`, String(rpo.primary.history), String(rpo.copy.history), String(lost('history'))],
      ['lag_probe (from the lag measurement)', String(rpo.primary.probes), String(rpo.copy.probes), String(lost('probes'))],
    ],
  );

  const met = (ok: boolean) => (ok ? 'met' : '**not met**');
  const lagP99 = percentile(lag.lags, 99);
  const goals = markdownTable(
    ['goal', 'measured', ''],
    [
      ['streaming lag p99 < 100 ms', `${fmtMs(lagP99)} ms (p50 ${fmtMs(percentile(lag.lags, 50))} ms, ${lag.timeouts} probes not flushed within ${PROBE_TIMEOUT_MS / 1000} s)`, met(lagP99 < 100 && lag.timeouts === 0)],
      ['RPO after an immediate stop, synchronous streaming: 0 lost acknowledged commits', `${acknowledgedLost} lost; the marker row ${rpo.markerInCopy ? 'is' : 'is **not**'} in the recovered copy${unacknowledged > 0 ? `; ${unacknowledged} pgbench commit(s) written past the receiver's flush position, not yet acknowledged when the server stopped, are not in it` : ''}`, met(acknowledgedLost === 0 && rpo.markerInCopy)],
    ],
  );

  const meanSleep = lag.sleptMs / Math.max(1, lag.sleeps);
  const unstreamed = rpo.unstreamedBytes === undefined ? 'could not be compared' : rpo.unstreamedBytes > 0 ? `starts ${rpo.unstreamedBytes} bytes past it` : `lies within it (${-rpo.unstreamedBytes} bytes before its end)`;
  return [
    `One cluster (\`pgbench -i -s ${SCALE}\`, synchronous_commit on, fsync on, max_wal_size 4GB) archiving through the installed \`barman-agent push %p\` (the launcher, answered from the daemon's acks), one \`barman-receiver serve\` on this host (its default compression), \`barman-agent daemon\` with \`streaming = on\`. Archiving throughput and the backlog under load: the archive section.`,
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
    `A catalog backup first (\`barman-receiver backup ${SERVER} --wait\`, taken by the daemon: ${rpo.backupId}, ${f1(rpo.backupMs / 1000)} s). With pgbench -R ${LIGHT_RATE} running and the daemon streaming synchronously (its application_name in synchronous_standby_names: a commit returns once the receiver has fsynced it), one marker row is committed and \`pg_ctl stop -m immediate\` run as soon as the commit returns (no WAL switch; pg_ctl returned ${fmtMs(rpo.stopMs)} ms after the commit).`,
    `Then \`barman-receiver recover ${SERVER} latest\` (${f1(rpo.recoverMs / 1000)} s) and the copy started until promoted (${f1(rpo.copyStartMs / 1000)} s); the primary is restarted (crash recovery) and its rows are what was committed. The receiver had flushed up to ${rpo.receiverFlushLsn ?? '?'} when the primary was down; the primary's last WAL record (crash recovery's "redo done at ${rpo.primaryRedoDone ?? '?'}") ${unstreamed}. The daemon's stream ${rpo.streamResumed ? 'came back by itself on the restarted primary' : '**did not come back** within 60 s on the restarted primary'}.`,
    '',
    rpoTable,
    '',
    `A row the restarted primary has and the copy lacks was committed by a WAL record past what the receiver had flushed, so its commit had not returned to its client when the server stopped (with synchronous streaming a commit waits for the receiver's flush; crash recovery keeps it because it reached the primary's own WAL). Only pgbench's commits can be such, at most one per client (${LIGHT_CLIENTS}), and only when the primary's WAL goes past the flush position; the marker's and the probes' commits had returned, so any of theirs missing would be an acknowledged commit lost.`,
    '',
    '### Against the goals',
    '',
    goals,
    '',
    `Checks: ${extra.catalogCheck}; the daemon exited ${extra.daemonExit} on SIGTERM after ${fmtMs(extra.daemonStopMs)} ms${extra.daemonPushed === undefined ? '' : ` and had pushed ${extra.daemonPushed} files ahead of PostgreSQL over the whole run`}.`,
  ].join('\n');
}
