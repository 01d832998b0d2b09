// Section "replicas": what a replica or a long point-in-time recovery costs when it takes its WAL
// from the catalog, and what `restore --delta` saves over a full restore.
//
// 1. WAL replay: a data directory restored from a backup (`restore --standby`, so no WAL is copied
//    ahead, then made a one-shot archive recovery) replays REPLAY_SEGMENTS archived segments, timed
//    from `pg_ctl start` until it has promoted, with three restore_commands, interleaved per round:
//    `barman-agent get-wal` through the installed launcher with fetch-ahead (prefetch = 8), the same
//    with prefetch = 0 (one Node process and one connection per segment), and `cp` from a local copy
//    of the archive. The restore_command alone is also timed in a loop, without PostgreSQL.
// 2. Delta: `restore` into an empty directory vs `restore --delta` into a restored one in which 5%
//    of the files were changed (one byte each, sizes kept: only checksums can tell).
//
// BENCH_REPLAY_SEGMENTS (default 128), BENCH_REPLAY_SEGSIZE_MB (default 16), BENCH_REPLAY_ROUNDS
// (default 2), BENCH_DELTA_SCALE (pgbench scale, default 20) and BENCH_DELTA_ROUNDS (default 2)
// shrink or grow it.

import { chownSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { livePrefetcher, PREFETCH_DIR } from '../agent/wal/prefetch';
import { waitFor } from '../test/harness/wait';
import { type BenchContext, type Cleanup, fmtMs, fmtRatio, markdownTable, now, postgresAgentConfig, postgresDir, procCpuSeconds, runOk, type SectionResult, serverVersionsUsed, sleep, startReceiver, stats } from './lib';

const env = (name: string, fallback: number) => Number(process.env[name] ?? fallback);
const SEGMENTS = env('BENCH_REPLAY_SEGMENTS', 128);
const SEGSIZE_MB = env('BENCH_REPLAY_SEGSIZE_MB', 16);
const REPLAY_ROUNDS = env('BENCH_REPLAY_ROUNDS', 2);
const DELTA_SCALE = env('BENCH_DELTA_SCALE', 20);
const DELTA_ROUNDS = env('BENCH_DELTA_ROUNDS', 2);

const postgresIds = () => ({
  uid: Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim()),
  gid: Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim()),
});
const chownPostgres = (path: string) => chownSync(path, postgresIds().uid, postgresIds().gid);

/** A cluster of our own (initdb options of its own: the WAL segment size), run by postgres. */
class Cluster {
  readonly pgdata: string;
  readonly socketDir: string;
  private running = false;

  constructor(readonly dir: string, readonly pgBin: string, pgdata?: string) {
    postgresDir(dir);
    this.pgdata = pgdata ?? join(dir, 'pgdata');
    this.socketDir = postgresDir(join(dir, 'socket'));
  }

  async initdb(initdbArgs: string[], settings: Record<string, string>, cleanup: Cleanup): Promise<void> {
    await runOk(join(this.pgBin, 'initdb'), ['-D', this.pgdata, '-U', 'postgres', '-A', 'trust', '--no-sync', '--no-instructions', ...initdbArgs], { asPostgres: true, cwd: this.dir });
    const conf = { listen_addresses: "''", unix_socket_directories: `'${this.socketDir}'`, ...settings };
    writeFileSync(join(this.pgdata, 'postgresql.auto.conf'), Object.entries(conf).map(([k, v]) => `${k} = ${v}\n`).join(''));
    chownPostgres(join(this.pgdata, 'postgresql.auto.conf'));
    cleanup.add(`stop cluster ${this.pgdata}`, () => this.stop('immediate'));
  }

  /** pg_ctl start; with `options` (postgres -c ...) given on the command line. */
  async start(options = ''): Promise<void> {
    await runOk(join(this.pgBin, 'pg_ctl'), ['-D', this.pgdata, '-l', join(this.dir, 'postgresql.log'), '-o', `-k ${this.socketDir} -c listen_addresses='' ${options}`, '-w', '-t', '600', 'start'], { asPostgres: true, cwd: this.dir });
    this.running = true;
    serverVersionsUsed.add(await this.psql('show server_version'));
  }

