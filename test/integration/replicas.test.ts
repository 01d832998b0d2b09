// Replicas from the backup host, as a DBA builds and uses one: the primary archives into the
// catalog under load; `barman-agent restore --standby` seeds a standby from the catalog alone
// (restore_command = 'barman-agent get-wal %f %p', found on PATH, the agent configuration through
// $BARMAN_AGENT_CONFIG); it replays and keeps following as the primary archives. A backup taken
// from that standby recovers to an exact restore point. The primary is lost, the standby promoted:
// it archives its new timeline (history file included) into the same catalog, and a point in time
// on that timeline can be recovered.

import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type Cluster, createCluster, describeRun, expectFailure, expectSuccess, makeTempDir, type Receiver, runAgent, runReceiverCli, startReceiver, waitFor, writeAgentConfig,
} from '../harness';
import { backupAndWait, recoverInto, showBackupJson, waitBackupStatus, waitInCatalog as waitWalInCatalog } from '../harness/backups';
import { startSqlLoad, type SqlLoad } from '../harness/load';
import { agentHostEnv, type RecoveredCluster, startRecovered, verifyRecoveredDirectory } from '../harness/recovered';

/** a standby asks the archive again this soon after "not there yet" (default 5 s) */
const RETRY = ['-c', 'wal_retrieve_retry_interval=200ms'];

