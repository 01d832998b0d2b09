// Section "recover": how long it takes to get a working PostgreSQL back from a backup, ours next to
// what a DBA would do instead, on one pgbench cluster, with the receiver's default compression
// (zstd) at rest. Each measurement is "write the data directory (durably) + pg_ctl start until a
// query answers and pg_is_in_recovery() is false", then the copy's pgbench_accounts row count is
// checked before its figures count:
//   `barman-receiver recover main latest <dest>`   (on the backup host, from the catalog)
//   `barman-agent restore latest <pgdata>`          (as postgres, over the WebSocket from the receiver)
//   `cp -a` of a plain `pg_basebackup -Fp` copy + its WAL, settings, recovery.signal, `sync`
//   `pgbackrest restore` (2 processes, zstd level 1, bundling), where pgbackrest is installed
// The ways are interleaved round by round (the order rotates), so other load on the machine weighs
// on all of them alike; before each measurement the archiver is idle and `sync` has written back
// the previous one's dirty pages.
//
// BENCH_RECOVER_SCALE (pgbench scale, default 50) and BENCH_RECOVER_ROUNDS (default 3) shrink it
// for trials; BENCH_RECOVER_PGBACKREST=0 leaves pgBackRest out even where it is installed.

import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  BenchCluster,
  type BenchContext,
  copyStoredWal,
  fmtRatio,
  freeBytes,
  loadAverage,
  markdownTable,
  openCatalog,
  postgresAgentConfig,
  postgresDir,
  procCpuSeconds,
  RssWatch,
  runMeasured,
  runOk,
  type SectionResult,
  startReceiver,
  startRecoveredCopy,
  stats,
  waitForArchiver,
  waitForBackupDone,
} from './lib';

const SCALE = Number(process.env.BENCH_RECOVER_SCALE ?? 50);
const ROUNDS = Number(process.env.BENCH_RECOVER_ROUNDS ?? 3);
const WITH_PGBACKREST = process.env.BENCH_RECOVER_PGBACKREST !== '0';
const GOAL = 1.2;
const SERVER = 'main';
const STANZA = 'bench';
/** port of the recovered copies (in their own socket folder, so nothing else can collide) */
const COPY_PORT = 5433;


type Way = 'recover' | 'restore' | 'cp' | 'pgbackrest';

interface Run {
  /** writing the data directory, durably (spawn to exit) */
  writeMs: number;
  /** pg_ctl start until a query answers and pg_is_in_recovery() is false */
  startMs: number;
  peakKb?: number;
  cpu?: number;
  /** the receiver's share, for the agent's restore */
  receiverCpu?: number;
  receiverPeakKb?: number;
}

const LABEL: Record<Way, string> = {
  recover: '`barman-receiver recover main latest <dest>` + start',
  restore: '`barman-agent restore latest <pgdata>` (as postgres) + start',
  cp: '`cp -a` plain backup + WAL, settings, `sync` + start',
  pgbackrest: '`pgbackrest restore` (process-max 2, zst-1, bundles) + start',
};

