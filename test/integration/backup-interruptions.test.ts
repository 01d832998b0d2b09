// A DBA's worse day: a backup cut short because the agent died, then because the backup host's
// service died, each in the middle of sending files. The catalog must say FAILED (never list the
// backup as usable), keep nothing half-written under a final name, and take the next backup as if
// nothing happened. Then a backup taken while pgbench writes flat out, recovered to the end of the
// archive: the copy holds exactly what the source held at its final marker row.

import { existsSync, promises as fs } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  type Cluster, createCluster, describeRun, expectFailure, expectSuccess, listDir, pgBin, type Receiver, runAgent, runOk, runReceiverCli,
  startReceiver, waitFor,
} from '../harness';
import { backupAndWait, listBackupsJson, recoverInto, showBackupJson, waitBackupStatus } from '../harness/backups';
import { startAgentInBackground, startBackground, startRecovered, verifyRecoveredDirectory } from '../harness/recovered';

/** How many files are below `dir` (recursively); 0 when it does not exist. */
async function fileCount(dir: string): Promise<number> {
  let n = 0;
  for (const entry of await fs.readdir(dir, { withFileTypes: true, recursive: true }).catch(() => [])) if (entry.isFile()) n++;
  return n;
}

describe("a DBA's worse day: backups cut short, and a backup under load", () => {
  let receiver: Receiver;
  let cluster: Cluster;
  let base: string;

  /** Starts `barman-agent backup` and returns once its files are arriving on the backup host (mid-transfer). */
  const startBackupAndWaitForFiles = async () => {
    const agent = startAgentInBackground(['backup', '-c', cluster.agentConfigPath!]);
    const id = await waitFor('backup files to arrive in base/<id>/data/ or bundles/', async () => {
      if (!agent.running) throw new Error(`barman-agent backup exited early:\n${agent.output()}`);
      // a backup still sending: files under data/ or bundles/, no manifest yet (a FAILED one has neither)
      for (const d of listDir(base).filter((d) => /^\d{8}T\d{6}$/.test(d) && !existsSync(join(base, d, 'backup_manifest')))) {
        if ((await fileCount(join(base, d, 'data'))) + (await fileCount(join(base, d, 'bundles'))) > 0) return d;
      }
      return false;
    }, { intervalMs: 20 });
    // still being sent: no manifest yet, and the backup is not offered as complete
    expect(existsSync(join(base, id, 'backup_manifest'))).toBe(false);
    expect((await showBackupJson(receiver, 'main', id)).status).toBe('STARTED');
    return { agent, id };
  };

  /** What the catalog keeps of a FAILED backup: its backup.info, and no file of it anywhere (nor a temporary one). */
  const expectFailedAndTidy = async (id: string, reason: RegExp) => {
    const info = await showBackupJson(receiver, 'main', id);
    expect(info.status).toBe('FAILED');
    expect(info.error).toMatch(reason);
    expect(listDir(join(base, id))).toEqual(['backup.info']);
    expect(receiver.tempFiles('main').filter((f) => f.includes(id))).toEqual([]);
    const list = await runReceiverCli(['list-backups', '-c', receiver.configPath, 'main']);
    expect(list.stdout, describeRun(list)).toMatch(new RegExp(`^main - ${id} - .* - FAILED`, 'm'));
    // never offered for recovery
    const recovery = await recoverInto(receiver, 'main', id);
    expectFailure(recovery.result, 1, new RegExp(`backup ${id} is FAILED`));
    expect(existsSync(recovery.dest)).toBe(false);
  };

  beforeAll(async () => {
    receiver = await startReceiver({ servers: [{ name: 'main' }] });
    base = join(receiver.serverDir('main'), 'base');
    cluster = await createCluster({ name: 'main', archive: true, agentConfig: { receiver, server: 'main' } });
    await cluster.start();
    // big enough (~160 MB) that a backup is still sending files when the test pulls the plug
    await runOk(pgBin('pgbench'), ['-i', '-s', '10', '-q', '-h', cluster.socketDir, '-p', String(cluster.port), 'postgres'], { asPostgres: true });
    await cluster.psql('create table marker (id int primary key, note text not null, at timestamptz not null default clock_timestamp())');
  });

  it('a backup whose agent is killed half-way is FAILED, and the next one is DONE', async () => {
    const { agent, id } = await startBackupAndWaitForFiles();
    agent.signal('SIGKILL');
    await agent.exited;
    // the receiver sees the connection drop and gives the backup up
    await waitBackupStatus(receiver, 'main', id, 'FAILED');
    await expectFailedAndTidy(id, /agent connection was lost/);
    expect((await listBackupsJson(receiver, 'main')).filter((b) => b.status === 'DONE')).toEqual([]);

    // PostgreSQL is not left in backup mode and the catalog takes the next backup
    const next = await backupAndWait(receiver, 'main', cluster);
    expect(next > id).toBe(true);
    expectSuccess(await runReceiverCli(['verify-backup', '-c', receiver.configPath, 'main', next]));
    expect((await showBackupJson(receiver, 'main', 'latest')).backup_id).toBe(next);
  });

  it('a backup whose receiver is killed half-way is FAILED once the receiver is back, and the next one is DONE', async () => {
    const { agent, id } = await startBackupAndWaitForFiles();
    await receiver.kill();
    // the agent notices and says so, in the usual two lines
    await waitFor('barman-agent backup to give up', () => !agent.running);
    const ended = await agent.exited;
    expect(ended.code, agent.output()).toBe(1);
    expect(agent.output()).toMatch(/^ERROR \[[A-Z_]+\]: \S.*$/m);
    expect(agent.output()).toMatch(/^HINT: \S.*$/m);

    await receiver.start();
    await expectFailedAndTidy(id, /receiver stopped while the backup was running/);

    const next = await backupAndWait(receiver, 'main', cluster);
    expect(next > id).toBe(true);
    expectSuccess(await runReceiverCli(['verify-backup', '-c', receiver.configPath, 'main', next]));
  });

  it('a backup taken while pgbench writes recovers to exactly the data of the final marker row', async () => {
    const history = async () => Number(await cluster.psql('select count(*) from pgbench_history'));
    const bench = startBackground(pgBin('pgbench'), ['-n', '-c', '2', '-j', '2', '-T', '600', '-h', cluster.socketDir, '-p', String(cluster.port), 'postgres']);
    await waitFor('pgbench to be writing', async () => {
      if (!bench.running) throw new Error(`pgbench exited:\n${bench.output()}`);
      return (await history()) > 0;
    });
    const beforeBackup = await history();
    const taken = await runAgent(['backup', '-c', cluster.agentConfigPath!]);
    expectSuccess(taken);
    const backup = taken.stdout.trim();
    const afterBackup = await history();
    expect(afterBackup, 'pgbench transactions committed while the backup ran').toBeGreaterThan(beforeBackup);
    await bench.stop('SIGTERM');
    await waitFor('pgbench sessions to end', async () => (await cluster.psql("select count(*) from pg_stat_activity where application_name = 'pgbench'")) === '0');

    await cluster.psql("insert into marker (id, note) values (1, 'the last thing written')");
    const snapshot = "select (select count(*) || '/' || coalesce(sum(delta), 0) from pgbench_history), (select sum(abalance) from pgbench_accounts), " +
      '(select sum(bbalance) from pgbench_branches), (select sum(tbalance) from pgbench_tellers), (select string_agg(note, \',\') from marker)';
    const atMarker = await cluster.psql(snapshot);
    await cluster.waitArchived(await cluster.switchWal());
    await waitBackupStatus(receiver, 'main', backup, 'DONE', cluster);

    const recovery = await recoverInto(receiver, 'main', 'latest');
    expectSuccess(recovery.result);
    expect(recovery.result.stdout).toContain(`Recovered backup ${backup} of main`);
    const verified = await verifyRecoveredDirectory(recovery.dest);
    expect(verified.code, describeRun(verified)).toBe(0);
    const copy = await startRecovered(recovery.dest, recovery.dir);
    await copy.waitPromoted();
    expect(await copy.psql(snapshot)).toBe(atMarker);
  });
});