describe('a standby seeded from the catalog', () => {
  let receiver: Receiver;
  let primary: Cluster;
  let load: SqlLoad | undefined;
  let backupId: string;
  let standby: RecoveredCluster;
  let standbyConfig: string;

  const waitInCatalog = (name: string, cluster: { psql(sql: string): Promise<string> }) => waitWalInCatalog(receiver, 'main', name, cluster);

  /** the standby has replayed the row `id` of marks */
  const waitReplayed = (id: number) =>
    waitFor(`the standby to replay marks row ${id}`, async () => (await standby.psql(`select count(*) from marks where id = ${id}`)) === '1', { timeoutMs: 120_000, intervalMs: 200 }).catch((err: Error) => {
      throw new Error(`${err.message}\n--- ${standby.logFile}\n${standby.logTail()}`);
    });

  beforeAll(async () => {
    receiver = await startReceiver({ servers: [{ name: 'main' }] });
    primary = await createCluster({ name: 'primary', archive: true, agentConfig: { receiver, server: 'main' }, walSegmentSizeMB: 1 });
    await primary.start();
    await primary.psql('create table marks (id int primary key, note text not null, at timestamptz not null default clock_timestamp())');
    backupId = await backupAndWait(receiver, 'main', primary);
    load = await startSqlLoad(primary);
    // the standby's host: its own agent configuration (its own spool) for the same server
    standbyConfig = writeAgentConfig({ receiver, server: 'main', dir: makeTempDir('standby-agent', 'postgres', 0o755) }).path;
    // seeded and started here, so that it lives on from test to test
    const standbyDir = makeTempDir('standby', 'postgres', 0o755);
    const standbyDest = join(standbyDir, 'pgdata');
    await primary.psql("insert into marks values (1, 'before the standby')");
    expectSuccess(await runAgent(['restore', '-c', standbyConfig, 'latest', standbyDest, '--standby']));
    standby = await startRecovered(standbyDest, standbyDir, RETRY, undefined, agentHostEnv(standbyConfig));
  });

  afterAll(async () => {
    await load?.stop().catch(() => undefined);
  });

  it('restore --standby writes standby.signal, restore_command = get-wal, the latest timeline, and a primary_conninfo never printed', async () => {
    const dest = join(makeTempDir('standby-conninfo', 'postgres', 0o755), 'pgdata');
    const secret = "s3cret'pass\\word";
    const r = await runAgent(['restore', '-c', standbyConfig, backupId, dest, '--standby', '--primary-conninfo', `host=primary.example user=replicator password=${secret}`]);
    expectSuccess(r);
    expect(`${r.stdout}${r.stderr}`).not.toContain('s3cret');
    expect(existsSync(join(dest, 'standby.signal'))).toBe(true);
    expect(existsSync(join(dest, 'recovery.signal'))).toBe(false);
    // a standby takes its WAL from the catalog as it goes: none copied ahead
    expect(existsSync(join(dest, 'barman_wal'))).toBe(false);
    const auto = readFileSync(join(dest, 'postgresql.auto.conf'), 'utf8');
    expect(auto).toContain("restore_command = 'barman-agent get-wal %f %p'");
    expect(auto).toContain("recovery_target_timeline = 'latest'");
    // quotes and backslashes doubled, as ALTER SYSTEM writes them
    expect(auto).toContain("primary_conninfo = 'host=primary.example user=replicator password=s3cret''pass\\\\word'");
    // archive settings stay as the primary had them: a promoted standby archives its timeline
    expect(auto).not.toMatch(/archive_mode|archive_command/);
    expect(await verifyRecoveredDirectory(dest).then((v) => v.code)).toBe(0);
  });

  it('refuses a recovery target, and --primary-conninfo without --standby', async () => {
    const dest = join(makeTempDir('standby-refused', 'postgres', 0o755), 'pgdata');
    expectFailure(await runAgent(['restore', '-c', standbyConfig, backupId, dest, '--standby', '--target-immediate']), 2, /--standby takes no recovery target/);
    expectFailure(await runAgent(['restore', '-c', standbyConfig, backupId, dest, '--primary-conninfo', 'host=x']), 2, /--primary-conninfo is for a standby/);
    expect(existsSync(dest)).toBe(false);
  });

  it('replays the catalog while the primary is under load, and follows it as it archives', async () => {
    await primary.waitArchived(await primary.switchWal());
    await waitReplayed(1);
    expect(await standby.psql('select pg_is_in_recovery()')).toBe('t');

    // it keeps following: a row inserted now appears after the next WAL switch
    await primary.psql("insert into marks values (2, 'while the standby follows')");
    await primary.waitArchived(await primary.switchWal());
    await waitReplayed(2);
  });

  it('backs up the hot standby under load: from_standby, DONE once the primary archives, and it recovers to an exact restore point', async () => {
    const config = writeAgentConfig({ receiver, server: 'main', pgdata: standby.pgdata, conninfo: standby.conninfo, dir: makeTempDir('standby-backup', 'postgres', 0o755) }).path;
    const r = await runAgent(['backup', '-c', config]);
    expectSuccess(r);
    const id = r.stdout.trim();
    expect(id).toMatch(/^\d{8}T\d{6}$/);
    // no WAL switch is possible on a standby: its last segment comes with the primary's archiving
    await primary.waitArchived(await primary.switchWal());
    const info = await waitBackupStatus(receiver, 'main', id, 'DONE', primary);
    expect(info.from_standby).toBe(true);
    expect((await showBackupJson(receiver, 'main', backupId)).from_standby).toBe(false);

    await primary.psql("insert into marks values (3, 'the marker')");
    await primary.psql("select pg_create_restore_point('after-the-marker')");
    await primary.psql("insert into marks values (4, 'after the restore point')");
    await primary.waitArchived(await primary.switchWal());

    const recovery = await recoverInto(receiver, 'main', id, ['--target-name', 'after-the-marker']);
    expectSuccess(recovery.result);
    const copy = await startRecovered(recovery.dest, recovery.dir);
    await copy.waitPromoted();
    expect(await copy.psql('select string_agg(id::text, \',\' order by id) from marks')).toBe('1,2,3');
    await copy.dispose();
  });

  it('is promoted when the primary is gone, archives timeline 2 into the catalog, and a point on timeline 2 can be recovered', async () => {
    await primary.psql("insert into marks values (5, 'last on the primary')");
    await primary.waitArchived(await primary.switchWal());
    await waitReplayed(5);
    await load!.stop();
    load = undefined;
    await primary.stop('immediate');

    await standby.promote();
    await standby.waitPromoted();
    expect(await standby.timeline()).toBe(2);
    await waitInCatalog('00000002.history', standby);
    expect(readFileSync(receiver.walPath('main', '00000002.history'), 'utf8')).toBe(readFileSync(join(standby.pgdata, 'pg_wal', '00000002.history'), 'utf8'));

    await standby.psql("insert into marks values (10, 'timeline 2')");
    const onTimeline2 = await standby.psql("select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')");
    await new Promise((resolve) => setTimeout(resolve, 50));
    await standby.psql("insert into marks values (11, 'timeline 2, later')");
    const segment = await standby.psql("select pg_walfile_name(pg_switch_wal()) from (select pg_logical_emit_message(false, 'barman-test', 'switch')) m");
    expect(segment).toMatch(/^00000002/);
    await waitInCatalog(segment, standby);
    expect(await standby.psql('select failed_count from pg_stat_archiver')).toBe('0');

    const status = await runReceiverCli(['status', '-c', receiver.configPath, 'main']);
    expect(status.code, describeRun(status)).toBe(0);

    const recovery = await recoverInto(receiver, 'main', backupId, ['--target-time', onTimeline2]);
    expectSuccess(recovery.result);
    const copy = await startRecovered(recovery.dest, recovery.dir);
    await copy.waitPromoted();
    expect(await copy.psql('select string_agg(id::text, \',\' order by id) from marks')).toBe('1,2,3,4,5,10');
    expect(await copy.timeline()).toBe(3);
  });
});