  async psql(sql: string): Promise<string> {
    const args = ['-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-h', this.socketDir, '-U', 'postgres', '-d', 'postgres', '-c', sql];
    return (await runOk(join(this.pgBin, 'psql'), args, { asPostgres: true, cwd: this.dir })).stdout.trim();
  }

  async stop(mode: 'fast' | 'immediate' = 'fast'): Promise<void> {
    if (!this.running) return;
    this.running = false;
    await runOk(join(this.pgBin, 'pg_ctl'), ['-D', this.pgdata, '-m', mode, '-w', '-t', '600', 'stop'], { asPostgres: true, cwd: this.dir });
  }
}

/**
 * Removes a run's folder `dir` once the prefetcher of its agent (`dir`/agent) has exited, which it
 * does once PostgreSQL has asked for nothing new for a few seconds: until then it may still write
 * into its spool, and removing the folder under it failed with ENOTEMPTY. One still there after a
 * minute is killed, and the bench says so: it should have exited within seconds.
 */
async function removeRun(dir: string, log: (line: string) => void): Promise<void> {
  const spool = join(dir, 'agent', 'spool', PREFETCH_DIR);
  const gone = async () => (await livePrefetcher(spool)) === undefined;
  const exited = await waitFor('the prefetcher to exit', gone).then(() => true, () => false);
  const pid = exited ? undefined : await livePrefetcher(spool);
  if (pid !== undefined) {
    log(`replicas: the prefetcher in ${spool} (pid ${pid}) still ran a minute after its last get-wal; killed`);
    process.kill(pid, 'SIGKILL');
    await waitFor(`the killed prefetcher (pid ${pid}) to exit`, gone, { intervalMs: 20 });
  }
  rmSync(dir, { recursive: true, force: true });
}

export async function replicasSection(ctx: BenchContext): Promise<SectionResult> {
  const replay = await replayBench(ctx);
  const delta = await deltaBench(ctx);
  return { title: 'replicas: WAL replay through `get-wal` (fetch-ahead) vs one call per segment vs `cp`; `restore --delta` vs a full restore', markdown: `${replay}\n\n${delta}` };
}

// ---- WAL replay ------------------------------------------------------------------------------

