// Section "backup": a base backup and a recovery of one pgbench database, ours next to what a DBA
// would do with PostgreSQL's own tools (and, where it is installed, pgBackRest) on the same
// cluster and disk:
//   backup:  `barman-receiver backup main --wait` (spawn to DONE; the agent daemon takes it)
//            vs `pg_basebackup -Fp -X none --checkpoint=fast`
//            vs `pgbackrest backup` (2 processes, zstd level 1, bundling) when pgbackrest is on PATH
//   recover: `barman-receiver recover main latest` vs `cp -a` of that plain backup (+ its WAL,
//            recovery.signal, restore_command) — each followed by `pg_ctl start` until the copy
//            answers `select 1` and pg_is_in_recovery() is false.
// The cluster archives through `barman-agent push` (so our backups become DONE); the receiver is a
// real `barman-receiver serve` on this host with its default compression (BENCH_BACKUP_COMPRESSION
// overrides it; BENCH_BACKUP_PROFILE=<dir> has both write CPU profiles there). Rounds are interleaved, and each recovered copy is checked (row count) before its
// figures count. BENCH_BACKUP_SCALES=50,200 runs the whole section once per pgbench scale (the
// memory goals hold at every scale); BENCH_BACKUP_RECOVER=0 leaves the recoveries out.

import { existsSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePort, startAgentDaemon } from './daemon-lib';
import {
  BenchCluster,
  type BenchContext,
  copyStoredWal,
  fmtRatio,
  freeBytes,
  loadAverage,
  markdownTable,
  mbPerSecond,
  openCatalog,
  postgresAgentConfig,
  postgresDir,
  procCpuSeconds,
  procStatusKb,
  RssWatch,
  runMeasured,
  runOk,
  type SectionResult,
  startReceiver,
  startRecoveredCopy,
  stats,
  waitForArchiver,
} from './lib';

const SCALES = (process.env.BENCH_BACKUP_SCALES ?? process.env.BENCH_BACKUP_SCALE ?? '50').split(',').map((s) => Number(s.trim())).filter((n) => n > 0);
const SMALL_SCALE = 20;
const ROUNDS = Number(process.env.BENCH_BACKUP_ROUNDS ?? 3);
const RECOVER = process.env.BENCH_BACKUP_RECOVER !== '0';
const COMPRESSION = process.env.BENCH_BACKUP_COMPRESSION;
/** a folder: the receiver and the agent daemon write CPU profiles (node --cpu-prof) below it */
const PROFILE = process.env.BENCH_BACKUP_PROFILE;
/** port of the recovered copies (in their own socket folder, so nothing else can collide) */
const COPY_PORT = 5433;
const SERVER = 'main';
/** the goals of the speed work: throughput against pg_basebackup, peak memory per side */
const SPEED_GOAL = 1.5;
const AGENT_RSS_GOAL_MIB = 100;
const RECEIVER_RSS_GOAL_MIB = 200;

/** ms after spawn when a program's stderr first showed a line matching `re` */
function lineAt(lines: Array<{ ms: number; text: string }>, re: RegExp, last = false): number | undefined {
  const hits = lines.filter((l) => re.test(l.text));
  return (last ? hits.at(-1) : hits[0])?.ms;
}

interface BackupRun {
  /** spawn of `barman-receiver backup --wait` to its exit, which is status DONE */
  ms: number;
  /** "backup <id> started" (the daemon connected to PostgreSQL, checkpoint done, catalog entry made) */
  startedMs?: number;
  /** the "<n>/<n> files" line: every file is in on the receiver */
  filesMs?: number;
  /** "WAITING_FOR_WALS": files durable, manifest written, backup_stop done */
  endedMs?: number;
  bytes: number;
  /** bytes the catalog holds for the backup (compressed) */
  storedBytes?: number;
  files: number;
  agentPeakKb: number;
  agentCpu: number;
  receiverPeakKb: number;
  receiverCpu: number;
}

interface BaseBackupRun {
  ms: number;
  /** -v: "checkpoint completed" */
  checkpointMs?: number;
  /** the NOTICE "all required WAL segments have been archived": files sent, end-of-backup WAL archived */
  filesMs?: number;
  /** "syncing data to disk" */
  syncStartMs?: number;
  bytes: number;
  storedBytes?: number;
  peakKb?: number;
  cpu?: number;
}

