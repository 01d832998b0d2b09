// A DBA's worst day, rehearsed: one byte of an archived WAL segment rots on the backup host's
// disk. Every way that segment leaves the catalog (receiver get-wal, the agent's get-wal as
// restore_command, recover, the agent's restore) refuses it by name instead of handing it out,
// PostgreSQL replaying through restore_command stops instead of ending recovery early without the
// rows that follow, and verify-backup and check report it. An identical push from pg_wal repairs
// it; then every path works again and recovery has every row. Files stored by versions before
// checksums stay readable, and cron records their checksums.

import { appendFileSync, closeSync, existsSync, openSync, readFileSync, readSync, renameSync, statSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  agentCommandLine, type Cluster, createCluster, describeRun, expectFailure, expectSuccess, listDir, makeDir, makeTempDir, type Receiver, runAgent,
  runReceiverCli, sha256Of, sha256OfBytes, startReceiver,
} from '../harness';
import { backupAndWait, type Recovery, recoverInto, showBackupJson } from '../harness/backups';
import { startRecovered, verifyRecoveredDirectory } from '../harness/recovered';

const SEGMENT_SIZE = 16 * 1024 * 1024;
const insertIds = (first: number, last: number): string => `insert into ledger select g, 'row ' || g from generate_series(${first}, ${last}) g;`;

/** Flips every bit of one byte in place (size unchanged: silent corruption); flipping it again undoes it. */
function flipByte(path: string, offset: number): void {
  const fd = openSync(path, 'r+');
  try {
    const b = Buffer.alloc(1);
    readSync(fd, b, 0, 1, offset);
    writeSync(fd, Buffer.from([b[0]! ^ 0xff]), 0, 1, offset);
  } finally {
    closeSync(fd);
  }
}

