// Restores that resume and repair: a restored data directory that drifted (a file changed, one
// truncated, one deleted, one added, links planted where the backup has a file or a directory) is
// brought back to the backup by `restore --delta`, writing only what differs; a restore killed
// half-way leaves a directory PostgreSQL refuses to start, and `--delta` completes it; a directory
// a PostgreSQL runs in is refused, with or without --delta.

import { appendFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  type Cluster, createCluster, describeRun, expectFailure, expectSuccess, freePort, makeTempDir, pgBinDir, type Receiver, run, runAgent, runReceiverCli, startReceiver, startRelay, waitFor, writeAgentConfig,
} from '../harness';
import { backupAndWait, recoverInto } from '../harness/backups';
import { chownTo } from '../harness/env';
import { startAgentInBackground, startRecovered, verifyRecoveredDirectory } from '../harness/recovered';

describe('restore --delta', () => {
  let receiver: Receiver;
  let source: Cluster;
  let backupId: string;
  /** the rows recovery must bring back */
  let expected: string;

  beforeAll(async () => {
    receiver = await startReceiver({ servers: [{ name: 'main' }] });
    source = await createCluster({ name: 'main', archive: true, agentConfig: { receiver, server: 'main' }, walSegmentSizeMB: 1 });
    await source.start();
    await source.psql('create table ledger (id int primary key, note text not null); create table other (id int); create table third (id int);' +
      "insert into ledger select g, repeat('x', 200) from generate_series(1, 20000) g; insert into other select generate_series(1, 5000); insert into third select generate_series(1, 5000);");
    backupId = await backupAndWait(receiver, 'main', source);
    await source.psql("insert into ledger select g, 'after the backup' from generate_series(20001, 21000) g");
    await source.waitArchived(await source.switchWal());
    expected = await source.psql('select count(*), sum(id) from ledger');
  });

  const restore = (dest: string, ...more: string[]) => runAgent(['restore', '-c', source.agentConfigPath!, backupId, dest, ...more]);
  const rows = async (dest: string, dir: string) => {
    const copy = await startRecovered(dest, dir);
    await copy.waitPromoted();
    const counts = await copy.psql('select count(*), sum(id) from ledger');
    const others = await copy.psql('select (select count(*) from other), (select count(*) from third)');
    await copy.dispose();
    return { counts, others };
  };

  it('brings a drifted directory back to the backup, writing only what differs and following none of the links planted in it', async () => {
    const dir = makeTempDir('delta', 'postgres', 0o755);
    const dest = join(dir, 'pgdata');
    expectSuccess(await restore(dest));
    const relpath = async (table: string) => source.psql(`select pg_relation_filepath('${table}')`);
    const [ledger, other, third] = [await relpath('ledger'), await relpath('other'), await relpath('third')];
    const outside = makeTempDir('outside', 'postgres', 0o755);
    writeFileSync(join(outside, 'precious'), 'must stay as it is');
    chownTo(join(outside, 'precious'), 'postgres');

    // the drift
    const changed = readFileSync(join(dest, ledger));
    changed.fill(0x55, 8192, 16384);
    writeFileSync(join(dest, ledger), changed);
    truncateSync(join(dest, other), 0);
    rmSync(join(dest, third));
    writeFileSync(join(dest, 'base', 'added-by-someone'), 'not in the backup');
    appendFileSync(join(dest, 'PG_VERSION'), 'garbage\n');
    // a link where the backup has a file (its target must not be written), and one where it has a directory (its content must not be removed)
    rmSync(join(dest, 'pg_ident.conf'));
    symlinkSync(join(outside, 'precious'), join(dest, 'pg_ident.conf'));
    rmSync(join(dest, 'pg_notify'), { recursive: true });
    symlinkSync(outside, join(dest, 'pg_notify'));

    const r = await restore(dest, '--delta');
    expectSuccess(r);
    const m = /(\d+) files: (\d+) written, (\d+) unchanged, (\d+) removed/.exec(r.stdout);
    expect(m, r.stdout).not.toBeNull();
    const [total, written, unchanged] = [Number(m![1]), Number(m![2]), Number(m![3])];
    // the four files that drifted, the file a link stood for, postgresql.auto.conf (the first restore
    // appended the recovery settings to it) and pg_control (always written, last)
    expect(written).toBe(7);
    expect(unchanged).toBe(total - written);
    expect(readdirSync(outside).sort()).toEqual(['precious']);
    expect(readFileSync(join(outside, 'precious'), 'utf8')).toBe('must stay as it is');
    expect(existsSync(join(dest, 'base', 'added-by-someone'))).toBe(false);
    expect(existsSync(join(dest, 'barman_restore.incomplete'))).toBe(false);
    const verified = await verifyRecoveredDirectory(dest);
    expect(verified.code, describeRun(verified)).toBe(0);
    expect(await rows(dest, dir)).toEqual({ counts: expected, others: '5000|5000' });
  });

  it('finishes a restore that was killed half-way: PostgreSQL refuses the directory until --delta completes it', async () => {
    const relay = await startRelay({ host: '127.0.0.1', port: receiver.port });
    const slow = writeAgentConfig({ receiver: relay.url, server: 'main', token: receiver.tokens.get('main'), dir: makeTempDir('slow-agent', 'postgres', 0o755) }).path;
    relay.limitReplies(1 << 20);
    const dir = makeTempDir('killed', 'postgres', 0o755);
    const dest = join(dir, 'pgdata');
    const agent = startAgentInBackground(['restore', '-c', slow, backupId, dest]);
    // killed once what PostgreSQL reads before pg_control is there: it then names pg_control.
    // Written, not only created: a small file is created first and its bytes go in just after, and
    // a kill in between leaves an empty PG_VERSION, which PostgreSQL names instead
    const before = ['barman_restore.incomplete', 'postgresql.conf', 'PG_VERSION', 'global/pg_filenode.map'];
    const written = (f: string) => (statSync(join(dest, f), { throwIfNoEntry: false })?.size ?? 0) > 0;
    await waitFor('the restore to have written the files PostgreSQL reads first', () => before.every(written), { timeoutMs: 60_000, intervalMs: 50 });
    agent.signal('SIGKILL');
    await agent.exited;
    relay.limitReplies(undefined);

    expect(existsSync(join(dest, 'global', 'pg_control'))).toBe(false);
    const start = await run(join(pgBinDir(), 'pg_ctl'), ['-D', dest, '-l', join(dir, 'refused.log'), '-o', `-p ${await freePort()} -k ${dir} -c listen_addresses=''`, '-w', '-t', '30', 'start'], { asPostgres: true, cwd: dir });
    expect(start.code, describeRun(start)).not.toBe(0);
    expect(readFileSync(join(dir, 'refused.log'), 'utf8')).toMatch(/pg_control/);

    // without --delta, the interrupted restore is named and the way to complete it given
    expectFailure(await restore(dest), 1, /holds a restore that did not finish \(barman_restore\.incomplete\)/);
    const r = await restore(dest, '--delta');
    expectSuccess(r);
    expect(existsSync(join(dest, 'barman_restore.incomplete'))).toBe(false);
    expect(await rows(dest, dir)).toEqual({ counts: expected, others: '5000|5000' });
  });

  it('refuses a directory a PostgreSQL runs in, with or without --delta, and leaves it alone', async () => {
    const dir = makeTempDir('live', 'postgres', 0o755);
    const dest = join(dir, 'pgdata');
    expectSuccess(await restore(dest));
    const copy = await startRecovered(dest, dir);
    await copy.waitPromoted();
    for (const more of [[], ['--delta']]) {
      expectFailure(await restore(dest, ...more), 1, /belongs to a running PostgreSQL \(postmaster\.pid names process \d+, which is alive\)/);
    }
    // the receiver's recover refuses it too
    expectFailure(await runReceiverCli(['recover', '-c', receiver.configPath, 'main', backupId, dest, '--delta']), 1, /belongs to a running PostgreSQL/);
    expect(await copy.psql('select count(*), sum(id) from ledger')).toBe(expected);
    expect(existsSync(join(dest, 'barman_restore.incomplete'))).toBe(false);
  });

  it('recover --delta on the backup host repairs a directory recover wrote', async () => {
    const recovery = await recoverInto(receiver, 'main', backupId);
    expectSuccess(recovery.result);
    rmSync(join(recovery.dest, 'PG_VERSION'));
    mkdirSync(join(recovery.dest, 'base', 'stray'));
    const r = await runReceiverCli(['recover', '-c', receiver.configPath, 'main', backupId, recovery.dest, '--delta']);
    expectSuccess(r);
    // PG_VERSION, postgresql.auto.conf (recover appended to it) and pg_control (always written, last)
    expect(r.stdout).toMatch(/\d+ files: 3 written, \d+ unchanged, \d+ removed/);
    expect(existsSync(join(recovery.dest, 'base', 'stray'))).toBe(false);
    const verified = await verifyRecoveredDirectory(recovery.dest);
    expect(verified.code, describeRun(verified)).toBe(0);
    expect((await rows(recovery.dest, recovery.dir)).counts).toBe(expected);
  });
});