async function replayBench(ctx: BenchContext): Promise<string> {
  const work = join(ctx.workDir, 'replay');
  mkdirSync(work);
  // the receiver's default compression (zstd), as a DBA runs it: every segment get-wal serves goes
  // as its stored frames, and the agent decompresses it and checks it against the recorded checksum
  const receiver = await startReceiver(join(work, 'receiver'), ctx.repoRoot, ctx.cleanup, 'main');
  const localArchive = postgresDir(join(work, 'archive'));
  const launcher = join(ctx.repoRoot, 'dist', 'barman-agent');
  const agentJs = join(ctx.repoRoot, 'dist', 'barman-agent.cjs');

  ctx.log(`replicas: a cluster with ${SEGSIZE_MB} MB segments, a backup, then ${SEGMENTS} archived segments`);
  const source = new Cluster(join(work, 'source'), ctx.pgBin);
  await source.initdb([`--wal-segsize=${SEGSIZE_MB}`], {
    archive_mode: 'on',
    archive_command: `'test ! -f ${localArchive}/%f && cp %p ${localArchive}/%f'`,
    max_wal_size: "'4GB'",
    checkpoint_timeout: "'1h'",
    fsync: 'off',
  }, ctx.cleanup);
  await source.start();
  const agentConfig = postgresAgentConfig(receiver, join(work, 'agent-source'), 'main', { pgdata: source.pgdata, conninfo: `host=${source.socketDir} user=postgres dbname=postgres` });
  await source.psql('create table bench_rows (id int, payload text)');
  const backupId = (await runOk(process.execPath, [agentJs, 'backup', '-c', agentConfig], { asPostgres: true })).stdout.trim();
  // about 5 MB of WAL per 20,000 rows: enough rows to fill each segment, then a switch
  const rowsPerSegment = Math.ceil((SEGSIZE_MB * 20000) / 5);
  for (let i = 0; i < SEGMENTS; i++) {
    await source.psql(`insert into bench_rows select g, repeat(md5(g::text || random()::text), 3) from generate_series(1, ${rowsPerSegment}) g; select pg_switch_wal()`);
  }
  const expectedRows = await source.psql('select count(*) from bench_rows');
  await source.psql('select pg_switch_wal()');
  const waitArchived = async () => {
    for (;;) {
      const ready = await source.psql("select count(*) from pg_ls_archive_statusdir() where name like '%.ready'");
      if (ready === '0') return;
      await sleep(200);
    }
  };
  await waitArchived();
  await source.stop('fast');
  // the local archive into the catalog, four pushes at a time (the receiver checks each)
  const files = readdirSync(localArchive).sort();
  let next = 0;
  await Promise.all(Array.from({ length: 4 }, async () => {
    while (next < files.length) await runOk(process.execPath, [agentJs, 'push', '-c', agentConfig, join(localArchive, files[next++]!)], { asPostgres: true });
  }));
  const replayed = files.filter((f) => /^[0-9A-F]{24}$/.test(f)).length;
  ctx.log(`replicas: ${files.length} WAL files in the catalog; replaying ${REPLAY_ROUNDS} rounds of 3 restore_commands`);

  const variants = [
    { key: 'prefetch', what: `\`barman-agent get-wal\` (launcher), prefetch = 8`, command: (conf: string) => `${launcher} get-wal -c ${conf} %f %p`, prefetch: 8 },
    { key: 'single', what: '`barman-agent get-wal`, prefetch = 0 (one Node process per segment)', command: (conf: string) => `${launcher} get-wal -c ${conf} %f %p`, prefetch: 0 },
    { key: 'cp', what: '`cp <local copy>/%f %p`', command: () => `cp ${localArchive}/%f %p`, prefetch: 0 },
  ];
  const replayMs = new Map<string, number[]>(variants.map((v) => [v.key, []]));
  /** the receiver's CPU per replayed segment, ms */
  const receiverCpuMs = new Map<string, number[]>(variants.map((v) => [v.key, []]));
  const loopMs = new Map<string, number[]>(variants.map((v) => [v.key, []]));
  for (let round = 0; round < REPLAY_ROUNDS; round++) {
    for (const v of variants) {
      const dir = join(work, `r${round}-${v.key}`);
      const agentDir = join(dir, 'agent');
      const conf = postgresAgentConfig(receiver, agentDir, 'main', { prefetch: String(v.prefetch) });
      const copy = new Cluster(dir, ctx.pgBin);
      // --standby: nothing copied ahead; then a one-shot archive recovery that takes every segment through restore_command
      await runOk(process.execPath, [agentJs, 'restore', '-c', conf, backupId, copy.pgdata, '--standby'], { asPostgres: true });
      renameSync(join(copy.pgdata, 'standby.signal'), join(copy.pgdata, 'recovery.signal'));
      const auto = join(copy.pgdata, 'postgresql.auto.conf');
      writeFileSync(auto, `${readFileSync(auto, 'utf8')}restore_command = '${v.command(conf)}'\narchive_mode = 'off'\n`);
      ctx.cleanup.add(`stop ${copy.pgdata}`, () => copy.stop('immediate'));
      await runOk('sync', []);
      const receiverCpu = procCpuSeconds(receiver.pid);
      const started = now();
      await copy.start();
      while ((await copy.psql('select pg_is_in_recovery()')) !== 'f') await sleep(20);
      replayMs.get(v.key)!.push(now() - started);
      receiverCpuMs.get(v.key)!.push(((procCpuSeconds(receiver.pid) - receiverCpu) * 1000) / replayed);
      const rows = await copy.psql('select count(*) from bench_rows');
      if (rows !== expectedRows) throw new Error(`${v.key}: the replayed copy has ${rows} rows, the source had ${expectedRows}`);
      await copy.stop('fast');
      await removeRun(dir, ctx.log);

      // the restore_command alone, as PostgreSQL runs it: one fresh process per segment, in order, in the data directory
      const loopDir = postgresDir(join(work, `loop-${round}-${v.key}`));
      const loopConf = postgresAgentConfig(receiver, join(loopDir, 'agent'), 'main', { prefetch: String(v.prefetch) });
      postgresDir(join(loopDir, 'pgdata'));
      const pgwal = postgresDir(join(loopDir, 'pgdata', 'pg_wal'));
      const segmentsOnly = files.filter((f) => /^[0-9A-F]{24}$/.test(f));
      const loopStarted = now();
      for (const name of segmentsOnly) {
        await runOk('sh', ['-c', v.command(loopConf).replace('%f', name).replace('%p', 'pg_wal/RECOVERYXLOG')], { asPostgres: true, cwd: join(loopDir, 'pgdata') });
      }
      loopMs.get(v.key)!.push((now() - loopStarted) / segmentsOnly.length);
      rmSync(pgwal, { recursive: true, force: true });
      await removeRun(loopDir, ctx.log);
    }
  }
  await receiver.stop();

  const replay = (key: string) => stats(replayMs.get(key)!);
  const loop = (key: string) => stats(loopMs.get(key)!);
  const cp = replay('cp');
  const row = (v: (typeof variants)[number]) => {
    const r = replay(v.key);
    return [v.what, String(r.n), fmtMs(r.median), (replayed / (r.median / 1000)).toFixed(1), fmtRatio(r.median / cp.median), fmtMs(loop(v.key).median), v.key === 'cp' ? '–' : stats(receiverCpuMs.get(v.key)!).median.toFixed(1)];
  };
  return [
    `### WAL replay: ${replayed} segments of ${SEGSIZE_MB} MB`,
    '',
    `A data directory restored from a backup replays ${replayed} archived segments (${files.length} WAL files with the backup's own) in archive recovery and promotes;`,
    'timed from `pg_ctl start` until `pg_is_in_recovery()` is false (PostgreSQL\'s own redo is in every figure). The receiver runs on this host with its default compression, zstd (each segment goes as its stored frames; the agent decompresses it and checks it against the checksum the catalog recorded);',
    `the rows of the replayed copy are checked against the source each time. Medians of ${REPLAY_ROUNDS} rounds, the three interleaved in each round.`,
    'Then the restore_command alone, run in a loop one segment after the other as PostgreSQL runs it (a fresh process each, no replay), and the CPU the receiver service spent per segment during the replay (from /proc).',
    '',
    markdownTable(['restore_command', 'rounds', 'replay ms (median)', 'segments/s', 'vs cp', 'restore_command alone, ms per segment', 'receiver CPU ms per segment (replay)'], variants.map(row)),
    '',
    `Goal: fetch-ahead within 1.5× of \`cp\` (replay). Measured: ${fmtRatio(replay('prefetch').median / cp.median)} (replay), ${fmtRatio(loop('prefetch').median / loop('cp').median)} (restore_command alone).`,
  ].join('\n');
}

