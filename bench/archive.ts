// Section "archive": issue 10's target 3, archiving throughput with the agent daemon, next to what a
// DBA would use instead, on one cluster and one disk, interleaved:
//   (c)  archive_command = 'cp %p <dir>/%f && sync'                      (the baseline)
//   (b)  archive_command = '<dist>/barman-agent -c <conf> push %p' with `barman-agent daemon`
//        running (streaming = on): the launcher answers from the daemon's ack without Node
//   (p)  pgBackRest's async archive-push (archive-async, process-max 2, spool, zstd level 1), when
//        `pgbackrest` is installed
// Capacity: with archiving paused (archive_command '', no daemon), a backlog of BACKLOG .ready
// segments (pgbench_accounts-like rows, as `pgbench -i` writes them) is made; then the mode's
// archive_command is set (and the daemon started: its start-up is in the time) and the clock runs
// until pg_stat_archiver has counted them all and no .ready is left. Rounds rotate the order.
// Under load: the fastest pgbench this machine runs, .ready counted every SAMPLE_MS; the daemon
// streaming (the target), then only archiving (what streaming costs the load), and `cp && sync`
// with pg_receivewal --synchronous beside it (what such streaming costs, in C).
// CPU: the archiver's waited-for children (/proc/<archiver>/stat cutime + cstime: every
// archive_command and what it ran) and the long-lived helpers (daemon, receiver, pgBackRest's
// async workers, sampled from /proc); peak RSS of the long-lived ones.

import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import type { Client } from 'pg';
import { Background, freePort, readyCount, sqlSession, startAgentDaemon, streamingAgentConfig, value } from './daemon-lib';
import {
  BenchCluster, type BenchContext, cpuProfileTop, fmtRatio, loadAverage, markdownTable, now, openCatalog, postgresDir, procCpuSeconds, procStatusKb,
  RssWatch, runOk, type SectionResult, sleep, startReceiver,
} from './lib';

const SERVER = 'main';
const SLOT = 'barman_main';
/** pg_receivewal's slot, in the run that has PostgreSQL's own streaming beside `cp && sync` */
const RECEIVEWAL_SLOT = 'bench_receivewal';
const BACKLOG = Number(process.env.BENCH_ARCHIVE_BACKLOG ?? 64);
const ROUNDS = Number(process.env.BENCH_ARCHIVE_ROUNDS ?? 2);
const LOAD_SECONDS = Number(process.env.BENCH_ARCHIVE_LOAD_SECONDS ?? 30);
/** pgbench's simple-update script without the contended branch/teller updates: the fastest this machine runs */
const HEAVY = ['-n', '-N', '-M', 'prepared', '-c', '4', '-j', '2'];
const SAMPLE_MS = 100;
const DRAIN_TIMEOUT_MS = 300_000;
const GOAL_RATIO = 1.5;
/** BENCH_ARCHIVE_PROFILE=1: the receiver and the daemon run under --cpu-prof, and the report says where their CPU went (the ratios of such a run are not comparable) */
const PROFILE = process.env.BENCH_ARCHIVE_PROFILE === '1';
const GOAL_BACKLOG = 2;
/** rows of pgbench_accounts shape per WAL switch of the backlog: about one 16 MiB segment each */
const ROWS_PER_SWITCH = 130_000;

type Mode = 'cp' | 'barman' | 'pgbackrest';

interface Drain {
  mode: Mode;
  round: number;
  segments: number;
  ms: number;
  /** CPU s of every archive_command (the archiver's waited-for children) */
  commandCpu: number;
  /** CPU s of the long-lived helpers: daemon + receiver, or pgBackRest's async workers */
  helperCpu: number;
  helperCpuParts: string;
  /** peak RSS (MiB) of the long-lived helpers */
  helperRss: string;
  loadAverage: string;
  failed: number;
}

interface Load {
  mode: Mode;
  /** the daemon streams (barman only; the target's run) */
  streaming: boolean;
  /** `cp && sync` with `pg_receivewal --synchronous` streaming beside it (cp only) */
  receivewal: boolean;
  /** CPU s during the load of the archive_commands PostgreSQL ran */
  commandCpu: number;
  /** CPU s during the load of the helpers, per helper: daemon and receiver, pgBackRest's workers, or pg_receivewal */
  helperCpuParts: string;
  tps: number;
  walMB: number;
  ready: number[];
  readyAtEnd: number;
  failed: number;
  loadAverage: string;
}

