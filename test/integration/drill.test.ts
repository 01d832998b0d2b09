// Restore drills, as a DBA uses them to prove the backups before the disaster: `drill` restores
// the newest backup (a tablespace included) on the backup host, starts it, checks it (pg_amcheck,
// drill_query) and records that it passed and its RTO, which status, list-backups and check then
// show; it never touches the production cluster or the catalog's files; it runs with or without
// the service; it recovers to a target time when asked; and a backup with one damaged data file
// fails the drill, which names the file.

import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { type Cluster, createCluster, describeRun, expectSuccess, makeDir, type Receiver, runReceiverCli, snapshotTree, startReceiver, waitFor } from '../harness';
import { backupAndWait, listBackupsJson, storedFileOf } from '../harness/backups';
import { receiverStatus } from '../harness/daemon';
import { drillScratchPrefix } from '../../receiver/drill/drill';

interface DrillJson {
  server: string;
  backup_id: string;
  passed: boolean;
  rto_seconds: number | null;
  checks: Array<{ name: string; ok: boolean; detail: string }>;
  error: string | null;
  at: string;
}

describe('restore drills prove a backup comes back, and how fast', () => {
  let receiver: Receiver;
  let cluster: Cluster;
  let backupId: string;
  let rows: string;
  const conf = () => ['-c', receiver.configPath];
  const drill = async (...args: string[]) => {
    const r = await runReceiverCli(['drill', ...conf(), 'main', ...args, '--json']);
    return { r, result: JSON.parse(r.stdout || 'null') as DrillJson };
  };
  // this receiver's own: other receivers on the host (other test runs) drill servers named main too
  const scratchDirs = () => readdirSync(tmpdir()).filter((f) => f.startsWith(drillScratchPrefix(receiver.barmanHome, 'main')));

  beforeAll(async () => {
    receiver = await startReceiver({ servers: [{ name: 'main', extra: { drill_query: 'select count(*), sum(id) from orders', drill_max_age: '1 day' } }] });
    // log_connections: the production cluster's log shows anyone who connects to it
    cluster = await createCluster({ name: 'production', archive: true, agentConfig: { receiver, server: 'main' }, extraConf: { log_connections: 'on' } });
    await cluster.start();
    const tsDir = makeDir(join(cluster.dir, 'tablespace'), 'postgres', 0o700);
    await cluster.psql(`create tablespace archive_space location '${tsDir}'`);
    await cluster.psql("create table orders (id int primary key, note text); insert into orders select g, md5(g::text) from generate_series(1, 20000) g; create table old_orders tablespace archive_space as select * from orders");
    backupId = await backupAndWait(receiver, 'main', cluster);
    rows = await cluster.psql('select count(*), sum(id) from orders');
  });

  it('passes on a good backup, records the RTO, and status, list-backups and check show it; production and catalog untouched', async () => {
    await cluster.waitArchiverIdle();
    const archivedBefore = (await cluster.archiverStats()).archivedCount;
    const catalogBefore = await snapshotTree(receiver.serverDir('main'));
    const logBefore = statSync(cluster.logFile).size;

    const { r, result } = await drill();
    expectSuccess(r);
    expect(result).toMatchObject({ server: 'main', backup_id: backupId, passed: true, error: null });
    expect(result.rto_seconds).toBeGreaterThan(0);
    expect(result.checks.map((c) => [c.name, c.ok])).toEqual([['binaries', true], ['restore', true], ['recovery', true], ['pg_amcheck', true], ['drill_query', true]]);
    expect(result.checks.find((c) => c.name === 'pg_amcheck')!.detail).toMatch(/every database checked/);
    // the probe ran on the restored copy: every row of the backup is there
    expect(result.checks.find((c) => c.name === 'drill_query')!.detail).toBe(`in postgres: ${rows.replace('|', ', ')}`);

    // nobody connected to production, it archived nothing more, and the catalog's files are as they were
    const productionLog = readFileSync(cluster.logFile, 'utf8');
    expect(productionLog.slice(0, logBefore), 'log_connections shows the test\'s own connections').toMatch(/connection authorized/);
    expect(productionLog.slice(logBefore)).not.toMatch(/connection received|connection authorized/);
    expect((await cluster.archiverStats()).archivedCount).toBe(archivedBefore);
    const catalogAfter = await snapshotTree(receiver.serverDir('main'));
    catalogAfter.delete('drills.json');
    expect(catalogAfter).toEqual(catalogBefore);
    expect(scratchDirs()).toEqual([]);

    const status = await receiverStatus(receiver, 'main') as unknown as { drill: { at: string; backup_id: string; passed: boolean; rto_seconds: number } };
    expect(status.drill).toEqual({ at: result.at, backup_id: backupId, passed: true, rto_seconds: result.rto_seconds });
    const list = await runReceiverCli(['list-backups', ...conf(), 'main']);
    expect(list.stdout, describeRun(list)).toMatch(new RegExp(`^main - ${backupId} - .* - DONE - DRILLED \\(.*RTO ${result.rto_seconds} s\\)$`, 'm'));
    expect((await listBackupsJson(receiver, 'main'))[0]!.drill).toEqual({ at: result.at, passed: true, rto_seconds: result.rto_seconds });
    const check = await runReceiverCli(['check', ...conf(), 'main']);
    expectSuccess(check);
    expect(check.stdout).toMatch(new RegExp(`^\\s*last drill: OK \\(passed \\d+ s ago on backup ${backupId}, RTO ${result.rto_seconds} s, within drill_max_age 1 day\\)`, 'm'));
  });

  it('runs without the service too (reading the catalog, locking it only to record), and to a target time', async () => {
    const before = await cluster.psql('select clock_timestamp()');
    await cluster.psql('insert into orders select g, \'later\' from generate_series(100001, 100500) g');
    await cluster.waitArchived(await cluster.switchWal());
    expect(await receiver.stop()).toBe(0);
    try {
      const { r, result } = await drill(backupId, '--target-time', before.replace(' ', 'T'));
      expectSuccess(r);
      expect(result.passed).toBe(true);
      expect(result.checks.find((c) => c.name === 'restore')!.detail).toMatch(/target: time /);
      // recovered to before the later rows
      expect(result.checks.find((c) => c.name === 'drill_query')!.detail).toBe(`in postgres: ${rows.replace('|', ', ')}`);
      const status = await receiverStatus(receiver, 'main') as unknown as { drill: { at: string } };
      expect(status.drill.at).toBe(result.at);
    } finally {
      await receiver.start();
    }
    // to the end of WAL (the default), the later rows are there
    const { result } = await drill();
    expect(result.checks.find((c) => c.name === 'drill_query')!.detail).toBe(`in postgres: ${(await cluster.psql('select count(*), sum(id) from orders')).replace('|', ', ')}`);
  });

  it('fails on a backup with one damaged data file and names it by its path in the data directory', async () => {
    const file = await cluster.psql("select pg_relation_filepath('orders')");
    expect(file).toMatch(/^base\/\d+\/\d+$/);
    // where the catalog keeps the table's bytes (a bundle member, or an object of its own)
    const where = storedFileOf(receiver, 'main', backupId, file);
    const stored = where.file;
    const bytes = readFileSync(stored);
    const original = Buffer.from(bytes);
    const at = where.offset + Math.min(4096 + 100, where.length - 1);
    bytes[at] = bytes[at]! ^ 0xff;
    writeFileSync(stored, bytes);
    try {
      const { r, result } = await drill(backupId);
      expect(r.code, describeRun(r)).toBe(1);
      expect(r.stderr).toMatch(/ERROR \[DRILL_FAILED\]: .*/);
      expect(result).toMatchObject({ backup_id: backupId, passed: false, rto_seconds: null });
      expect(result.error).toContain(file);
      expect(result.checks.at(-1)).toMatchObject({ name: 'restore', ok: false });
      expect(result.checks.at(-1)!.detail).toMatch(new RegExp(`${file} in the catalog does not match its manifest`));
      expect(scratchDirs()).toEqual([]);

      // the failure is on record: status, list-backups, check (a warning for Nagios)
      const status = await receiverStatus(receiver, 'main') as unknown as { drill: { passed: boolean } };
      expect(status.drill.passed).toBe(false);
      const list = await runReceiverCli(['list-backups', ...conf(), 'main']);
      expect(list.stdout).toMatch(new RegExp(`^main - ${backupId} - .* - DRILL FAILED \\(`, 'm'));
      const check = await runReceiverCli(['check', ...conf(), 'main']);
      expect(check.code).toBe(1);
      expect(check.stdout).toMatch(new RegExp(`^\\s*last drill: FAILED \\(the last drill, \\d+ s ago on backup ${backupId}, FAILED: restore: .*${file}`, 'm'));
      const nagios = await runReceiverCli(['check', ...conf(), 'main', '--nagios']);
      expect(nagios.code, describeRun(nagios)).toBe(1);
      expect(nagios.stdout).toMatch(/^BARMAN WARNING - server main: 1 of \d+ checks failed: last drill \(last drill: /);
    } finally {
      writeFileSync(stored, original);
    }
    const again = await drill(backupId);
    expect(again.result.passed).toBe(true);
  });

  it('fails, naming the check, on binaries that cannot start the backup (pg_bindir) and on a drill_query that errors', async () => {
    expect(await receiver.stop()).toBe(0);
    try {
      const noBinaries = await runReceiverCli(['drill', '-c', receiver.configVariant({ main: { pg_bindir: '/nonexistent/bin' } }), 'main', '--json']);
      expect(noBinaries.code, describeRun(noBinaries)).toBe(1);
      const nb = JSON.parse(noBinaries.stdout) as DrillJson;
      expect(nb.checks).toEqual([{ name: 'binaries', ok: false, detail: 'pg_bindir = /nonexistent/bin: no PostgreSQL server (postgres) runs from that folder' }]);
      expect(nb.error).toBe('binaries: pg_bindir = /nonexistent/bin: no PostgreSQL server (postgres) runs from that folder');

      const badQuery = await runReceiverCli(['drill', '-c', receiver.configVariant({ main: { drill_query: 'select count(*) from no_such_table' } }), 'main', '--json']);
      expect(badQuery.code, describeRun(badQuery)).toBe(1);
      const bq = JSON.parse(badQuery.stdout) as DrillJson;
      expect(bq.checks.map((c) => [c.name, c.ok])).toEqual([['binaries', true], ['restore', true], ['recovery', true], ['pg_amcheck', true], ['drill_query', false]]);
      expect(bq.error).toBe('drill_query: in postgres: relation "no_such_table" does not exist');
      expect(scratchDirs()).toEqual([]);
    } finally {
      await receiver.start();
    }
  });

  it('cleans up after a drill whose service was killed: the next drill stops the copy left running and removes its scratch directory', async () => {
    receiver.rewriteConfig({ main: { drill_query: 'select pg_sleep(600)' } });
    await receiver.restart();
    const running = runReceiverCli(['drill', ...conf(), 'main', '--json']);
    let orphan = 0;
    try {
      const pidFile = await waitFor('the drill\'s copy to be running', () => {
        const dir = scratchDirs()[0];
        const path = dir && join(tmpdir(), dir, 'pgdata', 'postmaster.pid');
        return path && existsSync(path) ? path : false;
      }, { timeoutMs: 60_000, intervalMs: 100 });
      orphan = Number(readFileSync(pidFile, 'utf8').split('\n')[0]);
      await receiver.kill();
      expect((await running).code).toBe(1);
      // left behind: the scratch directory, and the copy, still running
      expect(scratchDirs()).toHaveLength(1);
      expect(existsSync(`/proc/${orphan}`)).toBe(true);

      receiver.rewriteConfig({ main: { drill_query: 'select count(*), sum(id) from orders' } });
      await receiver.start();
      const { r, result } = await drill();
      expectSuccess(r);
      expect(result.passed).toBe(true);
      expect(existsSync(`/proc/${orphan}`) && !readFileSync(`/proc/${orphan}/stat`, 'utf8').includes(') Z ')).toBe(false);
      expect(scratchDirs()).toEqual([]);
      expect(receiver.logs()).toMatch(/a restored copy left running by an earlier drill: stopping it/);
    } finally {
      if (orphan && existsSync(`/proc/${orphan}`)) process.kill(orphan, 'SIGKILL');
      if (!receiver.running) await receiver.start();
    }
  });
});
