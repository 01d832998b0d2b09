// Section "storage": what compression at rest and object storage cost and save. Side by side in
// one run: 64 real pgbench WAL segments archived into a receiver with compression none, lz4, zstd
// and gzip (bytes at rest, segments/s over one agent connection with 4 files in flight, as the
// daemon's archiver sends them), then a `pgbench -s 50` base backup into each (bytes at rest,
// wall time of `barman-agent backup` until DONE), then the same WAL and backup with zstd into a
// receiver whose catalog is in a bucket of a Ceph RADOS Gateway on loopback (storage = s3).
// Bytes at rest are read from the catalog itself (its own listing), never from file names.

import { copyFileSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { OpenServer } from '../receiver/catalog/open';
import { CephGateway, cephInstalled } from '../test/harness/ceph-gateway';
import { loadAgentConfig } from '../shared/config/agent';
import { AgentConnection } from '../shared/protocol/client';
import { isSegmentName } from '../shared/wal/names';
import { freePort } from './daemon-lib';
import {
  BenchCluster,
  type BenchContext,
  type BenchReceiver,
  freeBytes,
  loadAverage,
  markdownTable,
  openCatalog,
  postgresAgentConfig,
  postgresDir,
  runOk,
  type SectionResult,
  startReceiver,
  waitForBackupDone,
} from './lib';

const SERVER = 'main';
const SEGMENTS = Number(process.env.BENCH_STORAGE_SEGMENTS ?? 64);
const SCALE = Number(process.env.BENCH_STORAGE_SCALE ?? 50);
const IN_FLIGHT = 4;
const COMPRESSIONS = ['none', 'lz4', 'zstd', 'gzip'] as const;
const BUCKET = 'barman-bench';
const MiB = 1024 * 1024;

interface Run {
  label: string;
  walPlain: number;
  walStored: number;
  walMs: number;
  backupPlain?: number;
  backupStored?: number;
  backupMs?: number;
  backupFiles?: number;
}

/** SEGMENTS complete WAL segments that pgbench wrote on `cluster` (TPC-B-like updates with full-page images), copied to `outDir`. */
async function pgbenchSegments(ctx: BenchContext, cluster: BenchCluster, outDir: string): Promise<string[]> {
  const pg = ['-h', cluster.socketDir, '-p', String(cluster.port), '-U', 'postgres'];
  const start = await cluster.psql('select pg_walfile_name(pg_current_wal_lsn())');
  const walDir = join(cluster.pgdata, 'pg_wal');
  let current = start;
  const complete = () => readdirSync(walDir).filter((n) => isSegmentName(n) && n > start && n < current).sort();
  for (let round = 0; round < 400 && complete().length < SEGMENTS; round++) {
    await runOk(join(ctx.pgBin, 'pgbench'), ['-n', '-c', '2', '-j', '2', '-t', '4000', ...pg, 'postgres'], { asPostgres: true, cwd: cluster.dir });
    current = await cluster.psql('select pg_walfile_name(pg_current_wal_lsn())');
  }
  const chosen = complete().slice(0, SEGMENTS);
  if (chosen.length < SEGMENTS) throw new Error(`pgbench wrote only ${chosen.length} complete segments`);
  mkdirSync(outDir, { recursive: true });
  for (const name of chosen) copyFileSync(join(walDir, name), join(outDir, name));
  return chosen.map((n) => join(outDir, n));
}

/** Bytes stored under a catalog prefix, and how many objects, as the catalog lists them. */
async function storedUnder(open: OpenServer, prefix: string): Promise<{ bytes: number; objects: number }> {
  let bytes = 0;
  let objects = 0;
  for await (const obj of open.catalog.storage.list(prefix)) {
    bytes += obj.size;
    objects++;
  }
  return { bytes, objects };
}

/** Pushes every segment over one connection, IN_FLIGHT at a time; ms until the last ack (each ack: durable in the catalog). */
async function pushAll(receiver: BenchReceiver, segments: string[]): Promise<number> {
  const conn = await AgentConnection.open(loadAgentConfig(receiver.agentConfig), 'push');
  try {
    const started = performance.now();
    let next = 0;
    await Promise.all(Array.from({ length: IN_FLIGHT }, async () => {
      while (next < segments.length) {
        const seg = segments[next++]!;
        const ack = await conn.putFile({ kind: 'wal', name: seg.slice(seg.lastIndexOf('/') + 1) }, seg);
        if (ack?.status !== 'stored') throw new Error(`push of ${seg}: ${ack?.status}`);
      }
    }));
    return performance.now() - started;
  } finally {
    conn.close();
  }
}

export async function storageSection(ctx: BenchContext): Promise<SectionResult> {
  const dir = postgresDir(join(ctx.workDir, 'storage'));
  const node = process.execPath;
  const agent = join(ctx.repoRoot, 'dist', 'barman-agent.cjs');

  // one cluster for everything (the WAL pushed and the backups must be of the same cluster): -s SCALE
  const need = SCALE * 16e6 * 3 + SEGMENTS * 16 * MiB * 2 + 2e9;
  if (freeBytes(dir) < need) throw new Error(`storage: ${(freeBytes(dir) / 1e9).toFixed(1)} GB free below ${dir}, need about ${(need / 1e9).toFixed(1)} GB; set BENCH_DIR to a roomier disk`);
  const agentDir = join(dir, 'agent');
  const clusterDir = join(dir, 'cluster');
  let agentConf = '';
  const pointAgentAt = (receiver: BenchReceiver) => {
    agentConf = postgresAgentConfig(receiver, agentDir, SERVER, { conninfo: `host=${join(clusterDir, 'socket')} port=5432 user=postgres dbname=postgres` });
  };
  const cluster = await BenchCluster.start(clusterDir, ctx.pgBin, ctx.cleanup, {
    archive_mode: 'on',
    // the initial load's WAL is not measured: dropped, then archiving goes to the receiver measured
    archive_command: "'/bin/true'",
    max_wal_size: "'2GB'",
    wal_keep_size: "'4GB'",
    // frequent checkpoints while the WAL sample is written: full-page images, as in production
    checkpoint_timeout: "'30s'",
  });
  ctx.log(`storage: pgbench -i -s ${SCALE}`);
  await runOk(join(ctx.pgBin, 'pgbench'), ['-i', '-s', String(SCALE), '-q', '-h', cluster.socketDir, '-p', String(cluster.port), '-U', 'postgres', 'postgres'], { asPostgres: true, cwd: cluster.dir });
  const dbBytes = Number(await cluster.psql('select sum(pg_database_size(oid)) from pg_database'));
  ctx.log(`storage: ${SEGMENTS} WAL segments of pgbench`);
  const segments = await pgbenchSegments(ctx, cluster, join(dir, 'segments'));
  const walPlain = segments.length * 16 * MiB;
  await cluster.psql(`alter system set checkpoint_timeout = '1h'; alter system reset wal_keep_size; select pg_reload_conf();`);
  await cluster.psql('checkpoint');
  // the agent's configuration file is rewritten to point at the receiver being measured
  await cluster.psql(`alter system set archive_command = '${node} ${agent} -c ${join(agentDir, 'agent.conf')} push %p'; select pg_reload_conf();`);

  const measure = async (label: string, receiver: BenchReceiver): Promise<Run> => {
    const open = await openCatalog(receiver, SERVER, ctx.cleanup);
    await runOk('sync', []);
    ctx.log(`storage: ${label}: ${segments.length} segments (load average ${loadAverage()})`);
    const walMs = await pushAll(receiver, segments);
    const wal = await storedUnder(open, open.catalog.layout.walPrefix);
    pointAgentAt(receiver);
    await cluster.psql('select pg_switch_wal()');
    await runOk('sync', []);
    ctx.log(`storage: ${label}: base backup of -s ${SCALE}`);
    const backup = await runOk(node, [agent, 'backup', '-c', agentConf], { asPostgres: true, cwd: agentDir });
    const id = backup.stdout.trim().split('\n').find((l) => /^\d{8}T\d{6}$/.test(l))!;
    const info = await waitForBackupDone(open, id, 120_000);
    const stored = await storedUnder(open, open.catalog.layout.backupPrefix(id));
    // left running (cleanup stops it): PostgreSQL may still be archiving into it until the next one takes over
    return { label, walPlain, walStored: wal.bytes, walMs, backupPlain: info.size, backupStored: stored.bytes, backupMs: backup.ms, backupFiles: info.fileCount };
  };

  const runs: Run[] = [];
  for (const compression of COMPRESSIONS) {
    const receiver = await startReceiver(join(dir, `receiver-${compression}`), ctx.repoRoot, ctx.cleanup, SERVER, { compression });
    runs.push(await measure(`posix, ${compression}`, receiver));
  }

  let s3Note = '';
  if (cephInstalled()) {
    ctx.log('storage: starting a Ceph RADOS Gateway on loopback');
    const cephDir = join(dir, 'ceph');
    mkdirSync(cephDir);
    const ceph = await CephGateway.start(cephDir, { mon: await freePort(), gateway: await freePort() }, { PATH: process.env.PATH ?? '/usr/bin:/bin', LANG: 'C.UTF-8' });
    ctx.cleanup.add('stop the Ceph gateway', () => ceph.stop());
    await ceph.createBucket(BUCKET);
    const credentials = ceph.writeCredentialsFile(join(dir, 's3.credentials'));
    const s3 = { storage: 's3', s3_endpoint: ceph.endpoint, s3_bucket: BUCKET, s3_credentials_file: credentials };
    for (const compression of ['zstd', 'none'] as const) {
      const receiver = await startReceiver(join(dir, `receiver-s3-${compression}`), ctx.repoRoot, ctx.cleanup, SERVER, { ...s3, s3_prefix: `${compression}/`, compression });
      runs.push(await measure(`s3 (Ceph), ${compression}`, receiver));
    }
  } else {
    s3Note = 'The s3 rows are missing: this machine has no Ceph (apt-get install ceph-mon ceph-osd radosgw).';
  }
  await cluster.stop('fast');
  writeFileSync(join(dir, 'runs.json'), JSON.stringify(runs, null, 2));
  return { title: 'storage: compression at rest and object storage', markdown: report(runs, dbBytes, s3Note) };
}

function report(runs: Run[], dbBytes: number, s3Note: string): string {
  const mb = (b: number) => (b / 1e6).toFixed(1);
  const none = runs.find((r) => r.label === 'posix, none')!;
  const rows = runs.map((r) => [
    r.label,
    mb(r.walStored),
    `${(r.walPlain / r.walStored).toFixed(1)}×`,
    (SEGMENTS / (r.walMs / 1000)).toFixed(1),
    `${((SEGMENTS / (r.walMs / 1000)) / (SEGMENTS / (none.walMs / 1000)) * 100).toFixed(0)} %`,
    mb(r.backupStored ?? 0),
    `${((r.backupPlain ?? 0) / (r.backupStored ?? 1)).toFixed(1)}×`,
    ((r.backupMs ?? 0) / 1000).toFixed(1),
    ((r.backupPlain ?? 0) / 1e6 / ((r.backupMs ?? 1) / 1000)).toFixed(0),
  ]);
  return [
    `${SEGMENTS} WAL segments of 16 MiB written by pgbench (\`pgbench -i -s 10\`, then \`-c 2 -t 4000\` rounds; ${mb(runs[0]!.walPlain)} MB plain) are pushed into a fresh \`barman-receiver serve\` over one agent connection, ${IN_FLIGHT} files in flight (as the daemon's archiver sends them); every ack means durable in the catalog. Then \`barman-agent backup\` of a \`pgbench -i -s ${SCALE}\` cluster (${mb(dbBytes)} MB of databases), timed until it prints DONE (its last WAL archived into the same receiver). Bytes at rest are the catalog's own listing of what it stored (WAL: all ${SEGMENTS} segments; backup: everything under base/<id>/).`,
    '',
    markdownTable(
      ['storage, compression', 'WAL at rest MB', 'WAL ratio', 'WAL segments/s', 'vs posix none', 'backup at rest MB', 'backup ratio', 'backup s', 'backup MB/s (plain)'],
      rows,
    ),
    '',
    'zstd is level 1 and lz4 the default level, each in independent frames of 1 MiB (so a stored file is a standard .zst or .lz4 that `zstd -d`/`lz4 -d` read), gzip level 1. The s3 rows go through a single-node Ceph RADOS Gateway on this host (memstore OSD), so they measure the S3 path (signing, Content-MD5, HTTP) on the same two cores, not a network.',
    s3Note,
    'pgbench data is unusually compressible (its filler columns are blank); real tables compress less, WAL with full-page images of them too.',
  ].filter((l) => l !== '').join('\n');
}