interface RecoverRun {
  /** writing the data directory (and its WAL), durably */
  recoverMs: number;
  /** pg_ctl start until a query answers and pg_is_in_recovery() is false */
  startMs: number;
  peakKb?: number;
  cpu?: number;
  walFiles: number;
}

/** Bytes of every file below `dir` (what a backup occupies at rest). */
function duBytes(dir: string): number {
  let n = 0;
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) {
      try {
        n += statSync(join(e.parentPath, e.name)).size;
      } catch {
        // removed meanwhile
      }
    }
  }
  return n;
}

export async function backupSection(ctx: BenchContext): Promise<SectionResult> {
  const parts: string[] = [];
  for (const scale of SCALES) parts.push(await backupAtScale(ctx, scale));
  const compression = COMPRESSION ?? 'the default, zstd';
  return {
    title: `backup and recover: \`barman-receiver backup --wait\` vs \`pg_basebackup\`${pgbackrestPath() ? ' vs `pgbackrest backup`' : ''}, \`barman-receiver recover\` vs \`cp -a\` (compression ${compression})`,
    markdown: parts.join('\n\n'),
  };
}

/** pgbackrest on PATH, if any */
function pgbackrestPath(): string | undefined {
  for (const d of (process.env.PATH ?? '').split(':')) if (d && existsSync(join(d, 'pgbackrest'))) return join(d, 'pgbackrest');
  return undefined;
}