export async function recoverSection(ctx: BenchContext): Promise<SectionResult> {
  const dir = postgresDir(join(ctx.workDir, 'recover'));
  // as installed: the sh launcher, which runs barman-agent.cjs with one malloc arena
  const agent = join(ctx.repoRoot, 'dist', 'barman-agent');
  // as installed: the sh launcher, which runs barman-receiver.cjs with one malloc arena
  const receiverCli = join(ctx.repoRoot, 'dist', 'barman-receiver');
  const pgbackrest = WITH_PGBACKREST ? ['/usr/bin/pgbackrest', '/usr/local/bin/pgbackrest'].find((p) => existsSync(p)) : undefined;

  // the cluster, its WAL, the catalog, a plain copy, pgBackRest's repository and one restored copy at a time
  const need = 6 * SCALE * 16e6 + 2e9;
  const free = freeBytes(dir);
  if (free < need) throw new Error(`recover: ${(free / 1e9).toFixed(1)} GB free below ${dir}, need about ${(need / 1e9).toFixed(1)} GB; set BENCH_DIR to a roomier disk or lower BENCH_RECOVER_SCALE`);
  ctx.log(`recover: pgbench scale ${SCALE}, ${ROUNDS} rounds${pgbackrest ? ', with pgBackRest' : ''}`);

  // the receiver's default compression (zstd): nothing said about it in its configuration
  const receiver = await startReceiver(join(dir, 'receiver'), ctx.repoRoot, ctx.cleanup, SERVER);
  const catalog = await openCatalog(receiver, SERVER, ctx.cleanup);
  const clusterDir = join(dir, 'cluster');
  const agentConf = postgresAgentConfig(receiver, join(dir, 'agent'), SERVER, {
    conninfo: `host=${join(clusterDir, 'socket')} port=5432 user=postgres dbname=postgres`,
  });
  const brConf = join(postgresDir(join(dir, 'pgbackrest')), 'pgbackrest.conf');
  const pgdata = join(clusterDir, 'pgdata');
  if (pgbackrest) {
    const d = join(dir, 'pgbackrest');
    writeFileSync(brConf, [
      '[global]',
      `repo1-path=${postgresDir(join(d, 'repo'))}`,
      `log-path=${postgresDir(join(d, 'log'))}`,
      `lock-path=${postgresDir(join(d, 'lock'))}`,
      `spool-path=${postgresDir(join(d, 'spool'))}`,
      'repo1-retention-full=9',
      'compress-type=zst',
      'compress-level=1',
      'repo1-bundle=y',
      'process-max=2',
      'start-fast=y',
      'log-level-console=warn',
      'log-level-file=off',
      '',
      `[${STANZA}]`,
      `pg1-path=${pgdata}`,
      `pg1-socket-path=${join(clusterDir, 'socket')}`,
      'pg1-port=5432',
      '',
    ].join('\n'), { mode: 0o644 });
  }
  const push = `${agent} -c ${agentConf} push %p`;
  const cluster = await BenchCluster.start(clusterDir, ctx.pgBin, ctx.cleanup, {
    archive_mode: 'on',
    archive_command: `'${push}'`,
    max_wal_size: "'2GB'",
    checkpoint_timeout: "'1h'",
  });
  if (pgbackrest) {
    // its stanza first (it checks the running cluster), then both archives get every segment: each
    // restore replays from its own
    const work0 = postgresDir(join(dir, 'pgbackrest', 'cwd'));
    await runOk(pgbackrest, [`--config=${brConf}`, `--stanza=${STANZA}`, 'stanza-create'], { asPostgres: true, cwd: work0 });
    await cluster.psql(`alter system set archive_command = '${push} && ${pgbackrest} --config=${brConf} --stanza=${STANZA} archive-push %p'; select pg_reload_conf();`);
  }

  ctx.log(`recover: pgbench -i -s ${SCALE}`);
  await runOk(join(ctx.pgBin, 'pgbench'), ['-i', '-s', String(SCALE), '-h', cluster.socketDir, '-p', String(cluster.port), '-U', 'postgres', 'postgres'], { asPostgres: true, cwd: cluster.dir });
  await cluster.psql('checkpoint');
  const accounts = await cluster.psql('select count(*) from pgbench_accounts');
  const dbBytes = Number(await cluster.psql('select sum(pg_database_size(oid)) from pg_database'));
  const settle = async () => {
    await waitForArchiver(cluster.pgdata, 180_000);
    await runOk('sync', []);
  };

  const work = postgresDir(join(dir, 'work'));
  const copySocket = postgresDir(join(dir, 'copy-socket'));
  // the three backups, one after the other, then a segment switch so each one's end is archived
  ctx.log('recover: backups (ours, pg_basebackup, pgBackRest)');
  await settle();
  const id = (await runOk(agent, ['-c', agentConf, 'backup'], { asPostgres: true, cwd: work })).stdout.trim();
  const plain = join(work, 'plain');
  await runOk(join(ctx.pgBin, 'pg_basebackup'), ['-h', cluster.socketDir, '-p', String(cluster.port), '-U', 'postgres', '-D', plain, '-Fp', '-X', 'none', '--checkpoint=fast'], { asPostgres: true, cwd: work });
  if (pgbackrest) {
    await runOk(pgbackrest, [`--config=${brConf}`, `--stanza=${STANZA}`, '--type=full', 'backup'], { asPostgres: true, cwd: work });
  }
  await cluster.psql('select pg_switch_wal()');
  await waitForBackupDone(catalog, id);
  await settle();
  // the plain copy's WAL, flat, as an archive would hold it (from the catalog, not timed)
  const plainWal = postgresDir(join(work, 'plain-wal'));
  const startWal = /START WAL LOCATION: .* \(file ([0-9A-F]{24})\)/.exec(readFileSync(join(plain, 'backup_label'), 'utf8'))?.[1];
  if (!startWal) throw new Error(`no START WAL LOCATION in ${join(plain, 'backup_label')}`);
  const segments = (await catalog.catalog.listSegments()).filter((s) => s >= startWal);
  for (const name of segments) await copyStoredWal(catalog, name, join(plainWal, name));
  await runOk('chown', ['-R', 'postgres:postgres', plainWal]);
  const storedBytes = Number((await runOk('du', ['-sb', join(receiver.barmanHome, SERVER, 'base', id)])).stdout.split('\t')[0]);

  const startCopy = async (pgdata: string, name: string): Promise<number> => {
    const copy = await startRecoveredCopy({ pgBin: ctx.pgBin, pgdata, name, work, socketDir: copySocket, port: COPY_PORT, accounts, cleanup: ctx.cleanup });
    await copy.stop();
    return copy.ms;
  };

  const runs: Record<Way, Run[]> = { recover: [], restore: [], cp: [], pgbackrest: [] };
  const measure = async (way: Way, round: number): Promise<void> => {
    await settle();
    ctx.log(`recover: round ${round}: ${way}`);
    const dest = join(work, `${way}-${round}`);
    let run: Awaited<ReturnType<typeof runMeasured>>;
    let receiverCpu: number | undefined;
    let receiverPeakKb: number | undefined;
    switch (way) {
      case 'recover':
        run = await runMeasured(receiverCli, ['recover', '-c', receiver.config, SERVER, 'latest', dest], work, { cwd: work });
        break;
      case 'restore': {
        postgresDir(dest);
        const watch = new RssWatch(receiver.pid);
        const before = procCpuSeconds(receiver.pid);
        run = await runMeasured(agent, ['-c', agentConf, 'restore', 'latest', dest], work, { asPostgres: true, cwd: work });
        receiverCpu = procCpuSeconds(receiver.pid) - before;
        receiverPeakKb = watch.stop();
        break;
      }
      case 'cp': {
        // what our recover writes besides the files: WAL beside the data, recovery settings with
        // archiving off (the copy must not push into the catalog), recovery.signal; all durable
        const settings = "restore_command = 'cp barman_wal/%f %p'\narchive_mode = 'off'\narchive_command = 'false'\n";
        const script = 'cp -a "$1" "$2" && cp -a "$3" "$2/barman_wal" && printf "%s" "$4" >> "$2/postgresql.auto.conf" && touch "$2/recovery.signal" && sync';
        run = await runMeasured('sh', ['-c', script, 'sh', plain, dest, plainWal, settings], work, { asPostgres: true, cwd: work });
        break;
      }
      case 'pgbackrest':
        // its own restore_command (archive-get from its repository); archiving off like the others
        run = await runMeasured(pgbackrest!, [`--config=${brConf}`, `--stanza=${STANZA}`, `--pg1-path=${dest}`, '--recovery-option=archive_mode=off', '--type=default', 'restore'], work, { asPostgres: true, cwd: work });
        break;
    }
    const startMs = await startCopy(dest, `${way}-${round}`);
    rmSync(dest, { recursive: true, force: true });
    ctx.log(`recover: round ${round}: ${way}: write ${(run.ms / 1000).toFixed(2)} s, start-up ${(startMs / 1000).toFixed(2)} s`);
    runs[way].push({ writeMs: run.ms, startMs, peakKb: run.peakKb, cpu: run.cpuSeconds, receiverCpu, receiverPeakKb });
  };

  const ways: Way[] = ['recover', 'restore', 'cp', ...(pgbackrest ? ['pgbackrest' as const] : [])];
  const loads: string[] = [];
  for (let round = 1; round <= ROUNDS; round++) {
    loads.push(loadAverage());
    // the order rotates each round, so drift on the machine weighs on every way alike
    const shift = (round - 1) % ways.length;
    for (const way of [...ways.slice(shift), ...ways.slice(0, shift)]) await measure(way, round);
  }
  loads.push(loadAverage());
  await receiver.stop();
  await cluster.stop('fast');

  const med = (xs: number[]) => stats(xs).median;
  const total = (r: Run) => r.writeMs + r.startMs;
  const s1 = (ms: number) => (ms / 1000).toFixed(2);
  const mib = (kb: number | undefined) => (kb === undefined ? '?' : (kb / 1024).toFixed(0));
  const opt = (xs: Array<number | undefined>) => xs.filter((x): x is number => x !== undefined);
  const medOpt = (xs: Array<number | undefined>) => (opt(xs).length ? med(opt(xs)) : undefined);
  const cpTotal = med(runs.cp.map(total));
  const table = markdownTable(
    ['way', 'runs', 'write median s', 'start-up median s', 'total median s', 'total min–max s', 'total / cp -a total', 'goal', 'peak RSS MiB', 'CPU s (median)'],
    ways.map((way) => {
      const rs = runs[way];
      const ratio = med(rs.map(total)) / cpTotal;
      const ours = way === 'recover' || way === 'restore';
      return [
        LABEL[way],
        String(rs.length),
        s1(med(rs.map((r) => r.writeMs))),
        s1(med(rs.map((r) => r.startMs))),
        s1(med(rs.map(total))),
        `${s1(stats(rs.map(total)).min)}–${s1(stats(rs.map(total)).max)}`,
        fmtRatio(ratio),
        ours ? `≤ ${GOAL}×: ${ratio <= GOAL ? 'met' : 'not met'}` : '',
        way === 'restore' ? `agent ${mib(medOpt(rs.map((r) => r.peakKb)))}, receiver ${mib(medOpt(rs.map((r) => r.receiverPeakKb)))}` : mib(medOpt(rs.map((r) => r.peakKb))),
        way === 'restore' ? `agent ${medOpt(rs.map((r) => r.cpu))?.toFixed(1) ?? '?'}, receiver ${medOpt(rs.map((r) => r.receiverCpu))?.toFixed(1) ?? '?'}` : (medOpt(rs.map((r) => r.cpu))?.toFixed(1) ?? '?'),
      ];
    }),
  );
  // the ratio per round (each way against the cp -a of the same round): steadier than medians apart
  const perRound = markdownTable(
    ['round', ...ways.filter((w) => w !== 'cp').map((w) => `${w} / cp -a`)],
    runs.cp.map((c, i) => [String(i + 1), ...ways.filter((w) => w !== 'cp').map((w) => (runs[w][i] ? fmtRatio(total(runs[w][i]!) / total(c)) : '–'))]),
  );
  const markdown = [
    `pgbench database \`pgbench -i -s ${SCALE}\` (${accounts} accounts, ${(dbBytes / 1e6).toFixed(0)} MB of databases); our backup stored with the receiver's default compression (zstd): ${(storedBytes / 1e6).toFixed(0)} MB in the catalog. The cluster archives into the catalog through \`barman-agent push\`${pgbackrest ? ' and into a pgBackRest repository through `pgbackrest archive-push`' : ''}.`,
    `${ROUNDS} round${ROUNDS === 1 ? '' : 's'}; in each, every way once, the order rotating from round to round; before each measurement the archiver is idle and \`sync\` has written back the previous one's dirty pages. Every copy was started and held the source's pgbench_accounts row count.`,
    '',
    table,
    '',
    perRound,
    '',
    'Ours run as installed: `barman-receiver` and `barman-agent` are the sh launchers in dist/, which run Node with glibc malloc held to one arena that keeps what it frees, in small pages (no `glibc.malloc.hugetlb` for `recover` and `restore`), and `recover` with a 128 MiB initial V8 old generation.',
    'Write = spawn to exit of the command that writes the data directory; every way ends durable (ours fsync every file and directory before global/pg_control, written last, and write the relation files over 2 MiB with O_DIRECT, around the page cache, so the copy starts with them on disk, not in memory; `cp -a` is followed by `sync`; pgBackRest fsyncs what it restores). Start-up = `pg_ctl start` until `select 1` answers and `pg_is_in_recovery()` is false (replaying the WAL from the backup on: ours and `cp -a` from `barman_wal/` with `cp`, pgBackRest through `archive-get`).',
    'Ours check every byte against the checksum its backup_manifest records (CRC-32C, the default) before the copy counts as written (`restore`: the receiver sends the stored zstd frames, and the agent decompresses them and checks what they hold against the recorded checksum the receiver sends).',
    'Peak RSS and CPU seconds (user + system) of the writing command from GNU time; for `restore` also the receiver service (its VmHWM reset before, and CPU from /proc over the restore). PostgreSQL\'s own start-up is not counted.',
    `Load average at the start of each round and at the end: ${loads.join(' → ')}. The machine is shared: compare the ratios of one run, not the seconds of different runs.`,
  ].join('\n');
  return { title: 'recover: `barman-receiver recover` and `barman-agent restore` + start-up vs `cp -a` + start-up (zstd at rest)', markdown };
}