// ---- restore --delta -------------------------------------------------------------------------

async function deltaBench(ctx: BenchContext): Promise<string> {
  const work = join(ctx.workDir, 'delta');
  mkdirSync(work);
  const receiver = await startReceiver(join(work, 'receiver'), ctx.repoRoot, ctx.cleanup, 'main');
  const agentJs = join(ctx.repoRoot, 'dist', 'barman-agent.cjs');
  ctx.log(`replicas: pgbench -i -s ${DELTA_SCALE} and a backup, for restore --delta`);
  const source = new Cluster(join(work, 'source'), ctx.pgBin);
  const localArchive = postgresDir(join(work, 'archive'));
  await source.initdb([], { archive_mode: 'on', archive_command: `'cp %p ${localArchive}/%f'`, max_wal_size: "'4GB'", fsync: 'off' }, ctx.cleanup);
  await source.start();
  const agentConfig = postgresAgentConfig(receiver, join(work, 'agent'), 'main', { pgdata: source.pgdata, conninfo: `host=${source.socketDir} user=postgres dbname=postgres` });
  await runOk(join(ctx.pgBin, 'pgbench'), ['-i', '-q', '-s', String(DELTA_SCALE), '-h', source.socketDir, '-U', 'postgres', 'postgres'], { asPostgres: true, cwd: source.dir });
  const backupId = (await runOk(process.execPath, [agentJs, 'backup', '-c', agentConfig], { asPostgres: true })).stdout.trim();
  await source.psql('select pg_switch_wal()');
  await sleep(1000);
  await source.stop('fast');
  for (const f of readdirSync(localArchive).sort()) await runOk(process.execPath, [agentJs, 'push', '-c', agentConfig, join(localArchive, f)], { asPostgres: true });

  const fullMs: number[] = [];
  const deltaMs: number[] = [];
  let changedFiles = 0;
  let changedBytes = 0;
  let totalFiles = 0;
  let totalBytes = 0;
  for (let round = 0; round < DELTA_ROUNDS; round++) {
    const dest = join(postgresDir(join(work, `round-${round}`)), 'pgdata');
    await runOk('sync', []);
    fullMs.push((await runOk(process.execPath, [agentJs, 'restore', '-c', agentConfig, backupId, dest], { asPostgres: true })).ms);
    // 5% of the files (every 20th, in path order), one byte each, sizes kept
    const all = listFiles(dest).filter((f) => !f.startsWith('barman_wal/') && f !== 'backup_manifest' && f !== 'postgresql.auto.conf').sort();
    const chosen = all.filter((_, i) => i % 20 === 10);
    totalFiles = all.length;
    totalBytes = all.reduce((n, f) => n + statSync(join(dest, f)).size, 0);
    changedFiles = chosen.length;
    changedBytes = 0;
    for (const f of chosen) {
      const path = join(dest, f);
      const bytes = readFileSync(path);
      if (bytes.length > 0) bytes.writeUInt8(bytes.readUInt8(Math.floor(bytes.length / 2)) ^ 0xff, Math.floor(bytes.length / 2));
      writeFileSync(path, bytes);
      changedBytes += bytes.length;
    }
    await runOk('sync', []);
    deltaMs.push((await runOk(process.execPath, [agentJs, 'restore', '-c', agentConfig, backupId, dest, '--delta'], { asPostgres: true })).ms);
    rmSync(join(work, `round-${round}`), { recursive: true, force: true });
  }
  await receiver.stop();
  const full = stats(fullMs);
  const delta = stats(deltaMs);
  const mib = (b: number) => (b / 1048576).toFixed(1);
  return [
    `### \`restore --delta\` after 5% of the files changed vs a full restore`,
    '',
    `\`pgbench -i -s ${DELTA_SCALE}\`: ${totalFiles} files, ${mib(totalBytes)} MiB. \`barman-agent restore\` (receiver on this host, its default compression, zstd) into an empty directory,`,
    `then ${changedFiles} of the files (every 20th, ${mib(changedBytes)} MiB) get one byte changed in place (sizes kept: only their checksums tell), then \`restore --delta\` into it.`,
    `Both include the WAL copied into barman_wal/ and the final fsync; the delta reads and hashes every file it keeps. Medians of ${DELTA_ROUNDS} rounds.`,
    '',
    markdownTable(['restore', 'rounds', 'median ms', 'min ms', 'max ms'], [
      ['full, into an empty directory', String(full.n), fmtMs(full.median), fmtMs(full.min), fmtMs(full.max)],
      ['`--delta`, 5% of the files changed', String(delta.n), fmtMs(delta.median), fmtMs(delta.min), fmtMs(delta.max)],
    ] satisfies string[][]),
    '',
    `Goal: ≥ 5× faster. Measured: ${fmtRatio(full.median / delta.median)} faster.`,
  ].join('\n');
}

function listFiles(root: string, rel = ''): string[] {
  const out: string[] = [];
  for (const e of readdirSync(join(root, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...listFiles(root, r));
    else if (e.isFile()) out.push(r);
  }
  return out;
}
