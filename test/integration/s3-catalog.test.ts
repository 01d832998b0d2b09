// A DBA's day with the catalog in a bucket: a real Ceph RADOS Gateway on loopback, storage = s3,
// compression zstd (the default). Archive from a cluster under pgbench, take a backup, recover to
// a point in time from another receiver host that only shares the bucket, start the copy, count
// its rows and run pg_verifybackup on it. Then the bad days: the gateway killed while WAL is
// being archived, wrong credentials, a missing bucket, an endpoint that is down, a second
// receiver pointed at the same server's catalog, and a catalog whose compression changed.

import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CephGateway, cephInstalled, startCeph } from '../harness/ceph';
import {
  commandsOnlyConfig, type Cluster, createCluster, describeRun, expectFailure, expectSuccess, freePort, makeTempDir, pgBin, type Receiver, runAgent, runOk,
  runReceiverCli, sha256Of, startReceiver, waitFor,
} from '../harness';
import { backupAndWait, listBackupsJson } from '../harness/backups';
import { startRecovered, verifyRecoveredDirectory } from '../harness/recovered';

const BUCKET = 'barman';

/** Every object key in the bucket under `prefix`, as the gateway lists them. */
async function objectKeys(ceph: CephGateway, prefix = ''): Promise<string[]> {
  const client = ceph.client();
  try {
    const keys: string[] = [];
    let token: string | undefined;
    do {
      const out = await client.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: prefix, ContinuationToken: token }));
      keys.push(...(out.Contents ?? []).map((o) => o.Key!));
      token = out.IsTruncated ? out.NextContinuationToken : undefined;
    } while (token);
    return keys;
  } finally {
    client.destroy();
  }
}

