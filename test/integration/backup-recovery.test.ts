// A DBA's day with base backups: archive through the agent, take a backup, keep writing while
// noting the time, a transaction ID, an LSN and a restore point, then recover (as root, on the
// backup host) to each of those points, start every copy as postgres and count the rows. Then the
// catalog commands, every way a recovery is refused before a byte is written, a damaged backup,
// backups asked for from the backup host, and a cluster with a tablespace moved on recovery (recover
// on the backup host writes a tablespace only where --tablespace says).

import { closeSync, existsSync, openSync, readSync, readlinkSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  agentCommandLine, type Cluster, createCluster, describeRun, expectFailure, expectSuccess, listDir, makeDir, makeTempDir, postgresUser,
  type Receiver, runAgent, runReceiverCli, type RunResult, snapshotTree, startReceiver, waitFor,
} from '../harness';
import { backupAndWait, listBackupsJson, recoverInto, showBackupJson, storedFileOf, waitBackupStatus } from '../harness/backups';
import { type Background, startAgentInBackground, startRecovered, verifyRecoveredDirectory } from '../harness/recovered';

const ROWS_PER_BATCH = 1000;

/** ids (b*1000+1 .. (b+1)*1000), one transaction */
const insertBatch = (batch: number): string =>
  `insert into events (id, batch) select g, ${batch} from generate_series(${batch * ROWS_PER_BATCH + 1}, ${(batch + 1) * ROWS_PER_BATCH}) g;`;

const COUNT_ROWS = 'select count(*), max(id) from events';
/** What COUNT_ROWS says when every batch up to `batch` is there and none after it. */
const rowsUpToBatch = (batch: number): string => `${(batch + 1) * ROWS_PER_BATCH}|${(batch + 1) * ROWS_PER_BATCH}`;