async function backupAtScale(ctx: BenchContext, wantedScale: number): Promise<string> {
  const dir = postgresDir(join(ctx.workDir, `backup-s${wantedScale}`));
  const node = process.execPath;
  const agent = join(ctx.repoRoot, 'dist', 'barman-agent.cjs');
  // as installed: the sh launcher, which runs barman-receiver.cjs with one malloc arena
  const receiverCli = join(ctx.repoRoot, 'dist', 'barman-receiver');
  const pgbackrest = pgbackrestPath();

  // space: the cluster, its WAL, the archived WAL, one catalog backup per round, one plain backup
  // and one recovered copy at a time, about 16 MB per pgbench scale unit each, plus max_wal_size
  const need = (scale: number) => (5 + ROUNDS) * scale * 16e6 + 2e9;
  const free = freeBytes(dir);
  let scale = wantedScale;
  let scaleNote = '';
  if (free < need(scale)) {
    if (free < need(SMALL_SCALE)) throw new Error(`backup: ${(free / 1e9).toFixed(1)} GB free below ${dir}, need about ${(need(SMALL_SCALE) / 1e9).toFixed(1)} GB even at scale ${SMALL_SCALE}; set BENCH_DIR to a roomier disk`);
    scaleNote = ` Scaled down from -s ${scale}: only ${(free / 1e9).toFixed(1)} GB were free, -s ${scale} needs about ${(need(scale) / 1e9).toFixed(1)} GB.`;
    scale = SMALL_SCALE;
  }
  ctx.log(`backup: ${(free / 1e9).toFixed(1)} GB free below ${dir}; pgbench scale ${scale}, ${ROUNDS} rounds`);

  const receiver = await startReceiver(join(dir, 'receiver'), ctx.repoRoot, ctx.cleanup, SERVER, {
    // the CLI finds the service by the address in the configuration: a fixed port, not 0
    listen: `127.0.0.1:${await freePort()}`,
    ...(COMPRESSION ? { compression: COMPRESSION } : {}),
  }, PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${postgresDir(join(PROFILE, 'receiver'))}`] : []);
  const catalog = await openCatalog(receiver, SERVER, ctx.cleanup);
  const clusterDir = join(dir, 'cluster');
  const agentDir = join(dir, 'agent');
  const agentConf = postgresAgentConfig(receiver, agentDir, SERVER, {
    conninfo: `host=${join(clusterDir, 'socket')} port=5432 user=postgres dbname=postgres`,
    pgdata: join(clusterDir, 'pgdata'),
    log_level: 'info',
  });
  const cluster = await BenchCluster.start(clusterDir, ctx.pgBin, ctx.cleanup, {
    archive_mode: 'on',
    archive_command: `'${node} ${agent} -c ${agentConf} push %p'`,
    max_wal_size: "'2GB'",
    checkpoint_timeout: "'1h'",
  });

  ctx.log(`backup: pgbench -i -s ${scale}`);
  const init = await runOk(join(ctx.pgBin, 'pgbench'), ['-i', '-s', String(scale), '-h', cluster.socketDir, '-p', String(cluster.port), '-U', 'postgres', 'postgres'], { asPostgres: true, cwd: cluster.dir });
  await cluster.psql('checkpoint');
  const accounts = await cluster.psql('select count(*) from pgbench_accounts');
  const dbBytes = Number(await cluster.psql('select sum(pg_database_size(oid)) from pg_database'));
  ctx.log(`backup: initialised in ${(init.ms / 1000).toFixed(0)} s, ${(dbBytes / 1e6).toFixed(0)} MB; waiting for the archiver`);

  // the agent daemon the receiver asks for backups
  const daemonOptions = { cwd: agentDir, asPostgres: true, cleanup: ctx.cleanup, what: 'barman-agent daemon', logFile: join(agentDir, 'daemon.log') };
  const daemon = startAgentDaemon(ctx.repoRoot, agentConf, daemonOptions, PROFILE ? postgresDir(join(PROFILE, 'agent')) : undefined);
  await daemon.waitForLine(/"msg":"connected to the receiver"/, 60_000);

  // pgBackRest, where installed: its own repository on the same disk, 2 processes, zstd 1, bundles
  let pgbrConf: string | undefined;
  if (pgbackrest) {
    const base = postgresDir(join(dir, 'pgbackrest'));
    for (const d of ['repo', 'log', 'lock', 'spool']) postgresDir(join(base, d));
    pgbrConf = join(base, 'pgbackrest.conf');
    writeFileSync(pgbrConf, [
      '[global]', `repo1-path=${join(base, 'repo')}`, 'repo1-bundle=y', 'compress-type=zst', 'compress-level=1', 'process-max=2', 'start-fast=y',
      // WAL goes to our catalog here (archive_command is ours): pgBackRest is not to wait for it in its repository
      'archive-check=n', `log-path=${join(base, 'log')}`, `lock-path=${join(base, 'lock')}`, `spool-path=${join(base, 'spool')}`, 'log-level-console=warn', 'log-level-file=off',
      `[${SERVER}]`, `pg1-path=${cluster.pgdata}`, `pg1-socket-path=${cluster.socketDir}`, `pg1-port=${cluster.port}`, 'pg1-user=postgres', '',
    ].join('\n'), { mode: 0o644 });
    await runOk(pgbackrest, [`--config=${pgbrConf}`, `--stanza=${SERVER}`, 'stanza-create'], { asPostgres: true, cwd: base });
  }

  /** no measurement starts while the archiver or the kernel still has work from the last one */
  const settle = async () => {
    await waitForArchiver(cluster.pgdata);
    await runOk('sync', []);
  };

  const work = postgresDir(join(dir, 'work')); // plain backups, recovered copies, logs, time files
  const copySocket = postgresDir(join(dir, 'copy-socket'));
  const ours: BackupRun[] = [];
  const base: BaseBackupRun[] = [];
  const brest: BaseBackupRun[] = [];
  const oursRec: RecoverRun[] = [];
  const baseRec: RecoverRun[] = [];
  const loads: string[] = [];

  const startCopy = (pgdata: string, name: string) =>
    startRecoveredCopy({ pgBin: ctx.pgBin, pgdata, name, work, socketDir: copySocket, port: COPY_PORT, accounts, cleanup: ctx.cleanup });

  const backupOurs = async (round: number): Promise<string> => {
    await settle();
    ctx.log(`backup: round ${round}: barman-receiver backup ${SERVER} --wait`);
    const receiverWatch = new RssWatch(receiver.pid);
    const agentWatch = new RssWatch(daemon.pid);
    const receiverCpuBefore = procCpuSeconds(receiver.pid);
    const agentCpuBefore = procCpuSeconds(daemon.pid);
    const run = await runMeasured(receiverCli, ['backup', '-c', receiver.config, SERVER, '--wait'], work, { cwd: work }).catch((err: Error) => {
      receiverWatch.stop();
      agentWatch.stop();
      throw new Error(`${err.message}\n--- receiver log\n${receiver.logTail()}\n--- daemon\n${daemon.output().slice(-4000)}`);
    });
    const receiverPeakKb = receiverWatch.stop();
    const agentPeakKb = agentWatch.stop();
    const receiverCpu = procCpuSeconds(receiver.pid) - receiverCpuBefore;
    const agentCpu = procCpuSeconds(daemon.pid) - agentCpuBefore;
    const id = run.stdout.trim().split('\n')[0]!;
    const info = await catalog.backups.read(id);
    if (info.status !== 'DONE') throw new Error(`backup ${id} is ${info.status}`);
    const startedMs = lineAt(run.stderrLines, /^backup \S+ started/);
    const filesMs = lineAt(run.stderrLines, /^(\d+)\/\1 files/, true);
    const endedMs = lineAt(run.stderrLines, /WAITING_FOR_WALS/);
    let storedBytes = 0;
    for await (const o of catalog.catalog.storage.list(`${catalog.catalog.layout.backupPrefix(id)}`)) storedBytes += o.size;
    ours.push({ ms: run.ms, startedMs, filesMs, endedMs: endedMs ?? lineAt(run.stderrLines, /: DONE/), bytes: info.size, storedBytes, files: info.fileCount, agentPeakKb, agentCpu, receiverPeakKb, receiverCpu });
    return id;
  };

  const backupBase = async (round: number, dest: string): Promise<void> => {
    await settle();
    ctx.log(`backup: round ${round}: pg_basebackup`);
    // -v only adds progress messages (their arrival splits the time into phases); -P would make
    // the server size the data directory first, so it is left out
    const args = ['-h', cluster.socketDir, '-p', String(cluster.port), '-U', 'postgres', '-D', dest, '-Fp', '-X', 'none', '--checkpoint=fast', '-v'];
    const run = await runMeasured(join(ctx.pgBin, 'pg_basebackup'), args, work, { asPostgres: true, cwd: work });
    const manifest = JSON.parse(readFileSync(join(dest, 'backup_manifest'), 'utf8')) as { Files: Array<{ Size: number }> };
    const checkpointMs = lineAt(run.stderrLines, /checkpoint completed/);
    // with -X none the server reports the end of the backup as this NOTICE, once the archiver has
    // the last segment
    const filesMs = lineAt(run.stderrLines, /all required WAL segments have been archived|write-ahead log end point/);
    const syncStartMs = lineAt(run.stderrLines, /syncing data to disk/);
    base.push({ ms: run.ms, checkpointMs, filesMs, syncStartMs, bytes: manifest.Files.reduce((n, f) => n + f.Size, 0), peakKb: run.peakKb, cpu: run.cpuSeconds });
  };

  const backupPgbackrest = async (round: number): Promise<void> => {
    if (!pgbackrest || !pgbrConf) return;
    await settle();
    ctx.log(`backup: round ${round}: pgbackrest backup`);
    const repo = join(dir, 'pgbackrest', 'repo', 'backup', SERVER);
    const before = existsSync(repo) ? duBytes(repo) : 0;
    const run = await runMeasured(pgbackrest, [`--config=${pgbrConf}`, `--stanza=${SERVER}`, '--type=full', 'backup'], work, { asPostgres: true, cwd: work });
    brest.push({ ms: run.ms, bytes: 0, storedBytes: duBytes(repo) - before, peakKb: run.peakKb, cpu: run.cpuSeconds });
    // one backup at a time in its repository: the next round's full one replaces it
    await runOk(pgbackrest, [`--config=${pgbrConf}`, `--stanza=${SERVER}`, '--repo1-retention-full=1', 'expire'], { asPostgres: true, cwd: work }).catch(() => undefined);
  };

  const recoverOurs = async (round: number): Promise<void> => {
    if (!RECOVER) return;
    await settle();
    ctx.log(`backup: round ${round}: barman-receiver recover + start`);
    const dest = join(work, `recovered-ours-${round}`);
    const run = await runMeasured(receiverCli, ['recover', '-c', receiver.config, SERVER, 'latest', dest], work, { cwd: work });
    const walFiles = existsSync(join(dest, 'barman_wal')) ? readdirSync(join(dest, 'barman_wal')).length : 0;
    const copy = await startCopy(dest, `recovered-ours-${round}`);
    await copy.stop();
    rmSync(dest, { recursive: true, force: true });
    oursRec.push({ recoverMs: run.ms, startMs: copy.ms, peakKb: run.peakKb, cpu: run.cpuSeconds, walFiles });
  };

  const recoverBase = async (round: number, plain: string): Promise<void> => {
    if (!RECOVER) return;
    await settle();
    ctx.log(`backup: round ${round}: cp -a + start`);
    // the WAL a -X none backup needs, flat, as an archive would hold it (from the catalog; not timed)
    const wal = postgresDir(join(work, `plain-wal-${round}`));
    const startWal = /START WAL LOCATION: .* \(file ([0-9A-F]{24})\)/.exec(readFileSync(join(plain, 'backup_label'), 'utf8'))?.[1];
    if (!startWal) throw new Error(`no START WAL LOCATION in ${join(plain, 'backup_label')}`);
    const segments = (await catalog.catalog.listSegments()).filter((s) => s >= startWal);
    for (const name of segments) await copyStoredWal(catalog, name, join(wal, name));
    await runOk('chown', ['-R', 'postgres:postgres', wal]);
    await runOk('sync', []);
    const dest = join(work, `recovered-plain-${round}`);
    // what our recover writes besides the files: WAL beside the data, recovery settings with
    // archiving off (the copy must not push into the catalog), recovery.signal; all durable
    const settings = "restore_command = 'cp barman_wal/%f %p'\narchive_mode = 'off'\narchive_command = 'false'\n";
    const script = 'cp -a "$1" "$2" && cp -a "$3" "$2/barman_wal" && printf "%s" "$4" >> "$2/postgresql.auto.conf" && touch "$2/recovery.signal" && sync';
    const run = await runMeasured('sh', ['-c', script, 'sh', plain, dest, wal, settings], work, { asPostgres: true, cwd: work });
    const copy = await startCopy(dest, `recovered-plain-${round}`);
    await copy.stop();
    rmSync(dest, { recursive: true, force: true });
    rmSync(wal, { recursive: true, force: true });
    baseRec.push({ recoverMs: run.ms, startMs: copy.ms, peakKb: run.peakKb, cpu: run.cpuSeconds, walFiles: segments.length });
  };

  // before the first backup, once the pgbench load's WAL is archived (the daemon drains what
  // PostgreSQL has not pushed yet): what each holds idle, and the receiver's peak while archiving
  await settle();
  const receiverIdleKb = procStatusKb(receiver.pid, 'VmRSS') ?? 0;
  const receiverLoadKb = procStatusKb(receiver.pid, 'VmHWM') ?? 0;
  const agentIdleKb = procStatusKb(daemon.pid, 'VmRSS') ?? 0;
  for (let round = 1; round <= ROUNDS; round++) {
    loads.push(loadAverage());
    const plain = join(work, `pg_basebackup-${round}`);
    // the order rotates each round, so drift on the machine weighs on every side alike
    const backups = [() => backupOurs(round), () => backupBase(round, plain), () => backupPgbackrest(round)];
    for (let i = 0; i < backups.length; i++) await backups[(i + round - 1) % backups.length]!();
    if (round % 2 === 1) {
      await recoverOurs(round);
      await recoverBase(round, plain);
    } else {
      await recoverBase(round, plain);
      await recoverOurs(round);
    }
    rmSync(plain, { recursive: true, force: true });
    // the catalog keeps the newest backup only (recovery reads `latest`): disk stays bounded at any scale
    for (const b of (await catalog.backups.list()).slice(0, -1)) await runOk(receiverCli, ['delete', '-c', receiver.config, SERVER, b.backupId]).catch(() => undefined);
  }
  loads.push(loadAverage());
  // the high-water mark is reset before each backup: the peak since the last one's start
  const receiverTailKb = procStatusKb(receiver.pid, 'VmHWM') ?? 0;
  const receiverLifeKb = Math.max(receiverLoadKb, receiverTailKb, ...ours.map((r) => r.receiverPeakKb));
  await daemon.stop('SIGTERM');
  await receiver.stop();
  await cluster.stop('fast');

  const header = [
    `### pgbench -s ${scale}`,
    '',
    `pgbench database \`pgbench -i -s ${scale}\` (${accounts} accounts, ${(dbBytes / 1e6).toFixed(0)} MB of databases), PostgreSQL archiving through \`barman-agent push\` into a \`barman-receiver serve\` on this host (compression ${COMPRESSION ?? 'default (zstd)'}); \`barman-agent daemon\` running, which takes the backups the receiver asks for.${scaleNote}`,
    `${ROUNDS} round${ROUNDS === 1 ? '' : 's'}, each: our backup, \`pg_basebackup\`${pgbackrest ? ' and `pgbackrest backup`' : ''} (the order rotating from round to round)${RECOVER ? ', then our recovery and the `cp -a` baseline (order alternating)' : ''}; before every measurement the archiver is idle and \`sync\` has written back the previous one's dirty pages.`,
    `Every catalog backup reached DONE${RECOVER ? ' and every recovered copy was started and held the same pgbench_accounts row count as the source' : ''}.`,
  ];
  return report(header, ours, base, brest, oursRec, baseRec, { idleKb: receiverIdleKb, loadKb: receiverLoadKb, lifeKb: receiverLifeKb, agentIdleKb }, loads);
}