describe.skipIf(!cephInstalled())('a DBA\'s day with the catalog on object storage (Ceph RADOS Gateway, s3)', () => {
  let ceph: CephGateway;
  let receiver: Receiver;
  let cluster: Cluster;
  let credentialsFile: string;
  /** the [barman] keys that put the catalog in the bucket */
  let s3Keys: Record<string, string>;

  /** A receiver configuration on "another host": its own barman_home, the same bucket. */
  const otherHostConfig = (extra: Record<string, string> = {}, server = 'main'): string =>
    commandsOnlyConfig(makeTempDir('other-host'), 'barman.conf', { ...s3Keys, ...extra }, server);

  beforeAll(async () => {
    ceph = await startCeph();
    await ceph.createBucket(BUCKET);
    credentialsFile = ceph.writeCredentialsFile(join(makeTempDir('s3-credentials'), 's3.credentials'));
    s3Keys = { storage: 's3', s3_endpoint: ceph.endpoint, s3_bucket: BUCKET, s3_prefix: 'prod/', s3_credentials_file: credentialsFile };
    receiver = await startReceiver({ servers: [{ name: 'main' }], extra: s3Keys });
    cluster = await createCluster({ name: 'main', archive: true, agentConfig: { receiver, server: 'main' } });
    await cluster.start();
  }, 180_000);

  afterAll(async () => {
    await ceph?.stop();
  });

  it('archives under pgbench, backs up, and recovers to a point in time from another receiver host sharing the bucket', async () => {
    const pg = ['-h', cluster.socketDir, '-p', String(cluster.port)];
    await runOk(pgBin('pgbench'), ['-i', '-s', '2', '-q', ...pg, 'postgres'], { asPostgres: true });
    await cluster.psql('create table marks (id int primary key, at timestamptz not null default clock_timestamp())');
    const id = await backupAndWait(receiver, 'main', cluster);
    await runOk(pgBin('pgbench'), ['-c', '2', '-T', '5', '-n', ...pg, 'postgres'], { asPostgres: true });
    await cluster.psql('insert into marks (id) select generate_series(1, 100)');
    const target = await cluster.psql("select to_char(clock_timestamp(), 'YYYY-MM-DD\"T\"HH24:MI:SS.USOF')");
    await cluster.psql('select pg_sleep(0.1); insert into marks (id) select generate_series(101, 200)');
    const accounts = await cluster.psql('select sum(abalance) from pgbench_accounts');
    await cluster.waitArchived(await cluster.switchWal());

    // WAL and backup files are in the bucket, compressed; barman_home holds no WAL and no backup data
    const keys = await objectKeys(ceph, 'prod/main/');
    expect(keys.filter((k) => /^prod\/main\/wals\/[0-9A-F]{16}\/[0-9A-F]{24}-[0-9a-f]{64}\.zst$/.test(k)).length).toBeGreaterThan(3);
    expect(keys).toContain(`prod/main/base/${id}/backup.info`);
    expect(keys).toContain(`prod/main/base/${id}/backup_manifest`);
    expect(keys).toContain(`prod/main/base/${id}/data/global/pg_control.zst`);
    expect(existsSync(join(receiver.barmanHome, 'main', 'wals'))).toBe(false);
    expect(existsSync(join(receiver.barmanHome, 'main', 'base'))).toBe(false);

    // another host with the same bucket: get-wal and recover read the catalog while this receiver serves
    const other = otherHostConfig();
    const listed = await runReceiverCli(['list-backups', '-c', other, 'main', '--json']);
    expectSuccess(listed);
    // the SDK's notice about Node versions is not the DBA's concern: the receiver keeps it off its stderr
    expect(listed.stderr).not.toContain('NodeVersionSupportWarning');
    expect(JSON.parse(listed.stdout).map((b: { backup_id: string; status: string }) => [b.backup_id, b.status])).toEqual([[id, 'DONE']]);
    const segment = cluster.archiveStatus().done.filter((n) => /^[0-9A-F]{24}$/.test(n)).pop()!;
    const walDir = makeTempDir('get-wal');
    expectSuccess(await runReceiverCli(['get-wal', '-c', other, 'main', segment, '--output-dir', walDir]));
    expect(await sha256Of(join(walDir, segment))).toBe(await sha256Of(cluster.walFile(segment)));

    const dir = makeTempDir('recovered', 'postgres', 0o755);
    const dest = join(dir, 'pgdata');
    const recovered = await runReceiverCli(['recover', '-c', other, 'main', id, dest, '--target-time', target]);
    expectSuccess(recovered);
    const verified = await verifyRecoveredDirectory(dest);
    expect(verified.code, describeRun(verified)).toBe(0);
    const copy = await startRecovered(dest, dir);
    await copy.waitPromoted();
    expect(await copy.psql('select count(*), max(id) from marks')).toBe('100|100');
    await copy.stop();

    // and to the end of WAL, with every pgbench transaction
    const dir2 = makeTempDir('recovered', 'postgres', 0o755);
    expectSuccess(await runReceiverCli(['recover', '-c', other, 'main', id, join(dir2, 'pgdata')]));
    const full = await startRecovered(join(dir2, 'pgdata'), dir2);
    await full.waitPromoted();
    expect(await full.psql('select count(*) from marks')).toBe('200');
    expect(await full.psql('select sum(abalance) from pgbench_accounts')).toBe(accounts);
    await full.stop();

    const verify = await runReceiverCli(['verify-backup', '-c', other, 'main', id]);
    expectSuccess(verify);
  }, 300_000);

  it('a push while the gateway is down fails, stores nothing, and PostgreSQL\'s retry succeeds once it is back', async () => {
    await ceph.killGateway();
    try {
      await cluster.psql('insert into marks (id) select generate_series(1001, 1100)');
      const segment = await cluster.switchWal();
      const push = await runAgent(['push', '-c', cluster.agentConfigPath!, cluster.walFile(segment)]);
      expectFailure(push, 1, /cannot reach|did not answer|failed/);
      expect(push.stderr).toMatch(/^HINT: .*(object store|s3_endpoint)/m);
      // PostgreSQL's own attempts fail too, and keep the segment
      await waitFor('PostgreSQL to count a failed archive attempt', async () => (await cluster.archiverStats()).failedCount > 0, { timeoutMs: 120_000 });
      await ceph.startGateway();
      expect((await objectKeys(ceph, 'prod/main/wals/')).filter((k) => k.includes(`/${segment}-`))).toEqual([]);
      await cluster.waitArchived(segment);
      expect((await objectKeys(ceph, 'prod/main/wals/')).filter((k) => k.includes(`/${segment}-`))).toHaveLength(1);
    } finally {
      if (!(await ceph.gatewayRunning())) await ceph.startGateway();
    }
  });

  it('refuses a second receiver on the same server\'s catalog (same bucket and prefix), saying who holds it', async () => {
    const second = await runReceiverCli(['serve', '-c', otherHostConfig({ listen: `127.0.0.1:${await freePort()}` })], { timeoutMs: 60_000 });
    expectFailure(second, 1, /the catalog of server main is in use by barman-receiver serve \(pid \d+ on host/);
    expect(second.stderr).toMatch(/^HINT: .*lease lapses at/m);
    // the first one still archives
    await cluster.psql('insert into marks (id) select generate_series(2001, 2100)');
    await cluster.waitArchived(await cluster.switchWal());
  });

  it.each([
    ['wrong credentials', () => ({ s3_credentials_file: ceph.writeCredentialsFile(join(makeTempDir('bad-credentials'), 's3.credentials'), { accessKeyId: ceph.credentials.accessKeyId, secretAccessKey: 'not-the-secret' }) }), 'STORAGE_CREDENTIALS', /credentials were refused/, /aws_secret_access_key/],
    ['a missing bucket', () => ({ s3_bucket: 'no-such-bucket' }), 'STORAGE_BUCKET_MISSING', /bucket "no-such-bucket" does not exist/, /Create the bucket/],
  ] as const)('says so at check and at start-up with %s', async (_what, keys, code, message, hint) => {
    const conf = otherHostConfig(keys());
    const check = await runReceiverCli(['check', '-c', conf, 'main']);
    expect(check.code, describeRun(check)).toBe(1);
    expect(check.stdout).toMatch(new RegExp(`^\\s*storage: FAILED \\(.*${message.source}`, 'm'));
    expect(check.stdout).toMatch(hint);
    const serve = await runReceiverCli(['serve', '-c', conf], { timeoutMs: 60_000 });
    expectFailure(serve, 1, message);
    expect(serve.stderr).toContain(`[${code}]`);
    expect(serve.stderr).toMatch(new RegExp(`^HINT: .*${hint.source}`, 'm'));
  });

  it('says so at check and at start-up when the endpoint is down', async () => {
    const conf = otherHostConfig({ s3_endpoint: `http://127.0.0.1:${await freePort()}` });
    const check = await runReceiverCli(['check', '-c', conf, 'main']);
    expect(check.code, describeRun(check)).toBe(1);
    expect(check.stdout).toMatch(/^\s*storage: FAILED \(.*cannot reach/m);
    const serve = await runReceiverCli(['serve', '-c', conf], { timeoutMs: 60_000 });
    expectFailure(serve, 1, /cannot reach/);
    expect(serve.stderr).toContain('[STORAGE_UNREACHABLE]');
  });

  it('stops taking writes when it cannot renew its lease, says why, and takes them again once restarted', async () => {
    await ceph.killGateway();
    try {
      // renewals fail until the lease lapses (30 s): then the receiver fences itself
      await waitFor('the receiver to give up the catalog', () => /no longer holds the catalog of server main and accepts no more writes/.test(receiver.logs()), { timeoutMs: 90_000, intervalMs: 500 });
    } finally {
      await ceph.startGateway();
    }
    await cluster.psql('insert into marks (id) select generate_series(2201, 2300)');
    const segment = await cluster.switchWal();
    const refused = await runAgent(['push', '-c', cluster.agentConfigPath!, cluster.walFile(segment)]);
    expectFailure(refused, 1, /no longer holds the catalog of server main/);
    expect(refused.stderr).toContain('[CATALOG_LOCKED]');
    expect(refused.stderr).toMatch(/^HINT: .*restart this receiver/m);
    await receiver.restart();
    await cluster.waitArchived(segment);
  }, 180_000);

  it('reads a catalog whose compression changed between pushes and backups', async () => {
    const ids: string[] = [];
    const segments: string[] = [];
    /** each segment's SHA-256 as PostgreSQL wrote it (taken before a backup's checkpoint recycles it) */
    const shas = new Map<string, string>();
    for (const compression of ['lz4', 'gzip', 'none', 'zstd'] as const) {
      // nothing on its way to the receiver while it restarts (a failed push puts PostgreSQL's archiver to sleep)
      await cluster.waitArchiverIdle();
      await receiver.stop();
      receiver.rewriteConfig({ barman: { compression } });
      await receiver.start();
      await cluster.psql(`insert into marks (id) select generate_series(${3000 + segments.length * 100}, ${3099 + segments.length * 100})`);
      const segment = await cluster.switchWal();
      await cluster.waitArchived(segment);
      shas.set(segment, await sha256Of(cluster.walFile(segment)));
      segments.push(segment);
      ids.push(await backupAndWait(receiver, 'main', cluster));
    }
    const keys = await objectKeys(ceph, 'prod/main/');
    for (const [i, suffix] of ['.lz4', '.gz', '', '.zst'].entries()) {
      expect(keys.filter((k) => new RegExp(`/${segments[i]}-[0-9a-f]{64}${suffix.replace('.', '\\.')}$`).test(k)), segments[i]).toHaveLength(1);
      expect(keys).toContain(`prod/main/base/${ids[i]}/data/global/pg_control${suffix}`);
    }
    const conf = ['-c', receiver.configPath];
    for (const segment of segments) {
      const out = makeTempDir('get-wal');
      expectSuccess(await runReceiverCli(['get-wal', ...conf, 'main', segment, '--output-dir', out]));
      expect(await sha256Of(join(out, segment)), segment).toBe(shas.get(segment));
    }
    for (const id of ids) expectSuccess(await runReceiverCli(['verify-backup', ...conf, 'main', id]));
    // the first (lz4) backup recovers with everything since, across four compressions of WAL
    const dir = makeTempDir('recovered', 'postgres', 0o755);
    expectSuccess(await runReceiverCli(['recover', ...conf, 'main', ids[0]!, join(dir, 'pgdata')]));
    const copy = await startRecovered(join(dir, 'pgdata'), dir);
    await copy.waitPromoted();
    expect(await copy.psql('select count(*) from marks where id >= 3000')).toBe('400');
    await copy.stop();
    expect((await listBackupsJson(receiver, 'main')).filter((b) => b.status === 'DONE').length).toBeGreaterThanOrEqual(5);
  }, 600_000);
});