/** CPU s (user + system) of the children a process waited for, from /proc/<pid>/stat (cutime, cstime). */
function childrenCpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[13]) + Number(fields[14])) / 100;
}

/** CPU and peak RSS of short- or long-lived processes whose command line matches, sampled from /proc. */
class ProcessSampler {
  private readonly cpu = new Map<number, number>();
  private readonly hwm = new Map<number, number>();
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly match: RegExp, intervalMs = 50) {
    this.sample();
    this.timer = setInterval(() => this.sample(), intervalMs);
  }

  private sample(): void {
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      const pid = Number(entry);
      try {
        const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
        if (!this.match.test(cmd)) continue;
        this.cpu.set(pid, procCpuSeconds(pid));
        this.hwm.set(pid, Math.max(this.hwm.get(pid) ?? 0, procStatusKb(pid, 'VmHWM') ?? 0));
      } catch {
        // gone meanwhile
      }
    }
  }

  stop(): { cpu: number; peakKb: number; processes: number } {
    clearInterval(this.timer);
    this.sample();
    return { cpu: [...this.cpu.values()].reduce((a, b) => a + b, 0), peakKb: Math.max(0, ...this.hwm.values()), processes: this.cpu.size };
  }
}

export async function archiveSection(ctx: BenchContext): Promise<SectionResult> {
  const dir = postgresDir(join(ctx.workDir, 'archive'));
  const launcher = join(ctx.repoRoot, 'dist', 'barman-agent');
  const pgbench = join(ctx.pgBin, 'pgbench');
  const pgReceivewal = join(ctx.pgBin, 'pg_receivewal');
  const pgbackrest = ['/usr/bin/pgbackrest', '/usr/local/bin/pgbackrest'].find((p) => existsSync(p));
  const modes: Mode[] = pgbackrest ? ['cp', 'barman', 'pgbackrest'] : ['cp', 'barman'];

  const profiles = postgresDir(join(dir, 'profiles'));
  const profiling = (who: string) => (PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${join(profiles, who)}`] : []);
  const receiver = await startReceiver(join(dir, 'receiver'), ctx.repoRoot, ctx.cleanup, SERVER, { listen: `127.0.0.1:${await freePort()}` }, profiling('receiver'));
  const clusterDir = join(dir, 'cluster');
  // the capacity runs measure archiving: the daemon there does not stream (a stream opened on a
  // backlog catches up on it from the catalog's end, sending the same segments a second time);
  // under load it streams, as it would in production
  const agentConf = streamingAgentConfig(receiver, join(dir, 'agent'), clusterDir, SERVER);
  const archivingConf = streamingAgentConfig(receiver, join(dir, 'agent-archiving'), clusterDir, SERVER, { streaming: 'off' });
  const cluster = await BenchCluster.start(clusterDir, ctx.pgBin, ctx.cleanup, {
    archive_mode: 'on',
    archive_command: "''",
    max_wal_size: "'4GB'",
    checkpoint_timeout: "'1h'",
  });
  const target = ['-h', cluster.socketDir, '-p', String(cluster.port), '-U', 'postgres', 'postgres'];
  const ctl = await sqlSession(cluster.socketDir, cluster.port, ctx.cleanup, 'archive control');
  const archiverPid = Number(await value(ctl, "select pid from pg_stat_activity where backend_type = 'archiver'"));

  // pgBackRest: a stanza with its repository on the same disk, async archive-push with a spool
  let pgbackrestConf = '';
  if (pgbackrest) {
    const pbr = postgresDir(join(dir, 'pgbackrest'));
    for (const sub of ['repo', 'log', 'lock', 'spool']) postgresDir(join(pbr, sub));
    pgbackrestConf = join(pbr, 'pgbackrest.conf');
    writeFileSync(pgbackrestConf, [
      '[global]', `repo1-path=${join(pbr, 'repo')}`, `log-path=${join(pbr, 'log')}`, `lock-path=${join(pbr, 'lock')}`, `spool-path=${join(pbr, 'spool')}`,
      'archive-async=y', 'process-max=2', 'compress-type=zst', 'compress-level=1', 'repo1-bundle=y', 'log-level-console=warn', 'log-level-file=info', '',
      '[bench]', `pg1-path=${cluster.pgdata}`, `pg1-socket-path=${cluster.socketDir}`, `pg1-port=${cluster.port}`, 'pg1-user=postgres', '',
    ].join('\n'), { mode: 0o644 });
    await runOk(pgbackrest, [`--config=${pgbackrestConf}`, '--stanza=bench', 'stanza-create'], { asPostgres: true, cwd: pbr });
  }

  const commands: Record<Mode, string> = {
    cp: `cp %p ${postgresDir(join(dir, 'cp-archive'))}/%f && sync`,
    barman: `${launcher} -c ${agentConf} push %p`,
    pgbackrest: `${pgbackrest} --config=${pgbackrestConf} --stanza=bench archive-push %p`,
  };

  const archiverStats = async (c: Client = ctl) => {
    const r = (await c.query<{ a: string; f: string }>('select archived_count as a, failed_count as f from pg_stat_archiver')).rows[0]!;
    return { archived: Number(r.a), failed: Number(r.f) };
  };
  const setArchiveCommand = async (command: string) => {
    await ctl.query(`alter system set archive_command = '${command.replaceAll("'", "''")}'`);
    await ctl.query('select pg_reload_conf()');
  };
  const evidence = (daemon?: Background) => {
    const pgLog = join(clusterDir, 'postgresql.log');
    const tail = existsSync(pgLog) ? readFileSync(pgLog, 'utf8').split('\n').filter((l) => /archiv|ERROR|HINT|FATAL/.test(l)).slice(-20).join('\n') : '';
    return `--- ${pgLog} (archiving)\n${tail}\n--- daemon\n${daemon?.output().slice(-3000) ?? '-'}\n--- receiver\n${receiver.logTail().slice(-3000)}`;
  };

  let daemon: Background | undefined;
  const startDaemon = (conf: string) => {
    const options = { cwd: join(dir, 'agent'), asPostgres: true, cleanup: ctx.cleanup, what: 'barman-agent daemon', logFile: join(dir, 'agent', 'daemon.log') };
    daemon = startAgentDaemon(ctx.repoRoot, conf, options, PROFILE ? join(profiles, 'daemon') : undefined);
    return daemon;
  };
  const stopDaemon = async () => {
    if (!daemon) return;
    await daemon.stop('SIGTERM');
    daemon = undefined;
    // the slot would hold every segment made from here on; the next daemon makes it anew
    await ctl.query('select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = $1', [SLOT]);
  };

  ctx.log('archive: pgbench -i -s 10');
  await runOk(pgbench, ['-i', '-q', '-s', '10', ...target], { asPostgres: true, cwd: clusterDir });
  await ctl.query('create table backlog (aid int, bid int, abalance int, filler char(84))');

  /** With archiving paused, completes segments until `count` are .ready. */
  const makeBacklog = async (count: number) => {
    await setArchiveCommand('');
    await ctl.query('truncate backlog');
    let n = 0;
    while (readyCount(cluster.pgdata) < count) {
      await ctl.query(`insert into backlog select g, (g - 1) / 100000 + 1, 0, '' from generate_series(${n + 1}, ${n + ROWS_PER_SWITCH}) g`);
      n += ROWS_PER_SWITCH;
      await ctl.query('select pg_switch_wal()');
    }
    await ctl.query('checkpoint');
    await runOk('sync', []);
  };

  const drain = async (mode: Mode, round: number): Promise<Drain> => {
    await makeBacklog(BACKLOG);
    const segments = readyCount(cluster.pgdata);
    const loadAvg = loadAverage();
    ctx.log(`archive: round ${round + 1}, ${mode}: ${segments} segments ready (load average ${loadAvg})`);
    const before = await archiverStats();
    const commandCpu0 = childrenCpuSeconds(archiverPid);
    const receiverCpu0 = procCpuSeconds(receiver.pid);
    const receiverRss = new RssWatch(receiver.pid);
    const workers = mode === 'pgbackrest' ? new ProcessSampler(/pgbackrest.*archive-push:(async|local)/) : undefined;
    const started = now();
    let daemonRss: RssWatch | undefined;
    if (mode === 'barman') daemonRss = new RssWatch(startDaemon(archivingConf).pid);
    await setArchiveCommand(mode === 'barman' ? `${launcher} -c ${archivingConf} push %p` : commands[mode]);
    const daemonCpu0 = 0;
    for (;;) {
      const st = await archiverStats();
      if (st.archived - before.archived >= segments && readyCount(cluster.pgdata) === 0) break;
      if (now() - started > DRAIN_TIMEOUT_MS) throw new Error(`archive ${mode}: ${readyCount(cluster.pgdata)} of ${segments} still .ready after ${DRAIN_TIMEOUT_MS / 1000} s\n${evidence(daemon)}`);
      await sleep(10);
    }
    const ms = now() - started;
    const after = await archiverStats();
    await setArchiveCommand('');
    const commandCpu = childrenCpuSeconds(archiverPid) - commandCpu0;
    const receiverCpu = procCpuSeconds(receiver.pid) - receiverCpu0;
    const receiverPeak = receiverRss.stop();
    let helperCpu = 0;
    let helperCpuParts = '';
    let helperRss = '';
    if (mode === 'barman') {
      const daemonCpu = procCpuSeconds(daemon!.pid) - daemonCpu0;
      const daemonPeak = daemonRss!.stop();
      await stopDaemon();
      helperCpu = daemonCpu + receiverCpu;
      helperCpuParts = `daemon ${daemonCpu.toFixed(1)} + receiver ${receiverCpu.toFixed(1)}`;
      helperRss = `daemon ${(daemonPeak / 1024).toFixed(0)}, receiver ${(receiverPeak / 1024).toFixed(0)}`;
    } else if (mode === 'pgbackrest') {
      const w = workers!.stop();
      helperCpu = w.cpu;
      helperCpuParts = `${w.processes} async worker process(es) ${w.cpu.toFixed(1)}`;
      helperRss = `async worker ${(w.peakKb / 1024).toFixed(0)}`;
    } else {
      helperCpuParts = '–';
      helperRss = '–';
    }
    return { mode, round, segments, ms, commandCpu, helperCpu, helperCpuParts, helperRss, loadAverage: loadAvg, failed: after.failed - before.failed };
  };

  /**
   * The fastest pgbench with the mode archiving; .ready sampled every SAMPLE_MS. The daemon streams
   * as in production (the target's run), or only archives (`streaming = false`): what streaming
   * costs the load, apart from archiving. `receivewal`: PostgreSQL's own streaming client beside
   * `cp && sync`, flushing and reporting every message as ours does (`--synchronous`): what such
   * streaming costs when it is written in C.
   */
  const underLoad = async (mode: Mode, { streaming = true, receivewal = false } = {}): Promise<Load> => {
    const conf = streaming ? agentConf : archivingConf;
    await setArchiveCommand(mode === 'barman' ? `${launcher} -c ${conf} push %p` : commands[mode]);
    if (mode === 'barman') {
      startDaemon(conf);
      if (streaming) await daemon!.waitForLine(/"msg":"streaming WAL"/, 60_000);
    }
    let receiveWal: Background | undefined;
    if (receivewal) {
      const receiveWalDir = postgresDir(join(dir, 'pg_receivewal'));
      const connection = ['-h', cluster.socketDir, '-p', String(cluster.port), '-U', 'postgres', '-S', RECEIVEWAL_SLOT];
      await runOk(pgReceivewal, [...connection, '--create-slot', '--if-not-exists'], { asPostgres: true, cwd: receiveWalDir });
      receiveWal = new Background(pgReceivewal, [...connection, '-D', receiveWalDir, '--synchronous', '--no-loop'], { cwd: receiveWalDir, asPostgres: true, cleanup: ctx.cleanup, what: 'pg_receivewal' });
      for (const t = now(); ; await sleep(50)) {
        if (await value(ctl, "select count(*) from pg_stat_replication where application_name = 'pg_receivewal' and state = 'streaming'") === '1') break;
        if (now() - t > 30_000 || !receiveWal.running) throw new Error(`pg_receivewal did not start streaming\n${receiveWal.output()}`);
      }
    }
    // what came before is archived first, and every mode starts right after a checkpoint
    await ctl.query('select pg_switch_wal()');
    for (const t = now(); readyCount(cluster.pgdata) > 0; await sleep(20)) {
      if (now() - t > DRAIN_TIMEOUT_MS) throw new Error(`archive ${mode}: not idle before the load\n${evidence(daemon)}`);
    }
    await ctl.query('checkpoint');
    await runOk('sync', []);
    const loadAvg = loadAverage();
    ctx.log(`archive: ${mode}${mode === 'barman' && !streaming ? ' (not streaming)' : ''}${receiveWal ? ' with pg_receivewal' : ''} under pgbench ${HEAVY.join(' ')} -T ${LOAD_SECONDS} (load average ${loadAvg})`);
    const before = await archiverStats();
    const commandCpu0 = childrenCpuSeconds(archiverPid);
    const receiverCpu0 = procCpuSeconds(receiver.pid);
    const daemonCpu0 = daemon ? procCpuSeconds(daemon.pid) : 0;
    const receiveWalCpu0 = receiveWal ? procCpuSeconds(receiveWal.pid) : 0;
    const workers = mode === 'pgbackrest' ? new ProcessSampler(/pgbackrest.*archive-push:(async|local)/) : undefined;
    const lsn0 = await value(ctl, 'select pg_current_wal_lsn()::text');
    const ready: number[] = [];
    const sampler = setInterval(() => ready.push(readyCount(cluster.pgdata)), SAMPLE_MS);
    let out;
    try {
      out = await runOk(pgbench, [...HEAVY, '-T', String(LOAD_SECONDS), ...target], { asPostgres: true, cwd: clusterDir });
    } finally {
      clearInterval(sampler);
    }
    const readyAtEnd = readyCount(cluster.pgdata);
    const commandCpu = childrenCpuSeconds(archiverPid) - commandCpu0;
    // the receiver works for a mode's run only when barman archives (or streams) into it
    const helperCpuParts = mode === 'barman'
      ? `daemon ${(procCpuSeconds(daemon!.pid) - daemonCpu0).toFixed(1)} + receiver ${(procCpuSeconds(receiver.pid) - receiverCpu0).toFixed(1)}`
      : workers ? `async workers ${workers.stop().cpu.toFixed(1)}` : receiveWal ? `pg_receivewal ${(procCpuSeconds(receiveWal.pid) - receiveWalCpu0).toFixed(1)}` : '–';
    if (receiveWal) {
      await receiveWal.stop('SIGINT');
      await ctl.query('select pg_drop_replication_slot($1)', [RECEIVEWAL_SLOT]);
    }
    const walMB = Number(await value(ctl, 'select pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)', [lsn0])) / 1048576;
    const after = await archiverStats();
    await setArchiveCommand('');
    if (mode === 'barman') await stopDaemon();
    const tps = Number(/tps = ([\d.]+) \(without initial connection time\)/.exec(out.stdout)?.[1] ?? Number.NaN);
    return { mode, streaming: mode === 'barman' && streaming, receivewal, commandCpu, helperCpuParts, tps, walMB, ready, readyAtEnd, failed: after.failed - before.failed, loadAverage: loadAvg };
  };

  const drains: Drain[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    const order = modes.map((_, i) => modes[(i + round) % modes.length]!);
    for (const mode of order) drains.push(await drain(mode, round));
  }
  const loads: Load[] = [];
  // (a profiled run measures the capacity runs only)
  if (!PROFILE) {
    for (const mode of modes) loads.push(await underLoad(mode));
    loads.push(await underLoad('barman', { streaming: false }));
    loads.push(await underLoad('cp', { receivewal: true }));
  }

  // the figures only count if the catalog holds every segment PostgreSQL archived through barman
  const catalogSegments = (await (await openCatalog(receiver, SERVER, ctx.cleanup)).catalog.listSegments()).length;
  const barmanArchived = drains.filter((d) => d.mode === 'barman').reduce((a, d) => a + d.segments, 0);
  if (catalogSegments < barmanArchived) throw new Error(`the catalog holds ${catalogSegments} segments, PostgreSQL archived ${barmanArchived} through barman`);
  await cluster.stop('fast');
  await receiver.stop();
  const where = PROFILE ? profileReport(join(profiles, 'receiver'), join(profiles, 'daemon')) : '';

  return { title: 'archive: draining a `.ready` backlog — `barman-agent daemon` + launcher vs `cp && sync` vs pgBackRest async (target 3)', markdown: report(modes, drains, loads, catalogSegments) + where };
}