function report(header: string[], ours: BackupRun[], base: BaseBackupRun[], brest: BaseBackupRun[], oursRec: RecoverRun[], baseRec: RecoverRun[], receiverKb: { idleKb: number; loadKb: number; lifeKb: number; agentIdleKb: number }, loads: string[]): string {
  const med = (xs: number[]) => stats(xs).median;
  const range = (xs: number[], fmt: (x: number) => string) => `${fmt(stats(xs).min)}–${fmt(stats(xs).max)}`;
  const mb = (x: number) => x.toFixed(0);
  const mib = (kb: number | undefined) => (kb === undefined ? '?' : (kb / 1024).toFixed(0));
  const secs = (x: number | undefined) => (x === undefined ? '?' : x.toFixed(1));
  const opt = (xs: Array<number | undefined>) => xs.filter((x): x is number => x !== undefined);
  const medOpt = (xs: Array<number | undefined>) => (opt(xs).length ? med(opt(xs)) : undefined);
  const met = (ok: boolean) => (ok ? 'met' : '**not met**');

  const bytes = med(ours.map((r) => r.bytes));
  const oursMbs = ours.map((r) => mbPerSecond(r.bytes, r.ms));
  const baseMbs = base.map((r) => mbPerSecond(r.bytes, r.ms));
  // pgBackRest backs up the same data directory: the same bytes, measured by pg_basebackup's manifest
  const brestMbs = brest.map((r) => mbPerSecond(med(base.map((b) => b.bytes)), r.ms));
  const totalRec = (r: RecoverRun) => r.recoverMs + r.startMs;
  const oursRecMbs = oursRec.map((r) => mbPerSecond(bytes, r.recoverMs));
  const baseRecMbs = baseRec.map((r) => mbPerSecond(bytes, r.recoverMs));
  const agentPeak = stats(ours.map((r) => r.agentPeakKb)).max / 1024;
  const receiverPeak = stats(ours.map((r) => r.receiverPeakKb)).max / 1024;
  const ratio = med(oursMbs) / med(baseMbs);

  const rows: string[][] = [
    ['`barman-receiver backup main --wait` (spawn to DONE)', String(ours.length), secs(med(ours.map((r) => r.ms)) / 1000), range(ours.map((r) => r.ms / 1000), secs), mb(bytes / 1e6), mb((medOpt(ours.map((r) => r.storedBytes)) ?? 0) / 1e6), mb(med(oursMbs)), range(oursMbs, mb), `agent ${mib(med(ours.map((r) => r.agentPeakKb)))}, receiver ${mib(med(ours.map((r) => r.receiverPeakKb)))}`, `agent ${secs(med(ours.map((r) => r.agentCpu)))} + receiver ${secs(med(ours.map((r) => r.receiverCpu)))}`],
    ['`pg_basebackup -Fp -X none --checkpoint=fast`', String(base.length), secs(med(base.map((r) => r.ms)) / 1000), range(base.map((r) => r.ms / 1000), secs), mb(med(base.map((r) => r.bytes)) / 1e6), mb(med(base.map((r) => r.bytes)) / 1e6), mb(med(baseMbs)), range(baseMbs, mb), mib(medOpt(base.map((r) => r.peakKb))), `${secs(medOpt(base.map((r) => r.cpu)))} (client only)`],
  ];
  if (brest.length > 0) {
    rows.push(['`pgbackrest backup` (full, process-max 2, zst level 1, repo-bundle)', String(brest.length), secs(med(brest.map((r) => r.ms)) / 1000), range(brest.map((r) => r.ms / 1000), secs), mb(med(base.map((r) => r.bytes)) / 1e6), mb((medOpt(brest.map((r) => r.storedBytes)) ?? 0) / 1e6), mb(med(brestMbs)), range(brestMbs, mb), mib(medOpt(brest.map((r) => r.peakKb))), `${secs(medOpt(brest.map((r) => r.cpu)))} (with its local processes)`]);
  }
  const backupTable = markdownTable(['backup', 'runs', 'median s', 'min–max s', 'MB', 'MB at rest', 'median MB/s', 'min–max MB/s', 'peak RSS MiB (median)', 'CPU s (median)'], rows);
  const diff = (xs: Array<[number | undefined, number | undefined]>) => medOpt(xs.map(([a, b]) => (a === undefined || b === undefined ? undefined : b - a)));
  const s2 = (ms: number | undefined) => (ms === undefined ? '?' : (ms / 1000).toFixed(1));
  const phaseTable = markdownTable(
    ['where the backup time goes (median s)', 'ours', '`pg_basebackup`'],
    [
      ['start (ours: spawn until "backup <id> started": connect, ask the daemon, checkpoint, catalog entry; pg_basebackup: "checkpoint completed")', s2(medOpt(ours.map((r) => r.startedMs))), s2(medOpt(base.map((r) => r.checkpointMs)))],
      ['files (ours: until every file is in on the receiver; pg_basebackup: until the NOTICE "all required WAL segments have been archived")', s2(diff(ours.map((r) => [r.startedMs, r.filesMs]))), s2(diff(base.map((r) => [r.checkpointMs, r.filesMs])))],
      ['end (ours: pg_backup_stop, every file durable, manifest, until WAITING_FOR_WALS; pg_basebackup: "syncing data to disk" to exit)', s2(diff(ours.map((r) => [r.filesMs, r.endedMs]))), s2(diff(base.map((r) => [r.syncStartMs, r.ms])))],
      ['ours: WAITING_FOR_WALS to DONE (the end segment archived) and exit', s2(diff(ours.map((r) => [r.endedMs, r.ms]))), '–'],
    ],
  );
  const goals: string[][] = [
    ['our backup MB/s / pg_basebackup MB/s (spawn to DONE)', fmtRatio(ratio), `≥ ${SPEED_GOAL}×`, met(ratio >= SPEED_GOAL)],
    ['agent peak RSS (max over rounds)', `${agentPeak.toFixed(0)} MiB`, `< ${AGENT_RSS_GOAL_MIB} MiB`, met(agentPeak < AGENT_RSS_GOAL_MIB)],
    ['receiver peak RSS (max over rounds)', `${receiverPeak.toFixed(0)} MiB`, `< ${RECEIVER_RSS_GOAL_MIB} MiB`, met(receiverPeak < RECEIVER_RSS_GOAL_MIB)],
  ];
  if (brest.length > 0) goals.push(['our backup MB/s / pgBackRest MB/s', fmtRatio(med(oursMbs) / med(brestMbs)), '> 1×', met(med(oursMbs) > med(brestMbs))]);
  if (oursRec.length > 0) {
    goals.push(['our recover write MB/s / cp -a MB/s', fmtRatio(med(oursRecMbs) / med(baseRecMbs)), '', '']);
    goals.push(['cp -a + start-up time / our recover + start-up time', fmtRatio(med(baseRec.map(totalRec)) / med(oursRec.map(totalRec))), '', '']);
  }
  const goalTable = markdownTable(['ratio or peak (medians; ratio > 1 means we are faster)', 'value', 'goal', ''], goals);
  const recoverTable = oursRec.length === 0 ? '' : markdownTable(
    ['recover', 'runs', 'write median s', 'write min–max s', 'write MB/s', 'start-up median s', 'total median s', 'peak RSS MiB', 'CPU s (median)', 'WAL files'],
    [
      ['`barman-receiver recover main latest <dest>` + start', String(oursRec.length), secs(med(oursRec.map((r) => r.recoverMs)) / 1000), range(oursRec.map((r) => r.recoverMs / 1000), secs), mb(med(oursRecMbs)), secs(med(oursRec.map((r) => r.startMs)) / 1000), secs(med(oursRec.map(totalRec)) / 1000), mib(medOpt(oursRec.map((r) => r.peakKb))), secs(medOpt(oursRec.map((r) => r.cpu))), String(med(oursRec.map((r) => r.walFiles)))],
      ['`cp -a` plain backup + WAL, settings, `sync` + start', String(baseRec.length), secs(med(baseRec.map((r) => r.recoverMs)) / 1000), range(baseRec.map((r) => r.recoverMs / 1000), secs), mb(med(baseRecMbs)), secs(med(baseRec.map((r) => r.startMs)) / 1000), secs(med(baseRec.map(totalRec)) / 1000), mib(medOpt(baseRec.map((r) => r.peakKb))), secs(medOpt(baseRec.map((r) => r.cpu))), String(med(baseRec.map((r) => r.walFiles)))],
    ],
  );
  const spread = (xs: number[]) => (xs.length ? fmtRatio(stats(xs).max / stats(xs).min) : '–');
  return [
    ...header,
    '',
    goalTable,
    '',
    backupTable,
    '',
    phaseTable,
    '',
    ...(recoverTable ? [recoverTable, ''] : []),
    `Memory: the receiver service held ${mib(receiverKb.idleKb)} MiB before the first backup (peak ${mib(receiverKb.loadKb)} MiB while it archived the pgbench load's WAL), peaked at ${mib(med(ours.map((r) => r.receiverPeakKb)))} MiB during a backup (median; max ${mib(stats(ours.map((r) => r.receiverPeakKb)).max)}) while ${mb(bytes / 1e6)} MB went through it, and at ${mib(receiverKb.lifeKb)} MiB over the whole run; the agent daemon held ${mib(receiverKb.agentIdleKb)} MiB before the first backup (the load's WAL archived) and peaked at ${mib(med(ours.map((r) => r.agentPeakKb)))} MiB during a backup (median; max ${mib(stats(ours.map((r) => r.agentPeakKb)).max)}).`,
    'Peak RSS of the agent daemon and of the receiver service is their VmHWM, reset before each backup (`clear_refs`), and VmRSS sampled every 100 ms; that of `pg_basebackup`, `pgbackrest` (its largest process), `recover` and `cp` comes from GNU time (`%M`).',
    'CPU seconds are user + system: ours are the daemon\'s and the receiver\'s over the backup (from /proc); `pgbackrest` and its local worker processes from GNU time; PostgreSQL\'s own share (the backends reading, the walsender for pg_basebackup) is not counted on any side.',
    '',
    `Noise: max/min over the rounds is ${spread(ours.map((r) => r.ms))} for our backup, ${spread(base.map((r) => r.ms))} for pg_basebackup${brest.length ? `, ${spread(brest.map((r) => r.ms))} for pgBackRest` : ''}${oursRec.length ? `, ${spread(oursRec.map(totalRec))} for our recover + start-up, ${spread(baseRec.map(totalRec))} for cp -a + start-up` : ''}; load average at the start of each round and at the end: ${loads.join(' → ')}.`,
    'All files sit in the page cache (written just before), so reads are nearly free and the cost is CPU, the writes and their flush — every side makes its copy durable (pg_basebackup syncs its output at the end, our receiver fsyncs every file before the manifest is written and the backup counts, pgBackRest syncs its repository files).',
    '`pg_basebackup -X none` against an archiving server waits, at its end, until the last WAL segment of the backup is archived (here by `barman-agent push`); ours is timed until DONE, which is the same point: the segment holding its end is archived. pgBackRest is told not to wait for WAL (`archive-check=n`: the cluster archives into our catalog), which spares it that wait.',
    'Only a few rounds fit in a run, on a small VM shared with other work: treat differences of less than about 20 % as noise.',
  ].join('\n');
}