describe("a DBA's day: a base backup and point-in-time recovery to every kind of target", () => {
  let receiver: Receiver;
  let cluster: Cluster;
  let conf: string[];
  /** the backup every PITR test recovers from, taken after batch 0 */
  let first: string;
  /** points in the history after the backup: batch n+1 committed after the point of batch n */
  const points = {
    /** clock_timestamp() before the backup started (in the cluster's own zone) */
    beforeBackup: '',
    /** clock_timestamp()::text after batch 1, in a zone with a half-hour offset: 2026-11-25 17:30:05.123456+05:30 */
    afterBatch1: '',
    /** txid_current() of the transaction that inserted batch 2 */
    xidOfBatch2: '',
    /** pg_current_wal_lsn() after batch 3 committed */
    lsnAfterBatch3: '',
    /** pg_create_restore_point() after batch 4 */
    restorePoint: 'before batch 5',
  };

  /** recover `id` with `options`, check the directory with pg_verifybackup, start it, wait for promotion; returns it running */
  const recoverAndStart = async (id: string, options: string[]) => {
    const recovery = await recoverInto(receiver, 'main', id, options);
    expectSuccess(recovery.result);
    const verified = await verifyRecoveredDirectory(recovery.dest);
    expect(verified.code, describeRun(verified)).toBe(0);
    const copy = await startRecovered(recovery.dest, recovery.dir);
    await copy.waitPromoted();
    return { ...recovery, copy };
  };

  beforeAll(async () => {
    receiver = await startReceiver({ servers: [{ name: 'main', extra: { minimum_redundancy: '2' } }] });
    conf = ['-c', receiver.configPath];
    cluster = await createCluster({ name: 'main', archive: true, agentConfig: { receiver, server: 'main' } });
    await cluster.start();
    await cluster.psql('create table events (id int primary key, batch int not null, at timestamptz not null default clock_timestamp());' + insertBatch(0));
    points.beforeBackup = await cluster.psql("select to_char(clock_timestamp(), 'YYYY-MM-DD\"T\"HH24:MI:SS.USOF')");

    first = await backupAndWait(receiver, 'main', cluster);

    await cluster.psql(insertBatch(1));
    points.afterBatch1 = await cluster.psql("set timezone = 'Asia/Kolkata'; select clock_timestamp()::text");
    points.xidOfBatch2 = await cluster.psql(`begin; ${insertBatch(2)} select txid_current(); commit;`);
    await cluster.psql(insertBatch(3));
    points.lsnAfterBatch3 = await cluster.psql('select pg_current_wal_lsn()');
    await cluster.psql(insertBatch(4));
    await cluster.psql(`select pg_create_restore_point('${points.restorePoint}')`);
    await cluster.psql(insertBatch(5));
    // every point above is in WAL the catalog holds
    await cluster.waitArchived(await cluster.switchWal());
  });

  it('recovers to the end of the backup (--target-immediate): only what was there before it', async () => {
    const { copy, dest } = await recoverAndStart(first, ['--target-immediate']);
    expect(await copy.psql(COUNT_ROWS)).toBe(rowsUpToBatch(0));
    // a restored copy never archives into the production catalog
    expect(await copy.psql('show archive_mode')).toBe('off');
    // recover ran as root; PostgreSQL runs as postgres and owns every file
    const { uid } = postgresUser();
    for (const rel of ['', 'PG_VERSION', 'global/pg_control', 'postgresql.auto.conf', 'backup_manifest', 'barman_wal']) {
      expect(statSync(join(dest, rel)).uid, rel || dest).toBe(uid);
    }
  });

  // one recovery per kind of target, each from the same backup, each a fresh copy
  const targets: Array<[what: string, options: () => string[], lastBatch: number]> = [
    ['a time (--target-time with an offset and microseconds): batches committed before it, nothing after', () => ['--target-time', points.afterBatch1], 1],
    ['a transaction (--target-xid): that transaction included', () => ['--target-xid', points.xidOfBatch2], 2],
    ['just before a transaction (--target-xid --exclusive): that transaction left out', () => ['--target-xid', points.xidOfBatch2, '--exclusive'], 1],
    ['a WAL location (--target-lsn)', () => ['--target-lsn', points.lsnAfterBatch3], 3],
    ['a restore point (--target-name)', () => ['--target-name', points.restorePoint], 4],
  ];
  for (const [what, options, lastBatch] of targets) {
    it(`recovers to ${what}`, async () => {
      const { copy } = await recoverAndStart(first, options());
      expect(await copy.psql(COUNT_ROWS)).toBe(rowsUpToBatch(lastBatch));
    });
  }

  it('stops at the target and waits with --target-action pause: readable there until the DBA resumes', async () => {
    const recovery = await recoverInto(receiver, 'main', first, ['--target-name', points.restorePoint, '--target-action', 'pause']);
    expectSuccess(recovery.result);
    const copy = await startRecovered(recovery.dest, recovery.dir);
    await waitFor('recovery to pause at the restore point', async () => (await copy.psql('select pg_get_wal_replay_pause_state()')) === 'paused');
    expect(await copy.psql('select pg_is_in_recovery()')).toBe('t');
    expect(await copy.psql(COUNT_ROWS)).toBe(rowsUpToBatch(4));
    await copy.psql('select pg_wal_replay_resume()');
    await copy.waitPromoted();
    expect(await copy.psql(COUNT_ROWS)).toBe(rowsUpToBatch(4));
  });

  it('recovers everything archived when no target is given (Barman\'s `barman server recover main latest <dir>`)', async () => {
    const dir = makeTempDir('recovered', 'postgres', 0o755);
    const dest = join(dir, 'pgdata');
    const r = await runReceiverCli(['server', 'recover', 'main', 'latest', dest, ...conf]);
    expectSuccess(r);
    expect(r.stdout).toContain(`Recovered backup ${first} of main into ${dest}`);
    const verified = await verifyRecoveredDirectory(dest);
    expect(verified.code, describeRun(verified)).toBe(0);
    const copy = await startRecovered(dest, dir);
    await copy.waitPromoted();
    expect(await copy.psql(COUNT_ROWS)).toBe(rowsUpToBatch(5));
  });

  it('lists, shows and verifies the backup', async () => {
    const list = await runReceiverCli(['list-backups', ...conf, 'main']);
    expectSuccess(list);
    const lines = list.stdout.trimEnd().split('\n');
    expect(lines).toHaveLength(1);
    const m = /^main - (\d{8}T\d{6}) - (\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})\.\d{6} - .* - DONE$/.exec(lines[0]!);
    expect(m, lines[0]).not.toBeNull();
    expect(m![1]).toBe(first);
    // the ID is the start time (to the second; a later second only when two backups would collide)
    expect(m![1]! >= `${m![2]}${m![3]}${m![4]}T${m![5]}${m![6]}${m![7]}`).toBe(true);
    // Barman's form
    const seed = await runReceiverCli(['server', 'list', 'main', ...conf]);
    expect(seed.stdout, describeRun(seed)).toBe(list.stdout);

    const info = await showBackupJson(receiver, 'main', first);
    expect(info).toMatchObject({
      backup_id: first,
      status: 'DONE',
      timeline: 1,
      pg_version: Number(await cluster.psql("select current_setting('server_version_num')")),
      system_identifier: await cluster.systemIdentifier(),
      keep: false,
      from_standby: false,
    });
    expect(info.begin_lsn).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
    expect(info.end_lsn).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
    expect(info.begin_wal).toMatch(/^00000001[0-9A-F]{16}$/);
    expect(info.end_wal >= info.begin_wal).toBe(true);
    expect(Date.parse(info.end_time)).toBeGreaterThanOrEqual(Date.parse(info.begin_time));
    expect(info.size).toBeGreaterThan(0);
    // begin_time is spelled in the clock of the ID (local time, with its offset), so the two read alike
    const begin = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\.\d{3}[+-]\d{2}:\d{2}$/.exec(info.begin_time);
    expect(begin, info.begin_time).not.toBeNull();
    expect(begin!.slice(1, 4).join('') + 'T' + begin!.slice(4, 7).join('')).toBe(`${m![2]}${m![3]}${m![4]}T${m![5]}${m![6]}${m![7]}`);
    // the aliases name the same backup while it is the only one
    for (const alias of ['latest', 'oldest']) expect((await showBackupJson(receiver, 'main', alias)).backup_id).toBe(first);
    const text = await runReceiverCli(['show-backup', ...conf, 'main', first]);
    expectSuccess(text);
    expect(text.stdout).toContain(info.end_lsn);
    expect(text.stdout).toContain(info.system_identifier);

    const verify = await runReceiverCli(['verify-backup', ...conf, 'main', first]);
    expectSuccess(verify);
    expect(verify.stdout).toMatch(/all match the manifest/);
  });

  it('with `latest` and a target time, recovers from the newest backup that ends before it', async () => {
    const second = await backupAndWait(receiver, 'main', cluster);
    expect(second > first).toBe(true);
    // the second backup ended after the target: it cannot serve, and says which one would
    const refused = await recoverInto(receiver, 'main', second, ['--target-time', points.afterBatch1]);
    expectFailure(refused.result, 1, new RegExp(`^ERROR \\[RECOVERY_TARGET\\]: target time .* is before backup ${second}`, 'm'));
    expect(refused.result.stderr).toMatch(new RegExp(`^HINT: Backup ${first} .*would serve`, 'm'));
    expect(existsSync(refused.dest)).toBe(false);

    const { copy, result } = await recoverAndStart('latest', ['--target-time', points.afterBatch1]);
    expect(result.stdout).toContain(`Recovered backup ${first} of main`);
    expect(await copy.psql(COUNT_ROWS)).toBe(rowsUpToBatch(1));
  });

  it('refuses targets it cannot reach, and bad options, before writing a byte', async () => {
    const refuse = async (id: string, options: string[], exitCode: 1 | 2, message: RegExp, hint?: RegExp) => {
      const { result, dest } = await recoverInto(receiver, 'main', id, options);
      expectFailure(result, exitCode, message);
      if (hint) expect(result.stderr, describeRun(result)).toMatch(hint);
      expect(existsSync(dest), `${dest} after a refused recovery`).toBe(false);
    };
    // before the only backup's end: nothing can serve that point
    await refuse(first, ['--target-time', points.beforeBackup], 1, new RegExp(`target time .* is before backup ${first}`), /^HINT: No older backup/m);
    await refuse('latest', ['--target-time', points.beforeBackup], 1, /no DONE backup of main ends before the target/, new RegExp(`^HINT: The oldest backup, ${first} .*ends after it`, 'm'));
    await refuse(first, ['--target-time', new Date(Date.now() + 3_600_000).toISOString()], 1, /target time .* is in the future/);
    const beyond = await cluster.psql("select pg_current_wal_lsn() + 1024 * 1024 * 1024");
    await refuse(first, ['--target-lsn', beyond], 1, /target LSN .* is past the last WAL archived/);
    // right after a switch, pg_current_wal_lsn() is where the next (unarchived) segment starts:
    // PostgreSQL could not reach it either, and would stop with "recovery ended before configured
    // recovery target was reached"
    await cluster.waitArchived(await cluster.switchWal());
    const endOfArchive = await cluster.psql('select pg_current_wal_lsn()');
    await refuse(first, ['--target-lsn', endOfArchive], 1, /target LSN .* is past the last WAL archived/);
    await refuse('20000101T000000', [], 1, /server main has no backup 20000101T000000/, /list-backups/);
    await refuse('yesterday', [], 2, /"yesterday" is not a backup ID/);
    await refuse(first, ['--target-xid', points.xidOfBatch2, '--target-name', points.restorePoint], 2, /more than one recovery target/);
    await refuse(first, ['--target-immediate', '--target-action', 'explode'], 2, /--target-action "explode"/);
    await refuse(first, ['--target-time', 'tomorrow at noon'], 2, /--target-time "tomorrow at noon" is not an ISO 8601 time/);
    await refuse(first, ['--target-lsn', 'not-an-lsn'], 2, /--target-lsn "not-an-lsn" is not an LSN/);
    const unknown = await runReceiverCli(['show-backup', ...conf, 'main', '20000101T000000']);
    expectFailure(unknown, 1, /server main has no backup 20000101T000000/);
  });

  it('refuses a destination that is not empty and leaves it as it was', async () => {
    const dir = makeTempDir('occupied', 'postgres', 0o755);
    const dest = makeDir(join(dir, 'pgdata'), 'postgres', 0o700);
    writeFileSync(join(dest, 'PG_VERSION'), '15\n');
    writeFileSync(join(dest, 'precious.txt'), 'the only copy of something\n');
    const before = await snapshotTree(dest);
    const r = await runReceiverCli(['recover', ...conf, 'main', first, dest]);
    expectFailure(r, 1, new RegExp(`${dest} exists and is not empty`));
    expect(await snapshotTree(dest)).toEqual(before);
  });

  it('keeps a backup from deletion until released, and never deletes below minimum_redundancy', async () => {
    const backups = (await listBackupsJson(receiver, 'main')).filter((b) => b.status === 'DONE').map((b) => b.backup_id);
    expect(backups.length).toBe(2);
    const third = await backupAndWait(receiver, 'main', cluster);
    const [oldest, middle] = [backups.at(-1)!, backups[0]!];
    expect(oldest).toBe(first);
    expect((await showBackupJson(receiver, 'main', 'oldest')).backup_id).toBe(first);
    expect((await showBackupJson(receiver, 'main', 'latest')).backup_id).toBe(third);

    expectSuccess(await runReceiverCli(['keep', ...conf, 'main', middle]));
    expect((await showBackupJson(receiver, 'main', middle)).keep).toBe(true);
    const list = await runReceiverCli(['list-backups', ...conf, 'main']);
    expect(list.stdout).toMatch(new RegExp(`^main - ${middle} - .* - DONE - KEEP$`, 'm'));
    const kept = await runReceiverCli(['delete', ...conf, 'main', middle]);
    expectFailure(kept, 1, new RegExp(`backup ${middle} is marked keep`));
    expect(kept.stderr).toMatch(/^HINT: .*--release/m);
    expect((await listBackupsJson(receiver, 'main')).map((b) => b.backup_id)).toContain(middle);

    expectSuccess(await runReceiverCli(['keep', ...conf, 'main', middle, '--release']));
    expect((await showBackupJson(receiver, 'main', middle)).keep).toBe(false);
    const deleted = await runReceiverCli(['delete', ...conf, 'main', middle]);
    expectSuccess(deleted);
    expect((await listBackupsJson(receiver, 'main')).map((b) => b.backup_id)).toEqual([third, first]);
    expect(existsSync(join(receiver.serverDir('main'), 'base', middle))).toBe(false);

    // two DONE backups left and minimum_redundancy = 2: neither may go
    for (const id of ['latest', first]) {
      const r = await runReceiverCli(['delete', ...conf, 'main', id]);
      expectFailure(r, 1, /minimum_redundancy = 2/);
    }
    expect((await listBackupsJson(receiver, 'main')).map((b) => b.backup_id)).toEqual([third, first]);
  });

  it('finds a damaged file in the catalog: verify-backup names it, recover refuses it and leaves nothing behind', async () => {
    // a fresh backup, which the test damages
    const latest = await backupAndWait(receiver, 'main', cluster);
    // the events table's file, as the catalog holds it (compressed, as the receiver's default says)
    const relation = await cluster.psql("select pg_relation_filepath('events')");
    // a small table: its compressed bytes are a member of one of the backup's bundles
    const stored = storedFileOf(receiver, 'main', latest, relation);
    expect(stored.bundled).toBe(true);
    expect(stored.file).toMatch(/\.zst$/);
    // flip bytes in the middle of the table's own bytes in the bundle, keeping its size (silent corruption on disk)
    expect(stored.length).toBeGreaterThan(8192);
    const fd = openSync(stored.file, 'r+');
    const bytes = Buffer.alloc(16);
    readSync(fd, bytes, 0, 16, stored.offset + 8192 + 100);
    writeSync(fd, bytes.map((b) => b ^ 0xff), 0, 16, stored.offset + 8192 + 100);
    closeSync(fd);

    const verify = await runReceiverCli(['verify-backup', ...conf, 'main', latest]);
    expectFailure(verify, 1, new RegExp(`backup ${latest} does not match its manifest`));
    // flipped compressed bytes either no longer decompress or decompress to other bytes: both are named
    expect(verify.stdout, describeRun(verify)).toMatch(new RegExp(`^FAILED: ${relation}: (checksum mismatch|cannot be decompressed \\(.+\\))$`, 'm'));
    // the other backup is unharmed
    expectSuccess(await runReceiverCli(['verify-backup', ...conf, 'main', first]));

    const dir = makeTempDir('recovered', 'postgres', 0o755);
    const dest = makeDir(join(dir, 'pgdata'), 'postgres', 0o700);
    const recover = await runReceiverCli(['recover', ...conf, 'main', latest, dest]);
    expectFailure(recover, 1, new RegExp(`${relation} in the catalog does not match its manifest`));
    expect(recover.stderr).toMatch(/^HINT: .*verify-backup/m);
    // the empty destination stays, empty: no half-written cluster anybody could start
    expect(listDir(dest)).toEqual([]);
    // a destination recover had to create is gone again
    const created = join(dir, 'created');
    const again = await runReceiverCli(['recover', ...conf, 'main', latest, created]);
    expectFailure(again, 1, new RegExp(relation));
    expect(existsSync(created)).toBe(false);
  });

  it("takes a backup when the backup host asks (`backup main --wait`, Barman's `server backup main`), with progress, only with an agent daemon connected", async () => {
    const alone = await runReceiverCli(['backup', ...conf, 'main', '--wait']);
    expectFailure(alone, 1, /no agent daemon of server main is connected/);
    expect(alone.stderr).toMatch(/^HINT: .*barman-agent daemon/m);

    const daemon: Background = startAgentInBackground(['daemon', '-c', cluster.agentConfigPath!]);
    await waitFor('the agent daemon to connect', () => {
      if (!daemon.running) throw new Error(`the daemon exited:\n${daemon.output()}`);
      return daemon.output().includes('connected to the receiver');
    });
    /** What a waiting `backup` prints on stderr when it is not a terminal: one plain line per phase, DONE last. */
    const expectPhaseLines = (r: RunResult, id: string) => {
      expect(r.stderr.trimEnd().split('\n'), describeRun(r)).toEqual([
        `backup ${id} started`,
        expect.stringMatching(/^\d+\/\d+ files, [\d.]+ (B|KiB|MiB|GiB) in [\d.]+ s \(([\d.]+ (B|KiB|MiB|GiB)\/s|-)\)$/),
        `backup ${id}: WAITING_FOR_WALS`,
        `backup ${id}: DONE`,
      ]);
    };
    const before = (await listBackupsJson(receiver, 'main')).length;
    const r = await runReceiverCli(['backup', ...conf, 'main', '--wait']);
    expectSuccess(r);
    const id = r.stdout.trim();
    expect(id).toMatch(/^\d{8}T\d{6}$/);
    const info = await showBackupJson(receiver, 'main', id);
    expect(info.status).toBe('DONE');
    expectPhaseLines(r, id);
    expect((await listBackupsJson(receiver, 'main')).length).toBe(before + 1);

    // Barman's `barman server backup main` runs the whole backup, as Barman's does
    const seed = await runReceiverCli(['server', 'backup', 'main', ...conf]);
    expectSuccess(seed);
    const seedId = seed.stdout.trim();
    expect(seedId).toMatch(/^\d{8}T\d{6}$/);
    expect(seedId > id).toBe(true);
    expect((await showBackupJson(receiver, 'main', seedId)).status).toBe('DONE');
    expectPhaseLines(seed, seedId);

    // without --wait it prints the ID at once; the backup finishes on its own
    const quick = await runReceiverCli(['backup', ...conf, 'main']);
    expectSuccess(quick);
    const quickId = quick.stdout.trim();
    expect(quickId).toMatch(/^\d{8}T\d{6}$/);
    expect(quick.stderr).toBe(`backup ${quickId} started\n`);
    await waitBackupStatus(receiver, 'main', quickId, 'DONE', cluster);
    await daemon.stop('SIGTERM');
  });

  it('does not call a backup DONE, nor recover from it, until all of its WAL is archived', async () => {
    const previous = (await showBackupJson(receiver, 'main', 'latest')).backup_id;
    // archiving breaks (the backup host's disk, say): PostgreSQL keeps the WAL and retries
    cluster.appendConf({ archive_command: 'false' });
    await cluster.reload();
    await waitFor('archive_command to be off', async () => (await cluster.psql('show archive_command')) === 'false');
    const r = await runAgent(['backup', '-c', cluster.agentConfigPath!]);
    expectSuccess(r);
    const id = r.stdout.trim();
    expect(r.stderr).toMatch(new RegExp(`backup ${id}: WAITING_FOR_WALS`));
    expect((await showBackupJson(receiver, 'main', id)).status).toBe('WAITING_FOR_WALS');
    expect((await showBackupJson(receiver, 'main', 'latest')).backup_id).toBe(previous);
    const refused = await recoverInto(receiver, 'main', id);
    expectFailure(refused.result, 1, new RegExp(`backup ${id} is WAITING_FOR_WALS, not DONE`));
    expect(existsSync(refused.dest)).toBe(false);

    // archiving is back: the backup's last segment arrives and the backup is DONE
    cluster.appendConf({ archive_command: agentCommandLine(cluster.agentConfigPath!, 'push %p') });
    await cluster.reload();
    await waitBackupStatus(receiver, 'main', id, 'DONE', cluster);
    expect((await showBackupJson(receiver, 'main', 'latest')).backup_id).toBe(id);
  });
});