/** Where the receiver's and the daemons' CPU went over the section (BENCH_ARCHIVE_PROFILE=1). */
function profileReport(receiverDir: string, daemonDir: string): string {
  const receiver = cpuProfileTop(receiverDir, 12);
  const daemon = cpuProfileTop(daemonDir, 12);
  const rows = Array.from({ length: 12 }, (_, i) => {
    const r = receiver.top[i];
    const d = daemon.top[i];
    return [r ? `${r.what}` : '', r ? r.ms.toFixed(0) : '', d ? `${d.what}` : '', d ? d.ms.toFixed(0) : ''];
  });
  return [
    '',
    '',
    `### Where the CPU went (BENCH_ARCHIVE_PROFILE=1: under --cpu-prof, so this run's times are not comparable)`,
    '',
    `Self time per function over the whole section: the receiver was busy ${(receiver.busyMs / 1000).toFixed(1)} s, the daemons (every capacity and load run) ${(daemon.busyMs / 1000).toFixed(1)} s.`,
    '',
    markdownTable(['receiver: function', 'ms', 'daemon: function', 'ms'], rows),
  ].join('\n');
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length / 2;
  return s.length % 2 ? s[Math.floor(m)]! : (s[m - 1]! + s[m]!) / 2;
}

function report(modes: Mode[], drains: Drain[], loads: Load[], catalogSegments: number): string {
  const labels: Record<Mode, string> = {
    cp: '`cp %p <dir>/%f && sync` (baseline)',
    barman: '`barman-agent push %p` (launcher) + `barman-agent daemon`',
    pgbackrest: 'pgBackRest 2 processes, async, zstd 1',
  };
  const rate = (d: Drain) => d.segments / (d.ms / 1000);
  const of = (m: Mode) => drains.filter((d) => d.mode === m);
  const medRate = (m: Mode) => median(of(m).map(rate));
  const f1 = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : '?');
  const f2 = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : '?');
  const met = (ok: boolean) => (ok ? 'met' : '**not met**');

  const drainTable = markdownTable(
    ['round', 'archive_command', 'segments', 's', 'segments/s', 'archive_command CPU s', 'helpers CPU s', 'helpers peak RSS MiB', 'failed', 'load average before'],
    drains.map((d) => [String(d.round + 1), labels[d.mode], String(d.segments), f1(d.ms / 1000), f2(rate(d)), f1(d.commandCpu), d.helperCpuParts, d.helperRss, String(d.failed), d.loadAverage]),
  );
  const summary = markdownTable(
    ['archive_command', 'median segments/s', 'vs cp && sync', 'CPU s per segment (commands + helpers, median)'],
    modes.map((m) => [labels[m], f2(medRate(m)), fmtRatio(medRate(m) / medRate('cp')), (median(of(m).map((d) => (d.commandCpu + d.helperCpu) / d.segments)) * 1000).toFixed(0) + ' ms']),
  );
  const loadLabel = (l: Load) => (l.mode === 'barman' ? `${labels.barman}, ${l.streaming ? 'streaming (the target)' : 'not streaming'}` : l.receivewal ? '`cp %p <dir>/%f && sync` + `pg_receivewal --synchronous` streaming' : labels[l.mode]);
  const loadTable = markdownTable(
    ['archive_command', 'pgbench tps', 'vs cp && sync', 'WAL MB', 'archive_command CPU s', 'helpers CPU s', '.ready max', '.ready mean', '.ready at end', 'failed', 'load average before'],
    loads.map((l) => [loadLabel(l), f1(l.tps), fmtRatio(l.tps / (loads.find((c) => c.mode === 'cp' && !c.receivewal)?.tps ?? Number.NaN)), f1(l.walMB), f1(l.commandCpu), l.helperCpuParts, String(Math.max(...l.ready)), f2(l.ready.reduce((a, b) => a + b, 0) / Math.max(1, l.ready.length)), String(l.readyAtEnd), String(l.failed), l.loadAverage]),
  );
  const ratio = medRate('barman') / medRate('cp');
  const barmanLoad = loads.find((l) => l.mode === 'barman' && l.streaming) ?? { ready: [Number.NaN], walMB: Number.NaN };
  const maxReady = Math.max(...barmanLoad.ready);
  const goals = markdownTable(
    ['target 3', 'goal', 'measured', ''],
    [
      ['backlog drained, segments/s of the daemon + launcher / of `cp && sync` (medians)', `≥ ${GOAL_RATIO}×`, `${fmtRatio(ratio)} (${f2(medRate('barman'))} vs ${f2(medRate('cp'))})${modes.includes('pgbackrest') ? `; pgBackRest ${fmtRatio(medRate('pgbackrest') / medRate('cp'))}` : ''}`, met(ratio >= GOAL_RATIO)],
      [`.ready backlog under \`pgbench ${HEAVY.join(' ')}\` with the daemon, max of samples every ${SAMPLE_MS} ms`, `≤ ${GOAL_BACKLOG}`, `${maxReady} (${barmanLoad.ready.length} samples, ${f1(barmanLoad.walMB)} MB of WAL)`, met(maxReady <= GOAL_BACKLOG)],
    ],
  );
  return [
    `One cluster (\`pgbench -i -s 10\`, fsync on, max_wal_size 4GB), one \`barman-receiver serve\` on this host (its default compression), \`cp\`'s folder and pgBackRest's repository on the same disk.`,
    `**Capacity.** ${drains.length / modes.length} rounds; in each, every mode in turn (the order rotates) gets a fresh backlog: with archiving paused, rows shaped like \`pgbench -i\`'s (${ROWS_PER_SWITCH} a switch) and \`pg_switch_wal()\` until ${BACKLOG} segments are \`.ready\`, then \`checkpoint\` and \`sync\`. The clock starts when the mode's archive_command is set (the daemon is started at that moment: its start-up counts; pgBackRest starts its async process from its first archive-push) and stops when \`pg_stat_archiver.archived_count\` has grown by the backlog and no \`.ready\` is left. The daemon does not stream in these runs (\`streaming = off\`): a stream opened on a backlog starts where the catalog ends and sends the backlog a second time beside the archiver, which is a catch-up after an outage, not archiving capacity.`,
    '',
    drainTable,
    '',
    summary,
    '',
    '"archive_command CPU s" is the CPU of every archive_command PostgreSQL ran (the archiver\'s waited-for children: `sh`, the launcher and what it ran; `cp` and `sync`; pgBackRest\'s foreground archive-push); "helpers" are the long-lived processes that work for them (sampled from /proc; pgBackRest\'s async workers come and go, so a worker that lived less than the 50 ms sampling interval is missed). PostgreSQL\'s own archiver and the page cache\'s write-back are in neither.',
    '',
    `**Under load.** \`pgbench ${HEAVY.join(' ')} -T ${loads[0] ? LOAD_SECONDS : 0}\` with each mode archiving (the daemon streaming, as in production, then once more only archiving: what streaming costs the load; and \`cp && sync\` once more with PostgreSQL's own \`pg_receivewal --synchronous\` streaming beside it, which flushes and reports every message as our stream does), right after a checkpoint with nothing left to archive; \`.ready\` files counted every ${SAMPLE_MS} ms. Helpers: the daemon and the receiver (both ours), pgBackRest's async workers, pg_receivewal; their CPU, and the archive_commands', is what archiving takes from pgbench on this machine's ${cpus().length} cores.`,
    '',
    loadTable,
    '',
    '### Against the goals',
    '',
    goals,
    '',
    `Checks: the catalog holds ${catalogSegments} segments (at least the ${drains.filter((d) => d.mode === 'barman').reduce((a, d) => a + d.segments, 0)} PostgreSQL archived through barman in the capacity runs). Noise: a small VM shared with other work; the load averages above say how busy it was, and the rounds interleave the modes so that load weighs on each alike.`,
  ].join('\n');
}
