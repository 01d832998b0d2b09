// Recovery after recovery: a DBA recovers yesterday's mistake away, promotes the copy and makes it
// the new primary, archiving into the same catalog. Its timeline 2 history and WAL sit beside
// timeline 1's; a later recovery from the same (timeline 1) backup follows timeline 2 when asked
// for the latest timeline, and stays on timeline 1 when asked for the current one. A garbage
// 00000002.history pushed first is refused, stored nowhere, and does not stand in the real one's way.

import { appendFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  agentCommandLine, type Cluster, createCluster, describeRun, expectFailure, expectSuccess, listDir, makeTempDir, type Receiver, runAgent, startReceiver,
} from '../harness';
import { backupAndWait, recoverInto, waitInCatalog as waitWalInCatalog } from '../harness/backups';
import { type RecoveredCluster, startRecovered, verifyRecoveredDirectory } from '../harness/recovered';

/** rows with ids first..last, one transaction */
const insertIds = (first: number, last: number, note: string): string => `insert into ledger select g, '${note}' from generate_series(${first}, ${last}) g;`;

/** the host's own zone, which the receiver reads a --target-time without an offset in */
const hostZone = Intl.DateTimeFormat().resolvedOptions().timeZone;

describe("a DBA's day: recovery after recovery, across timelines", () => {
  let receiver: Receiver;
  let source: Cluster;
  let backupId: string;
  /** the promoted copy, now archiving timeline 2 into the same catalog */
  let newPrimary: RecoveredCluster;
  let mistakeAt = '';
  let onTimeline2At = '';

  const waitInCatalog = (name: string, cluster: { psql(sql: string): Promise<string> }) => waitWalInCatalog(receiver, 'main', name, cluster);

  beforeAll(async () => {
    receiver = await startReceiver({ servers: [{ name: 'main' }] });
    source = await createCluster({ name: 'main', archive: true, agentConfig: { receiver, server: 'main' } });
    await source.start();
    await source.psql('create table ledger (id int primary key, note text not null);' + insertIds(1, 1000, 'before the backup'));
    backupId = await backupAndWait(receiver, 'main', source);
    await source.psql(insertIds(1001, 2000, 'good day'));
    mistakeAt = await source.psql("set timezone = 'UTC'; select clock_timestamp()::text");
    await source.psql(insertIds(2001, 3000, 'the mistake'));
    await source.waitArchived(await source.switchWal());
  });

  /** `barman-agent push` of a file with this name and content, as postgres, from a folder of its own */
  const pushFile = async (name: string, content: string) => {
    const path = join(makeTempDir('garbage', 'postgres', 0o755), name);
    writeFileSync(path, content, { mode: 0o644 });
    return runAgent(['push', '-c', source.agentConfigPath!, path]);
  };

  it('refuses a garbage .history or .backup file and stores nothing under its name', async () => {
    const history = await pushFile('00000002.history', 'this is not a timeline history file\n');
    expectFailure(history, 1, /00000002\.history is not a timeline history file PostgreSQL wrote: bad history line 1/);
    expect(history.stderr).toMatch(/^HINT: Nothing was stored/m);
    const backupFile = '000000010000000000000099.00000028.backup';
    const backup = await pushFile(backupFile, 'LABEL: looks like one\n');
    expectFailure(backup, 1, /000000010000000000000099\.00000028\.backup is not a backup history file PostgreSQL wrote: no START WAL LOCATION/);
    for (const name of ['00000002.history', backupFile]) expect(existsSync(receiver.walPath('main', name)), name).toBe(false);
    expect(listDir(join(receiver.serverDir('main'), 'errors'))).toEqual([]);
    // the .backup file PostgreSQL wrote for the backup was accepted as it came
    const backups = listDir(join(receiver.serverDir('main'), 'wals')).filter((f) => /^[0-9A-F]{24}\.[0-9A-F]{8}\.backup-[0-9a-f]{64}$/.test(f));
    expect(backups).toHaveLength(1);
  });

  it('recovers to before the mistake, promotes, and the copy archives timeline 2 into the same catalog', async () => {
    const recovery = await recoverInto(receiver, 'main', backupId, ['--target-time', mistakeAt, '--target-action', 'promote']);
    expectSuccess(recovery.result);
    const verified = await verifyRecoveredDirectory(recovery.dest);
    expect(verified.code, describeRun(verified)).toBe(0);
    // the DBA makes the copy the new primary: it archives through the agent, as the server "main"
    appendFileSync(join(recovery.dest, 'postgresql.auto.conf'), `archive_mode = 'on'\narchive_command = '${agentCommandLine(source.agentConfigPath!, 'push %p')}'\n`);
    newPrimary = await startRecovered(recovery.dest, recovery.dir);
    await newPrimary.waitPromoted();
    expect(await newPrimary.psql('select count(*), max(id) from ledger')).toBe('2000|2000');
    expect(await newPrimary.timeline()).toBe(2);

    await waitInCatalog('00000002.history', newPrimary);
    expect(readFileSync(receiver.walPath('main', '00000002.history'), 'utf8')).toBe(readFileSync(join(recovery.dest, 'pg_wal', '00000002.history'), 'utf8'));

    await newPrimary.psql(insertIds(10001, 11000, 'timeline 2'));
    onTimeline2At = await newPrimary.psql(`set timezone = '${hostZone}'; select to_char(clock_timestamp(), 'YYYY-MM-DD"T"HH24:MI:SS.US')`);
    await newPrimary.psql(insertIds(11001, 12000, 'timeline 2, later'));
    const segment = await newPrimary.psql("select pg_walfile_name(pg_switch_wal()) from (select pg_logical_emit_message(false, 'barman-test', 'switch')) m");
    expect(segment).toMatch(/^00000002/);
    await waitInCatalog(segment, newPrimary);
    // every file the new primary handed over was accepted: no retries, nothing set aside
    expect(await newPrimary.psql('select failed_count from pg_stat_archiver')).toBe('0');
    expect(listDir(join(receiver.serverDir('main'), 'errors'))).toEqual([]);
  });

  it('a second recovery from the timeline 1 backup follows timeline 2 with --target-tli latest', async () => {
    const recovery = await recoverInto(receiver, 'main', backupId, ['--target-tli', 'latest', '--target-time', onTimeline2At]);
    expectSuccess(recovery.result);
    const verified = await verifyRecoveredDirectory(recovery.dest);
    expect(verified.code, describeRun(verified)).toBe(0);
    const copy = await startRecovered(recovery.dest, recovery.dir);
    await copy.waitPromoted();
    // timeline 1 up to the fork, timeline 2 up to the target; never the mistake
    expect(await copy.psql('select count(*), max(id) from ledger')).toBe('3000|11000');
    expect(await copy.psql("select count(*) from ledger where note = 'the mistake'")).toBe('0');
    expect(await copy.psql("select count(*) from ledger where note = 'timeline 2'")).toBe('1000');
    // it forked off timeline 2 when it promoted
    expect(await copy.timeline()).toBe(3);
  });

  it('stays on the backup\'s own timeline with --target-tli current', async () => {
    const recovery = await recoverInto(receiver, 'main', backupId, ['--target-tli', 'current']);
    expectSuccess(recovery.result);
    const copy = await startRecovered(recovery.dest, recovery.dir);
    await copy.waitPromoted();
    expect(await copy.psql('select count(*), max(id) from ledger')).toBe('3000|3000');
    expect(await copy.psql("select count(*) from ledger where note = 'the mistake'")).toBe('1000');
  });

  it('refuses a timeline the backup cannot reach', async () => {
    const { result, dest } = await recoverInto(receiver, 'main', backupId, ['--target-tli', '7']);
    expectFailure(result, 1, new RegExp(`timeline 7 cannot be reached from backup ${backupId}`));
    expect(existsSync(dest)).toBe(false);
  });
});