describe("a DBA's day: a cluster with a tablespace, recovered with the tablespace moved", () => {
  it('recovers the tablespace into its new location, and the copy starts with its rows', async () => {
    const receiver = await startReceiver({ servers: [{ name: 'main' }] });
    const cluster = await createCluster({ name: 'tblspc', archive: true, agentConfig: { receiver, server: 'main' } });
    await cluster.start();
    const original = makeTempDir('tblspc-original', 'postgres', 0o700);
    await cluster.psql(`create tablespace fast_disk location '${original}'`);
    await cluster.psql("create table parts (id int primary key, name text) tablespace fast_disk; insert into parts select g, 'part ' || g from generate_series(1, 5000) g;");
    const oid = await cluster.psql("select oid from pg_tablespace where spcname = 'fast_disk'");
    const id = await backupAndWait(receiver, 'main', cluster);
    expect((await showBackupJson(receiver, 'main', id)).tablespaces).toEqual([{ oid, name: 'fast_disk', location: original }]);
    // the source is stopped (its pages flushed), so its tablespace files stay as they are now
    await cluster.stop();
    const originalFiles = await snapshotTree(original);

    // the location the database host recorded is not trusted on the backup host: each tablespace needs --tablespace
    const unnamed = await recoverInto(receiver, 'main', id);
    expectFailure(unnamed.result, 2, new RegExp(`backup ${id} has tablespaces with no location given on this host: fast_disk \\(OID ${oid}, recorded by the database host as ${original}\\)`));
    expect(unnamed.result.stderr).toContain(`--tablespace fast_disk:${unnamed.dest}_tablespaces/fast_disk`);
    expect(existsSync(unnamed.dest)).toBe(false);
    // the original location is in use (and not empty): recovering onto it is refused
    const inPlace = await recoverInto(receiver, 'main', id, ['--tablespace', `fast_disk:${original}`]);
    expectFailure(inPlace.result, 1, new RegExp(`tablespace fast_disk location ${original} exists and is not empty`));
    // a tablespace the backup does not have is a usage error
    const unknown = await recoverInto(receiver, 'main', id, ['--tablespace', 'slow_disk:/nowhere']);
    expectFailure(unknown.result, 2, /has no tablespace "slow_disk"/);

    const moved = join(makeTempDir('tblspc-new', 'postgres', 0o755), 'fast_disk');
    const recovery = await recoverInto(receiver, 'main', id, ['--tablespace', `fast_disk:${moved}`]);
    expectSuccess(recovery.result);
    expect(readlinkSync(join(recovery.dest, 'pg_tblspc', oid))).toBe(moved);
    expect(statSync(moved).uid).toBe(postgresUser().uid);
    const verified = await verifyRecoveredDirectory(recovery.dest);
    expect(verified.code, describeRun(verified)).toBe(0);

    const copy = await startRecovered(recovery.dest, recovery.dir);
    await copy.waitPromoted();
    expect(await copy.psql("select pg_tablespace_location(oid) from pg_tablespace where spcname = 'fast_disk'")).toBe(moved);
    expect(await copy.psql('select count(*), max(id) from parts')).toBe('5000|5000');
    expect(await copy.psql("select pg_relation_filepath('parts')")).toMatch(new RegExp(`^pg_tblspc/${oid}/`));
    // the copy writes into its own tablespace location, never into the original's
    await copy.psql("insert into parts values (5001, 'only in the copy'); checkpoint;");
    expect(await snapshotTree(original)).toEqual(originalFiles);
  });
});
