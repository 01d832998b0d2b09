// Section "backup": a base backup and a recovery of one pgbench database, ours next to what a DBA
// would do with PostgreSQL's own tools on the same cluster and disk:
//   backup:  `barman-agent backup` (as postgres)   vs  `pg_basebackup -Fp -X none --checkpoint=fast`
//   recover: `barman-receiver recover main latest` vs  `cp -a` of that plain backup (+ its WAL,
//            recovery.signal, restore_command) — each followed by `pg_ctl start` until the copy
//            answers `select 1` and pg_is_in_recovery() is false.
// The cluster archives through `barman-agent push` (so our backups become DONE); the receiver is a
// real `barman-receiver serve` on this host. Rounds are interleaved, and each recovered copy is
// checked (row count) before its figures count.

import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { OpenServer } from '../receiver/catalog/open';
import {
  BenchCluster,
  type BenchContext,
  copyStoredWal,
  fmtMs,
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

const SCALE = Number(process.env.BENCH_BACKUP_SCALE ?? 50);
const SMALL_SCALE = 20;
const ROUNDS = Number(process.env.BENCH_BACKUP_ROUNDS ?? 3);
/** port of the recovered copies (in their own socket folder, so nothing else can collide) */
const COPY_PORT = 5433;
const SERVER = 'main';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const now = () => Number(process.hrtime.bigint()) / 1e6;

/** ms after spawn when a program's stderr first showed a line matching `re` */
function lineAt(lines: Array<{ ms: number; text: string }>, re: RegExp, last = false): number | undefined {
  const hits = lines.filter((l) => re.test(l.text));
  return (last ? hits.at(-1) : hits[0])?.ms;
}

interface BackupRun {
  ms: number;
  /** from the agent's progress on stderr: "backup <id> started" (connected, checkpoint done, catalog entry made) */
  startedMs?: number;
  /** the last "<n>/<n> files" line: every file sent and acknowledged */
  filesMs?: number;
  /** spawn to status DONE in the catalog */
  doneMs: number;
  bytes: number;
  files: number;
  agentPeakKb?: number;
  agentCpu?: number;
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

export async function backupSection(ctx: BenchContext): Promise<SectionResult> {
  const dir = postgresDir(join(ctx.workDir, 'backup'));
  const node = process.execPath;
  const agent = join(ctx.repoRoot, 'dist', 'barman-agent.cjs');
  const receiverCli = join(ctx.repoRoot, 'dist', 'barman-receiver.cjs');

  // space: the cluster, its WAL, the archived WAL, one catalog backup per round, one plain backup
  // and one recovered copy at a time, about 16 MB per pgbench scale unit each, plus max_wal_size
  const need = (scale: number) => (5 + ROUNDS) * scale * 16e6 + 2e9;
  const free = freeBytes(dir);
  let scale = SCALE;
  let scaleNote = '';
  if (free < need(scale)) {
    if (free < need(SMALL_SCALE)) throw new Error(`backup: ${(free / 1e9).toFixed(1)} GB free below ${dir}, need about ${(need(SMALL_SCALE) / 1e9).toFixed(1)} GB even at scale ${SMALL_SCALE}; set BENCH_DIR to a roomier disk`);
    scaleNote = ` Scaled down from -s ${scale}: only ${(free / 1e9).toFixed(1)} GB were free, -s ${scale} needs about ${(need(scale) / 1e9).toFixed(1)} GB.`;
    scale = SMALL_SCALE;
  }
  ctx.log(`backup: ${(free / 1e9).toFixed(1)} GB free below ${dir}; pgbench scale ${scale}, ${ROUNDS} rounds`);

  const receiver = await startReceiver(join(dir, 'receiver'), ctx.repoRoot, ctx.cleanup, SERVER, { compression: 'none' });
  const catalog = await openCatalog(receiver, SERVER, ctx.cleanup);
  const clusterDir = join(dir, 'cluster');
  const agentConf = postgresAgentConfig(receiver, join(dir, 'agent'), SERVER, {
    conninfo: `host=${join(clusterDir, 'socket')} port=5432 user=postgres dbname=postgres`,
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

  /** no measurement starts while the archiver or the kernel still has work from the last one */
  const settle = async () => {
    await waitForArchiver(cluster.pgdata);
    await runOk('sync', []);
  };

  const work = postgresDir(join(dir, 'work')); // plain backups, recovered copies, logs, time files
  const copySocket = postgresDir(join(dir, 'copy-socket'));
  const ours: BackupRun[] = [];
  const base: BaseBackupRun[] = [];
  const oursRec: RecoverRun[] = [];
  const baseRec: RecoverRun[] = [];
  const loads: string[] = [];

  const startCopy = (pgdata: string, name: string) =>
    startRecoveredCopy({ pgBin: ctx.pgBin, pgdata, name, work, socketDir: copySocket, port: COPY_PORT, accounts, cleanup: ctx.cleanup });

  const backupOurs = async (round: number): Promise<string> => {
    await settle();
    ctx.log(`backup: round ${round}: barman-agent backup`);
    const watch = new RssWatch(receiver.pid);
    const cpuBefore = procCpuSeconds(receiver.pid);
    const started = now();
    const run = await runMeasured(node, [agent, '-c', agentConf, 'backup'], work, { asPostgres: true, cwd: work }).catch((err: Error) => {
      watch.stop();
      throw new Error(`${err.message}\n--- receiver log\n${receiver.logTail()}`);
    });
    const id = run.stdout.trim();
    const doneMs = (await waitForDone(catalog, id)) - started;
    const receiverPeakKb = watch.stop();
    const receiverCpu = procCpuSeconds(receiver.pid) - cpuBefore;
    const info = JSON.parse((await runOk(node, [receiverCli, 'show-backup', '-c', receiver.config, SERVER, id, '--json'])).stdout) as { size: number; fileCount: number; status: string };
    if (info.status !== 'DONE') throw new Error(`backup ${id} is ${info.status}`);
    const startedMs = lineAt(run.stderrLines, /^backup \S+ started/);
    const filesMs = lineAt(run.stderrLines, /^(\d+)\/\1 files/, true);
    ours.push({ ms: run.ms, startedMs, filesMs, doneMs, bytes: info.size, files: info.fileCount, agentPeakKb: run.peakKb, agentCpu: run.cpuSeconds, receiverPeakKb, receiverCpu });
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

  const recoverOurs = async (round: number): Promise<void> => {
    await settle();
    ctx.log(`backup: round ${round}: barman-receiver recover + start`);
    const dest = join(work, `recovered-ours-${round}`);
    const run = await runMeasured(node, [receiverCli, 'recover', '-c', receiver.config, SERVER, 'latest', dest], work, { cwd: work });
    const walFiles = existsSync(join(dest, 'barman_wal')) ? readdirSync(join(dest, 'barman_wal')).length : 0;
    const copy = await startCopy(dest, `recovered-ours-${round}`);
    await copy.stop();
    rmSync(dest, { recursive: true, force: true });
    oursRec.push({ recoverMs: run.ms, startMs: copy.ms, peakKb: run.peakKb, cpu: run.cpuSeconds, walFiles });
  };

  const recoverBase = async (round: number, plain: string): Promise<void> => {
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

  // before the first backup: what it holds idle, and its peak while archiving the pgbench load's WAL
  const receiverIdleKb = procStatusKb(receiver.pid, 'VmRSS') ?? 0;
  const receiverLoadKb = procStatusKb(receiver.pid, 'VmHWM') ?? 0;
  for (let round = 1; round <= ROUNDS; round++) {
    loads.push(loadAverage());
    const plain = join(work, `pg_basebackup-${round}`);
    // the order alternates each round, so drift on the machine weighs on both sides alike
    if (round % 2 === 1) {
      await backupOurs(round);
      await backupBase(round, plain);
      await recoverOurs(round);
      await recoverBase(round, plain);
    } else {
      await backupBase(round, plain);
      await backupOurs(round);
      await recoverBase(round, plain);
      await recoverOurs(round);
    }
    rmSync(plain, { recursive: true, force: true });
  }
  loads.push(loadAverage());
  // the high-water mark is reset before each backup: the peak since the last one's start
  const receiverTailKb = procStatusKb(receiver.pid, 'VmHWM') ?? 0;
  const receiverLifeKb = Math.max(receiverLoadKb, receiverTailKb, ...ours.map((r) => r.receiverPeakKb));
  await receiver.stop();
  await cluster.stop('fast');

  const header = [
    `pgbench database \`pgbench -i -s ${scale}\` (${accounts} accounts, ${(dbBytes / 1e6).toFixed(0)} MB of databases), PostgreSQL archiving through \`barman-agent push\` into a \`barman-receiver serve\` on this host (compression none).${scaleNote}`,
    `${ROUNDS} round${ROUNDS === 1 ? '' : 's'}, each: our backup and \`pg_basebackup\`, then our recovery and the \`cp -a\` baseline, the order of each pair alternating from round to round; before every measurement the archiver is idle and \`sync\` has written back the previous one's dirty pages.`,
    'Every catalog backup reached DONE and every recovered copy was started and held the same pgbench_accounts row count as the source.',
  ];
  return { title: 'backup and recover: `barman-agent backup` vs `pg_basebackup`, `barman-receiver recover` vs `cp -a`', markdown: report(header, ours, base, oursRec, baseRec, { idleKb: receiverIdleKb, loadKb: receiverLoadKb, lifeKb: receiverLifeKb }, loads) };
}

/** Polls the catalog (its backup.info, as the receiver reads it) until the backup is DONE; returns when (bench clock, ms). */
async function waitForDone(open: OpenServer, id: string, timeoutMs = 600_000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const info = await open.backups.read(id).catch(() => undefined);
    if (info?.status === 'DONE') return now();
    if (info?.status === 'FAILED') throw new Error(`backup ${id} FAILED: ${info.error}`);
    if (Date.now() > deadline) throw new Error(`backup ${id} still ${info?.status ?? 'missing'} after ${timeoutMs / 1000} s`);
    await sleep(10);
  }
}


function report(header: string[], ours: BackupRun[], base: BaseBackupRun[], oursRec: RecoverRun[], baseRec: RecoverRun[], receiverKb: { idleKb: number; loadKb: number; lifeKb: number }, loads: string[]): string {
  const med = (xs: number[]) => stats(xs).median;
  const range = (xs: number[], fmt: (x: number) => string) => `${fmt(stats(xs).min)}–${fmt(stats(xs).max)}`;
  const mb = (x: number) => x.toFixed(0);
  const mib = (kb: number | undefined) => (kb === undefined ? '?' : (kb / 1024).toFixed(0));
  const secs = (x: number | undefined) => (x === undefined ? '?' : x.toFixed(1));
  const opt = (xs: Array<number | undefined>) => xs.filter((x): x is number => x !== undefined);
  const medOpt = (xs: Array<number | undefined>) => (opt(xs).length ? med(opt(xs)) : undefined);

  const oursMbs = ours.map((r) => mbPerSecond(r.bytes, r.ms));
  const oursDoneMbs = ours.map((r) => mbPerSecond(r.bytes, r.doneMs));
  const baseMbs = base.map((r) => mbPerSecond(r.bytes, r.ms));
  const bytes = med(ours.map((r) => r.bytes));
  const totalRec = (r: RecoverRun) => r.recoverMs + r.startMs;
  const oursRecMbs = oursRec.map((r) => mbPerSecond(bytes, r.recoverMs));
  const baseRecMbs = baseRec.map((r) => mbPerSecond(bytes, r.recoverMs));

  const backupTable = markdownTable(
    ['backup', 'runs', 'median s', 'min–max s', 'MB', 'median MB/s', 'min–max MB/s', 'peak RSS MiB', 'CPU s (median)'],
    [
      ['`barman-agent backup` (spawn to exit)', String(ours.length), secs(med(ours.map((r) => r.ms)) / 1000), range(ours.map((r) => r.ms / 1000), secs), mb(bytes / 1e6), mb(med(oursMbs)), range(oursMbs, mb), `agent ${mib(medOpt(ours.map((r) => r.agentPeakKb)))}, receiver ${mib(med(ours.map((r) => r.receiverPeakKb)))}`, `agent ${secs(medOpt(ours.map((r) => r.agentCpu)))}, receiver ${secs(med(ours.map((r) => r.receiverCpu)))}`],
      ['… until status DONE in the catalog', String(ours.length), secs(med(ours.map((r) => r.doneMs)) / 1000), range(ours.map((r) => r.doneMs / 1000), secs), mb(bytes / 1e6), mb(med(oursDoneMbs)), range(oursDoneMbs, mb), '', ''],
      ['`pg_basebackup -Fp -X none --checkpoint=fast`', String(base.length), secs(med(base.map((r) => r.ms)) / 1000), range(base.map((r) => r.ms / 1000), secs), mb(med(base.map((r) => r.bytes)) / 1e6), mb(med(baseMbs)), range(baseMbs, mb), mib(medOpt(base.map((r) => r.peakKb))), `${secs(medOpt(base.map((r) => r.cpu)))} (client only)`],
    ],
  );
  const diff = (xs: Array<[number | undefined, number | undefined]>) => medOpt(xs.map(([a, b]) => (a === undefined || b === undefined ? undefined : b - a)));
  const s2 = (ms: number | undefined) => (ms === undefined ? '?' : (ms / 1000).toFixed(1));
  const phaseTable = markdownTable(
    ['where the backup time goes (median s)', '`barman-agent backup`', '`pg_basebackup`'],
    [
      ['start: spawn, connect, checkpoint (ours: until "backup <id> started"; pg_basebackup: "checkpoint completed")', s2(medOpt(ours.map((r) => r.startedMs))), s2(medOpt(base.map((r) => r.checkpointMs)))],
      ['files (ours: until every file is acknowledged; pg_basebackup: until the NOTICE "all required WAL segments have been archived", so waiting for the archiver is in it)', s2(diff(ours.map((r) => [r.startedMs, r.filesMs]))), s2(diff(base.map((r) => [r.checkpointMs, r.filesMs])))],
      ['end (ours: pg_backup_stop, then the receiver fsyncs every file and writes the manifest; pg_basebackup: "syncing data to disk" to exit)', s2(diff(ours.map((r) => [r.filesMs, r.ms]))), s2(diff(base.map((r) => [r.syncStartMs, r.ms])))],
      ['status DONE after the agent exited', s2(diff(ours.map((r) => [r.ms, r.doneMs]))), '–'],
    ],
  );
  const recoverTable = markdownTable(
    ['recover', 'runs', 'write median s', 'write min–max s', 'write MB/s', 'start-up median s', 'total median s', 'peak RSS MiB', 'CPU s (median)', 'WAL files'],
    [
      ['`barman-receiver recover main latest <dest>` + start', String(oursRec.length), secs(med(oursRec.map((r) => r.recoverMs)) / 1000), range(oursRec.map((r) => r.recoverMs / 1000), secs), mb(med(oursRecMbs)), secs(med(oursRec.map((r) => r.startMs)) / 1000), secs(med(oursRec.map(totalRec)) / 1000), mib(medOpt(oursRec.map((r) => r.peakKb))), secs(medOpt(oursRec.map((r) => r.cpu))), String(med(oursRec.map((r) => r.walFiles)))],
      ['`cp -a` plain backup + WAL, settings, `sync` + start', String(baseRec.length), secs(med(baseRec.map((r) => r.recoverMs)) / 1000), range(baseRec.map((r) => r.recoverMs / 1000), secs), mb(med(baseRecMbs)), secs(med(baseRec.map((r) => r.startMs)) / 1000), secs(med(baseRec.map(totalRec)) / 1000), mib(medOpt(baseRec.map((r) => r.peakKb))), secs(medOpt(baseRec.map((r) => r.cpu))), String(med(baseRec.map((r) => r.walFiles)))],
    ],
  );
  const ratios = markdownTable(
    ['ratio (medians; > 1 means we are faster)', 'value', 'goal'],
    [
      ['our backup MB/s / pg_basebackup MB/s', fmtRatio(med(oursMbs) / med(baseMbs)), '≥ 1.5×'],
      ['our backup until DONE MB/s / pg_basebackup MB/s', fmtRatio(med(oursDoneMbs) / med(baseMbs)), ''],
      ['our recover write MB/s / cp -a MB/s', fmtRatio(med(oursRecMbs) / med(baseRecMbs)), ''],
      ['cp -a + start-up time / our recover + start-up time', fmtRatio(med(baseRec.map(totalRec)) / med(oursRec.map(totalRec))), '≥ 1.5×'],
    ],
  );
  const spread = (xs: number[]) => stats(xs).max / stats(xs).min;
  return [
    ...header,
    '',
    backupTable,
    '',
    phaseTable,
    '',
    recoverTable,
    '',
    ratios,
    '',
    `Memory: the receiver service held ${mib(receiverKb.idleKb)} MiB before the first backup (peak ${mib(receiverKb.loadKb)} MiB while it archived the pgbench load's WAL), peaked at ${mib(med(ours.map((r) => r.receiverPeakKb)))} MiB during a backup (median; max ${mib(stats(ours.map((r) => r.receiverPeakKb)).max)}) while ${mb(bytes / 1e6)} MB went through it, and at ${mib(receiverKb.lifeKb)} MiB over the whole run.`,
    'Peak RSS of the agent, of `pg_basebackup`, of `recover` and of `cp` comes from GNU time (`%M`); the receiver\'s from its VmHWM, reset before each backup (`clear_refs`), and VmRSS sampled every 100 ms.',
    'CPU seconds are user + system of that process alone (the receiver\'s from /proc over the backup); PostgreSQL\'s own share (the backends reading for the agent, the walsender for pg_basebackup) is not counted.',
    '',
    `Noise: max/min over the rounds is ${fmtRatio(spread(ours.map((r) => r.ms)))} for our backup, ${fmtRatio(spread(base.map((r) => r.ms)))} for pg_basebackup, ${fmtRatio(spread(oursRec.map(totalRec)))} for our recover + start-up, ${fmtRatio(spread(baseRec.map(totalRec)))} for cp -a + start-up; load average at the start of each round and at the end: ${loads.join(' → ')}.`,
    'All files sit in the page cache (23 GiB of RAM, written just before), so reads are nearly free and the cost is CPU, the writes and their flush — both sides fsync (pg_basebackup syncs its output at the end, our receiver fsyncs every file before the backup counts; our recover fsyncs every file it writes, the baseline ends with `sync`).',
    '`pg_basebackup -X none` against an archiving server waits, at its end, until the last WAL segment of the backup is archived (here by `barman-agent push`), so its time compares best with our "until DONE" row; our agent returns once its files are durable, and the backup becomes DONE when the archiver has pushed the segment holding its end.',
    'The recover baseline gets the WAL it needs (from the backup\'s start segment on, copied flat out of the catalog beforehand, not timed) beside the data as `barman_wal/`, as our recover does, and `restore_command`, `archive_mode = off` and `recovery.signal`; the start-up then replays that WAL and promotes.',
    'Only a few rounds fit in a run (each moves several GB), on a small VM shared with other work: treat differences of less than about 20 % as noise.',
  ].join('\n');
}