describe('a flipped byte in an archived WAL segment is refused wherever the segment leaves the catalog', () => {
  let receiver: Receiver;
  let cluster: Cluster;
  let agentConf: string;
  let conf: string[];
  let backupId: string;
  /** the first segment after the backup: rows 1..1000 */
  let damaged: string;
  /** a recovered directory written before the damage, not started yet: PostgreSQL will replay through restore_command */
  let writtenBefore: Recovery;

  /** recover the backup with all archived WAL, check the directory, start it, and count the ledger's rows */
  const recoverAndCountRows = async (): Promise<string> => {
    const recovery = await recoverInto(receiver, 'main', backupId);
    expectSuccess(recovery.result);
    const verified = await verifyRecoveredDirectory(recovery.dest);
    expect(verified.code, describeRun(verified)).toBe(0);
    const copy = await startRecovered(recovery.dest, recovery.dir);
    await copy.waitPromoted();
    const rows = await copy.psql('select count(*), max(id) from ledger');
    await copy.dispose();
    return rows;
  };

  beforeAll(async () => {
    // stored plain: a flipped byte of the plain bytes is what only the checksum can catch (a
    // compressed copy with a flipped byte mostly no longer decompresses: backup-recovery covers that)
    receiver = await startReceiver({ servers: [{ name: 'main' }], compression: 'none' });
    conf = ['-c', receiver.configPath];
    // wal_keep_size keeps the segments in pg_wal: the repair pushes the good copy from there
    cluster = await createCluster({ name: 'main', archive: true, agentConfig: { receiver, server: 'main' }, extraConf: { wal_keep_size: '1GB' } });
    agentConf = cluster.agentConfigPath!;
    await cluster.start();
    await cluster.psql('create table ledger (id int primary key, note text not null);');
    backupId = await backupAndWait(receiver, 'main', cluster);
    await cluster.psql(insertIds(1, 1000));
    damaged = await cluster.switchWal();
    await cluster.psql(insertIds(1001, 2000));
    const second = await cluster.switchWal();
    await cluster.psql(insertIds(2001, 3000));
    await cluster.waitArchived([damaged, second, await cluster.switchWal()]);
    // recovered now, started after the damage with the agent as restore_command
    writtenBefore = await recoverInto(receiver, 'main', backupId);
    expectSuccess(writtenBefore.result);
  });

  it('hands every segment out, and recovers all 3000 rows, while nothing is damaged', async () => {
    const printed = await runReceiverCli(['get-wal', ...conf, 'main', damaged]);
    expectSuccess(printed);
    expect(sha256OfBytes(printed.stdoutBytes)).toBe(await sha256Of(cluster.walFile(damaged)));
    // the name the segment is stored under records the SHA-256 the agent computed
    expect(receiver.walChecksum('main', damaged)).toBe(await sha256Of(cluster.walFile(damaged)));
    const restoreDir = makeDir(join(cluster.dir, 'restore'), 'postgres', 0o700);
    expectSuccess(await runAgent(['get-wal', '-c', agentConf, damaged, join(restoreDir, 'RECOVERYXLOG')]));
    expect(await sha256Of(join(restoreDir, 'RECOVERYXLOG'))).toBe(await sha256Of(cluster.walFile(damaged)));

    const verify = await runReceiverCli(['verify-backup', ...conf, 'main', backupId]);
    expectSuccess(verify);
    expect(verify.stdout).toMatch(/files and [1-9]\d* WAL files checked, all match/);
    for (const args of [[], ['--verify-wal']]) {
      const check = await runReceiverCli(['check', ...conf, 'main', ...args]);
      expectSuccess(check);
      expect(check.stdout).toMatch(/^\s*WAL integrity: OK \(\d+ segments from [0-9A-F]{24} to [0-9A-F]{24} present, all verified\)/m);
    }

    expect(await recoverAndCountRows()).toBe('3000|3000');
  });

  it('with one byte flipped at offset 20000, every way out refuses the segment by name and nothing is lost silently', async () => {
    const stored = receiver.walPath('main', damaged);
    expect(statSync(stored).size).toBe(SEGMENT_SIZE);
    flipByte(stored, 20000);
    const named = new RegExp(`${damaged} in the catalog of main is damaged`);

    // the backup host's get-wal: exit 1, never the whole segment on stdout, nothing in --output-dir
    const printed = await runReceiverCli(['get-wal', ...conf, 'main', damaged]);
    expectFailure(printed, 1, named);
    expect(printed.stderr).toMatch(/^HINT: .*barman-agent push/m);
    expect(printed.stdoutBytes.length).toBeLessThan(SEGMENT_SIZE);
    const outDir = makeDir(join(receiver.dir, 'out'), 'root');
    expectFailure(await runReceiverCli(['get-wal', ...conf, 'main', damaged, '--output-dir', outDir]), 1, named);
    expect(listDir(outDir)).toEqual([]);

    // the restore_command: no file at %p, and an exit code that makes PostgreSQL stop recovery (> 125)
    const restoreDir = makeDir(join(cluster.dir, 'restore-damaged'), 'postgres', 0o700);
    const fetched = await runAgent(['get-wal', '-c', agentConf, damaged, join(restoreDir, 'RECOVERYXLOG')]);
    expect(fetched.code, describeRun(fetched)).toBe(128);
    expect(fetched.stderr).toMatch(named);
    expect(fetched.stderr).toMatch(/^HINT: \S/m);
    expect(listDir(restoreDir)).toEqual([]);

    // recover on the backup host: refused, nothing left behind
    const recovery = await recoverInto(receiver, 'main', backupId);
    expectFailure(recovery.result, 1, named);
    expect(existsSync(recovery.dest)).toBe(false);

    // restore on the PostgreSQL host: refused, nothing left behind
    const restoreParent = makeTempDir('restored', 'postgres', 0o755);
    const restored = await runAgent(['restore', '-c', agentConf, backupId, join(restoreParent, 'pgdata')]);
    expectFailure(restored, 1, named);
    expect(listDir(join(restoreParent, 'pgdata'))).toEqual([]);

    // check reports it (the whole span the backups need is small enough to hash every run)
    const check = await runReceiverCli(['check', ...conf, 'main']);
    expect(check.code, describeRun(check)).toBe(1);
    expect(check.stdout).toMatch(new RegExp(`^\\s*WAL integrity: FAILED \\(WAL the backups need is missing or damaged: ${damaged}: damaged \\(checksum mismatch\\)\\)`, 'm'));
    expect(check.stdout).toMatch(/^HINT: WAL integrity: .*barman-agent push/m);

    // the scenario: PostgreSQL replays through restore_command and reaches the damaged
    // segment. It must stop with an error, not end recovery there and promote without the rows
    appendFileSync(join(writtenBefore.dest, 'postgresql.auto.conf'), `restore_command = '${agentCommandLine(agentConf, 'get-wal %f %p')}'\n`);
    const started = startRecovered(writtenBefore.dest, writtenBefore.dir);
    await expect(started).rejects.toThrow(/did not start/);
    const log = listDir(writtenBefore.dir).filter((f) => f.endsWith('.log')).map((f) => readFileSync(join(writtenBefore.dir, f), 'utf8')).join('\n');
    expect(log).toMatch(new RegExp(`FATAL: +could not restore file "${damaged}" from archive`));
    expect(log).not.toMatch(/database system is ready to accept connections|selected new timeline ID/);
  });

  it('verify-backup reads back the WAL of the backup\'s own range', async () => {
    const { begin_wal: beginWal } = await showBackupJson(receiver, 'main', backupId);
    const stored = receiver.walPath('main', beginWal);
    flipByte(stored, 20000);
    const verify = await runReceiverCli(['verify-backup', ...conf, 'main', backupId]);
    expectFailure(verify, 1, new RegExp(`backup ${backupId} does not match its manifest or its WAL is missing or damaged`));
    expect(verify.stdout).toMatch(new RegExp(`^FAILED: WAL ${beginWal}: damaged \\(checksum mismatch\\)$`, 'm'));
    flipByte(stored, 20000);
    expectSuccess(await runReceiverCli(['verify-backup', ...conf, 'main', backupId]));
  });

  it('an identical push from pg_wal repairs the damaged copy; then everything passes and recovery has every row', async () => {
    const push = await runAgent(['push', '-c', agentConf, cluster.walFile(damaged)]);
    expectSuccess(push);
    expect(receiver.walSha256('main', damaged)).toBe(await sha256Of(cluster.walFile(damaged)));
    // the damaged copy is kept, not dropped
    expect(listDir(join(receiver.serverDir('main'), 'errors')).filter((f) => f.startsWith(`${damaged}.`) && f.endsWith('.damaged'))).toHaveLength(1);
    expect(receiver.logs()).toMatch(/the stored copy was damaged; replaced by this identical push/);

    expectSuccess(await runReceiverCli(['check', ...conf, 'main', '--verify-wal']));
    expect(await recoverAndCountRows()).toBe('3000|3000');
  });

  it('reads a segment stored before checksums (unverifiable), and cron records its checksum', async () => {
    const stored = receiver.walPath('main', damaged);
    const legacy = join(dirname(stored), damaged);
    renameSync(stored, legacy);
    expect(receiver.walChecksum('main', damaged)).toBeUndefined();

    const printed = await runReceiverCli(['get-wal', ...conf, 'main', damaged]);
    expectSuccess(printed);
    expect(printed.stderr).toMatch(new RegExp(`WARNING: ${damaged} was stored without a checksum`));
    expect(sha256OfBytes(printed.stdoutBytes)).toBe(await sha256Of(cluster.walFile(damaged)));
    const check = await runReceiverCli(['check', ...conf, 'main']);
    expectSuccess(check);
    expect(check.stdout).toMatch(/WAL integrity: OK \(.*1 stored without a checksum by an older version/);

    const cron = await runReceiverCli(['cron', ...conf]);
    expectSuccess(cron);
    expect(cron.stdout).toMatch(/checksums recorded for 1 WAL file/);
    expect(basename(receiver.walPath('main', damaged))).toBe(`${damaged}-${await sha256Of(cluster.walFile(damaged))}`);
    const again = await runReceiverCli(['get-wal', ...conf, 'main', damaged]);
    expectSuccess(again);
    expect(again.stderr).toBe('');
  });
});
