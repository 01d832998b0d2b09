// Every PostgreSQL a DBA runs, on real servers: 13, 14, 15 (the machine's own), 16, 17 and 18
// (server binaries from the packages pg13 ... pg18), all archiving into ONE receiver at once, one
// server section each. On every version the core story: the agent daemon archives and streams
// through a replication slot while SQL load runs, a synchronous commit waits for the backup host,
// `barman-receiver backup --wait` takes a backup through the daemon, the backup is listed,
// shown and verified; `barman-agent restore` recovers it to a moment under load and the copy
// holds exactly the rows committed by then; that promoted copy archives its timeline 2 into the
// same catalog, and a recovery follows it to a restore point. Then clusters made with
// `initdb --wal-segsize=1` and `=64` on two versions, PostgreSQL 12 refused by check and backup,
// and recovery refused with binaries of another major version.
//
// pg_verifybackup is the machine's PostgreSQL 15 one: it reads the version 1 manifests of 13 to
// 16; the version 2 manifests of 17 and 18 need their own pg_verifybackup, which no package
// here has, so those are checked by `verify-backup` and by starting the recovered cluster.

import { appendFileSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { majorOf } from '../../shared/postgres/version';
import { segmentNumber } from '../../shared/wal/names';
import {
  agentCommandLine, type AgentDaemon, type Cluster, createCluster, describeRun, expectFailure, expectSuccess, makeTempDir, pgBinDirFor,
  type Receiver, receiverStatus, runAgent, runReceiverCli, sha256Of, startDaemon, startReceiver, waitFor, waitStreamCaughtUp,
} from '../harness';
import { listBackupsJson, recoverInto, showBackupJson } from '../harness/backups';
import { startSqlLoad } from '../harness/load';
import { startRecovered, verifyRecoveredDirectory } from '../harness/recovered';

const VERSIONS = [13, 14, 15, 16, 17, 18];
/**
 * The other recovery target kinds (time and restore point run on every version): each on two
 * versions, as the recovery settings are the same from 12 on and the whole suite must stay fast.
 */
const OTHER_TARGET: Record<number, 'xid' | 'lsn' | 'immediate'> = { 13: 'xid', 14: 'lsn', 15: 'immediate', 16: 'xid', 17: 'lsn', 18: 'immediate' };
/** initdb --wal-segsize cases: [major, MB] */
const SEGMENT_SIZES: Array<[number, number]> = [[15, 1], [15, 64], [13, 1], [13, 64]];
const segServer = (major: number, mb: number) => `pg${major}_wal${mb}mb`;

/** The moment now on the cluster's clock, as --target-time takes it (UTC, microseconds). */
const clusterNow = (c: { psql(sql: string): Promise<string> }) => c.psql("set timezone = 'UTC'; select clock_timestamp()::text");
/** Rows of `table` committed at or before `time` (track_commit_timestamp = on): what a recovery to that time holds. */
const committedBy = (c: { psql(sql: string): Promise<string> }, table: string, time: string) => c.psql(`select count(*) from ${table} where pg_xact_commit_timestamp(xmin) <= '${time}'::timestamptz`);
/** Writes a WAL record and switches segments; returns the segment it completed. */
const switchWal = (c: { psql(sql: string): Promise<string> }) => c.psql("select pg_walfile_name(pg_switch_wal()) from (select pg_logical_emit_message(false, 'barman-test', 'switch')) m");

describe('one receiver, every supported PostgreSQL version at once', () => {
  let receiver: Receiver;

  beforeAll(async () => {
    receiver = await startReceiver({
      servers: [...VERSIONS.map((v) => ({ name: `pg${v}` })), ...SEGMENT_SIZES.map(([v, mb]) => ({ name: segServer(v, mb) })), { name: 'pg12' }],
    });
  });

  const inCatalog = (server: string, name: string, cluster: { psql(sql: string): Promise<string> }) => {
    let polls = 0;
    return waitFor(`${name} in the catalog of ${server}`, async () => {
      if (existsSync(receiver.walPath(server, name))) return true;
      // after a failed push the archiver sleeps up to a minute: a reload wakes it
      if (++polls % 20 === 0) await cluster.psql('select pg_reload_conf()');
      return false;
    }, { timeoutMs: 120_000 });
  };

  /** `barman-receiver backup <server> --wait` through the daemon: the backup ID once it is DONE. */
  const backupThroughDaemon = async (server: string): Promise<string> => {
    const r = await runReceiverCli(['backup', '-c', receiver.configPath, server, '--wait']);
    expectSuccess(r);
    const id = r.stdout.trim();
    expect(id, describeRun(r)).toMatch(/^\d{8}T\d{6}$/);
    return id;
  };

  describe.each(VERSIONS)('PostgreSQL %i', (major) => {
    const server = `pg${major}`;
    let binDir: string;
    let cluster: Cluster;
    let daemon: AgentDaemon;
    let versionNum: number;
    let backupId: string;
    let target = '';
    let expectedAtTarget = '';
    /** an xid and an LSN after the load, between marks 1, 2 and 3 */
    let markXid = '';
    let markLsn = '';

    beforeAll(async () => {
      binDir = pgBinDirFor(major);
      cluster = await createCluster({
        name: server,
        binDir,
        archive: true,
        agentConfig: { receiver, server, extra: { streaming: 'on', slot_name: `barman_${server}`, create_slot: 'auto', application_name: `barman_receive_${server}` } },
        extraConf: { track_commit_timestamp: 'on' },
      });
      await cluster.start();
      versionNum = Number(await cluster.psql('show server_version_num'));
    });

    afterAll(async () => {
      await daemon?.stop();
      await cluster?.stop();
    });

    it('runs the version the test asked for, and barman-agent check says which', async () => {
      expect(majorOf(versionNum)).toBe(major);
      const r = await runAgent(['check', '-c', cluster.agentConfigPath!]);
      expectSuccess(r);
      expect(r.stdout).toContain(`PostgreSQL version: OK (${major}.${versionNum % 10000})`);
    });

    it('archives and streams through a slot under load, a synchronous commit waits for the backup host, and backup --wait finishes DONE', async () => {
      daemon = startDaemon(cluster.agentConfigPath!);
      await daemon.waitStreaming();
      const load = await startSqlLoad(cluster);
      try {
        backupId = await backupThroughDaemon(server);
        // a moment under load to recover to, with WAL after it
        target = await clusterNow(cluster);
        await waitFor('more load after the target', async () => Number(await committedBy(cluster, 'load', 'infinity')) > Number(await committedBy(cluster, 'load', target)) + 2000);
      } finally {
        await load.stop();
      }
      expectedAtTarget = await committedBy(cluster, 'load', target);
      expect(Number(expectedAtTarget)).toBeGreaterThan(0);
      await cluster.psql('create table marks (id int primary key, note text not null)');
      markXid = await cluster.psql("insert into marks values (1, 'the xid target') returning txid_current()");
      await cluster.psql("insert into marks values (2, 'before the lsn target')");
      markLsn = await cluster.psql('select pg_current_wal_insert_lsn()');
      await cluster.psql("insert into marks values (3, 'after every target')");
      await inCatalog(server, await switchWal(cluster), cluster);

      // the slot is the daemon's and has moved; the stream has everything PostgreSQL flushed
      expect(await cluster.psql(`select slot_type, active, restart_lsn is not null from pg_replication_slots where slot_name = 'barman_${server}'`)).toBe('physical|t|t');
      await waitStreamCaughtUp(receiver, server, cluster);

      // synchronous mode: a commit returns only once the receiver has flushed it
      await cluster.psql(`alter system set synchronous_standby_names = 'barman_receive_${server}'`);
      await cluster.reload();
      try {
        await waitFor('the daemon to be the synchronous standby', async () => (await cluster.psql(`select sync_state from pg_stat_replication where application_name = 'barman_receive_${server}'`)) === 'sync');
        await cluster.psql("create table sync_commit (note text); insert into sync_commit values ('durable on the backup host before this returned')");
        // PostgreSQL let the commit return: the standby's flush position passed it, and that
        // position is only ever what the receiver has flushed
        const standbyFlush = await cluster.psql(`select flush_lsn from pg_stat_replication where application_name = 'barman_receive_${server}'`);
        const status = await receiverStatus(receiver, server);
        expect(await cluster.psql(`select '${status.streaming.flush_lsn}'::pg_lsn >= '${standbyFlush}'::pg_lsn`)).toBe('t');
      } finally {
        await cluster.psql('alter system reset synchronous_standby_names');
        await cluster.reload();
      }
    });

    it('lists, shows and verifies the backup, with the server\'s version', async () => {
      const listed = (await listBackupsJson(receiver, server)).find((b) => b.backup_id === backupId);
      expect(listed?.status).toBe('DONE');
      const info = await showBackupJson(receiver, server, backupId);
      expect(info).toMatchObject({ backup_id: backupId, status: 'DONE', timeline: 1, pg_version: versionNum, system_identifier: await cluster.systemIdentifier() });
      const text = await runReceiverCli(['show-backup', '-c', receiver.configPath, server, backupId]);
      expectSuccess(text);
      expect(text.stdout).toMatch(new RegExp(`PostgreSQL version\\s*: ${major}\\.\\d+ \\(${versionNum}\\)`));
      const verify = await runReceiverCli(['verify-backup', '-c', receiver.configPath, server, backupId]);
      expectSuccess(verify);
      expect(verify.stdout).toMatch(/all match the manifest/);
      // the manifest is the version this PostgreSQL's pg_verifybackup reads
      const manifest = readFileSync(join(receiver.serverDir(server), 'base', backupId, 'backup_manifest'), 'utf8');
      if (major >= 17) expect(manifest.startsWith(`{ "PostgreSQL-Backup-Manifest-Version": 2,\n"System-Identifier": ${await cluster.systemIdentifier()},\n`)).toBe(true);
      else expect(manifest.startsWith('{ "PostgreSQL-Backup-Manifest-Version": 1,\n"Files": [')).toBe(true);
    });

    it('restores through the agent to a moment under load (exactly the rows committed by then); the promoted copy archives timeline 2, which recover follows', async () => {
      const dir = makeTempDir(`restored-${server}`, 'postgres');
      const dest = join(dir, 'pgdata');
      const r = await runAgent(['restore', '-c', cluster.agentConfigPath!, backupId, dest, '--target-time', target, '--pg-bindir', binDir]);
      expectSuccess(r);
      if (major <= 16) {
        const verified = await verifyRecoveredDirectory(dest);
        expect(verified.code, describeRun(verified)).toBe(0);
      }
      // the DBA makes the copy a new primary archiving into the same server section
      appendFileSync(join(dest, 'postgresql.auto.conf'), `archive_mode = 'on'\narchive_command = '${agentCommandLine(cluster.agentConfigPath!, 'push %p')}'\n`);
      const copy = await startRecovered(dest, dir, [], binDir);
      await copy.waitPromoted();
      expect(await copy.psql('select count(*) from load')).toBe(expectedAtTarget);
      expect(await copy.timeline()).toBe(2);

      // the promoted copy's timeline 2 arrives in the catalog; recover follows it to a restore point
      await inCatalog(server, '00000002.history', copy);
      await copy.psql("insert into load (payload) select 'timeline 2' from generate_series(1, 100)");
      const rows = await copy.psql('select count(*) from load');
      await copy.psql(`select pg_create_restore_point('on timeline 2 of ${server}')`);
      const segment = await switchWal(copy);
      expect(segment).toMatch(/^00000002/);
      await inCatalog(server, segment, copy);

      const recovery = await recoverInto(receiver, server, backupId, ['--target-name', `on timeline 2 of ${server}`, '--target-tli', 'latest', '--pg-bindir', binDir]);
      expectSuccess(recovery.result);
      const again = await startRecovered(recovery.dest, recovery.dir, [], binDir);
      await again.waitPromoted();
      expect(await again.psql('select count(*) from load')).toBe(rows);
      expect(await again.psql("select count(*) from load where payload = 'timeline 2'")).toBe('100');
      expect(await again.timeline()).toBe(3);
      await again.dispose();
      await copy.dispose();
    });

    it(`recovers to an ${OTHER_TARGET[major]} target`, async () => {
      const kind = OTHER_TARGET[major]!;
      const option = { xid: ['--target-xid', markXid], lsn: ['--target-lsn', markLsn], immediate: ['--target-immediate'] }[kind];
      // the marks are on timeline 1; the copy's timeline 2 forked before them
      const recovery = await recoverInto(receiver, server, backupId, [...option, '--target-tli', 'current', '--pg-bindir', binDir]);
      expectSuccess(recovery.result);
      const copy = await startRecovered(recovery.dest, recovery.dir, [], binDir);
      await copy.waitPromoted();
      if (kind === 'immediate') {
        // consistent at the backup's end: nothing written after it, the marks table included
        expect(await copy.psql("select to_regclass('marks') is null")).toBe('t');
      } else {
        // every load row (committed before the marks) and the marks up to the target
        expect(await copy.psql('select count(*) from load')).toBe(await cluster.psql('select count(*) from load'));
        expect(await copy.psql('select string_agg(id::text, \',\' order by id) from marks')).toBe(kind === 'xid' ? '1' : '1,2');
      }
      await copy.dispose();
    });

    // on one version (13, recovered with 15's binaries): registered there only, not skipped elsewhere
    if (major === 13) it('refuses to recover with binaries of another major version, naming the one needed', async () => {
      const other = pgBinDirFor(15);
      const named = await recoverInto(receiver, server, backupId, ['--pg-bindir', other]);
      expectFailure(named.result, 1, new RegExp(`backup ${backupId} was taken of PostgreSQL 13\\.\\d+; the binaries of --pg-bindir ${other} are PostgreSQL 15, which cannot start it`));
      expect(named.result.stderr).toMatch(/HINT: Recover with PostgreSQL 13's binaries/);
      expect(existsSync(named.dest)).toBe(false);
      // nothing named: this host's own PostgreSQL (15) is checked
      const local = await recoverInto(receiver, server, backupId, [], { PG_BINDIR: '' });
      expectFailure(local.result, 1, /was taken of PostgreSQL 13\.\d+; this host has PostgreSQL 15 \(/);
      expect(existsSync(local.dest)).toBe(false);
      // PG_BINDIR names them too
      const env = await recoverInto(receiver, server, backupId, [], { PG_BINDIR: other });
      expectFailure(env.result, 1, /the binaries of PG_BINDIR=\S+ are PostgreSQL 15/);
      // and the agent's restore, on the PostgreSQL host, the same
      const dir = makeTempDir('refused', 'postgres');
      const r = await runAgent(['restore', '-c', cluster.agentConfigPath!, backupId, join(dir, 'pgdata'), '--pg-bindir', other]);
      expectFailure(r, 1, /was taken of PostgreSQL 13\.\d+; the binaries of --pg-bindir \S+ are PostgreSQL 15/);
      expect(existsSync(join(dir, 'pgdata'))).toBe(false);
    });
  });

  describe.each(SEGMENT_SIZES)('PostgreSQL %i with initdb --wal-segsize=%i', (major, mb) => {
    const server = segServer(major, mb);
    const segmentSize = mb * 1024 * 1024;
    let binDir: string;
    let cluster: Cluster;
    let daemon: AgentDaemon;

    beforeAll(async () => {
      binDir = pgBinDirFor(major);
      cluster = await createCluster({
        name: server,
        binDir,
        walSegmentSizeMB: mb,
        archive: true,
        agentConfig: { receiver, server, extra: { streaming: 'on', slot_name: `barman_${server}`, create_slot: 'auto', application_name: `barman_receive_${server}` } },
        // every segment stays in pg_wal to be compared with the catalog's
        extraConf: { track_commit_timestamp: 'on', wal_keep_size: `${Math.max(64, 16 * mb)}MB` },
      });
      await cluster.start();
    });

    afterAll(async () => {
      await daemon?.stop();
      await cluster?.stop();
    });

    it('archives, streams, backs up (backup --wait through the streaming daemon) and recovers to a time', async () => {
      expect(await cluster.psql('show wal_segment_size')).toBe(mb >= 1024 ? `${mb / 1024}GB` : `${mb}MB`);
      daemon = startDaemon(cluster.agentConfigPath!);
      await daemon.waitStreaming();
      // the first backup comes before any segment is complete: the catalog learns the size from it
      const load = await startSqlLoad(cluster);
      let backupId: string;
      let target: string;
      try {
        backupId = await backupThroughDaemon(server);
        // small segments fill by themselves under load; a few switches more make several small or
        // one more large segment (each 64 MB one is pushed and streamed whole)
        for (let i = 0; i < (mb < 16 ? 3 : 1); i++) await inCatalog(server, await switchWal(cluster), cluster);
        target = await clusterNow(cluster);
        await waitFor('more load after the target', async () => Number(await committedBy(cluster, 'load', 'infinity')) > Number(await committedBy(cluster, 'load', target)) + 2000);
      } finally {
        await load.stop();
      }
      const expected = await committedBy(cluster, 'load', target);
      await inCatalog(server, await switchWal(cluster), cluster);
      await waitStreamCaughtUp(receiver, server, cluster);

      const status = await receiverStatus(receiver, server);
      expect((status as unknown as { cluster: unknown }).cluster).toEqual({ pg_major_version: major, system_identifier: await cluster.systemIdentifier(), wal_segment_size: segmentSize });
      // every segment in the catalog is named for this size and is PostgreSQL's own, byte for byte
      const segments = receiver.segments(server).filter((n) => /^[0-9A-F]{24}$/.test(n));
      expect(segments.length).toBeGreaterThanOrEqual(mb < 16 ? 4 : 2);
      let compared = 0;
      for (const name of segments) {
        expect(() => segmentNumber(name, segmentSize), name).not.toThrow();
        if (!existsSync(cluster.walFile(name))) continue;
        expect(receiver.walSha256(server, name), name).toBe(await sha256Of(cluster.walFile(name)));
        compared++;
      }
      expect(compared).toBeGreaterThan(0);
      const info = await showBackupJson(receiver, server, backupId);
      expect(segmentNumber(info.end_wal, segmentSize) >= segmentNumber(info.begin_wal, segmentSize)).toBe(true);

      const recovery = await recoverInto(receiver, server, backupId, ['--target-time', target, '--pg-bindir', binDir]);
      expectSuccess(recovery.result);
      const copy = await startRecovered(recovery.dest, recovery.dir, [], binDir);
      await copy.waitPromoted();
      expect(await copy.psql('select count(*) from load')).toBe(expected);
      expect(await copy.psql('show wal_segment_size')).toBe(`${mb}MB`);
      await copy.dispose();
    }, 300_000);
  });

  it('refuses PostgreSQL 12 in check and in backup, saying which versions are supported', async () => {
    const cluster = await createCluster({ name: 'pg12', binDir: pgBinDirFor(12), agentConfig: { receiver, server: 'pg12' } });
    await cluster.start();
    const check = await runAgent(['check', '-c', cluster.agentConfigPath!]);
    expect(check.code, describeRun(check)).toBe(1);
    expect(check.stdout).toMatch(/PostgreSQL version: FAILED \(PostgreSQL 12\.\d+ is not supported: barman-ts works with PostgreSQL 13 and newer\)/);
    expect(check.stdout).toMatch(/HINT: PostgreSQL version: Upgrade the cluster to PostgreSQL 13 or newer/);
    const backup = await runAgent(['backup', '-c', cluster.agentConfigPath!]);
    expectFailure(backup, 1, /PostgreSQL 12\.\d+ is not supported/);
    expect((await listBackupsJson(receiver, 'pg12'))).toEqual([]);
  });

  it('each server\'s catalog records its own cluster: version, system identifier, segment size', async () => {
    for (const major of VERSIONS) {
      const status = (await receiverStatus(receiver, `pg${major}`)) as unknown as { cluster: { pg_major_version: number; wal_segment_size: number } };
      expect(status.cluster, `pg${major}`).toMatchObject({ pg_major_version: major, wal_segment_size: 16 * 1024 * 1024 });
    }
    const text = await runReceiverCli(['status', '-c', receiver.configPath, 'pg13_wal64mb']);
    expectSuccess(text);
    expect(text.stdout).toMatch(/Cluster: PostgreSQL 13, system identifier \d+, WAL segments of 64 MiB/);
  });
});
