// One writer per catalog. A second `barman-receiver serve` on the same barman_home (another
// port, another configuration file) is refused at start-up, naming the serve that holds the
// catalog, and the first carries on: the running backup finishes DONE, archiving goes on, so two
// receivers can never both acknowledge different bytes under one WAL name. A serve killed with
// SIGKILL leaves a lock file behind that the next serve takes over. keep, delete and cron work
// while serve runs (they ask it, with a key only the backup host can read: an agent's token is not
// enough) and when it does not (they take the lock themselves).

import { readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  type Cluster, createCluster, describeRun, expectCatalogMatchesCluster, expectFailure, expectSuccess, freePort, listDir, pgBin, RawClient, type Receiver,
  runAgent, runOk, runReceiverCli, startReceiver, waitFor, writeAgentConfig,
} from '../harness';
import { backupAndWait, listBackupsJson, waitBackupStatus } from '../harness/backups';
import { startAgentInBackground } from '../harness/recovered';

describe('one writer per catalog', () => {
  let receiver: Receiver;
  let cluster: Cluster;
  /** a second configuration of the same barman_home, listening on another port */
  let secondConfig: string;
  let secondPort: number;
  const lockFile = () => join(receiver.serverDir('main'), 'catalog.lock');
  const holder = () => JSON.parse(readFileSync(lockFile(), 'utf8')) as { pid: number; host: string; purpose: string };
  /** `serve` with the second configuration: refused at once, or killed after 30 s (a failure) */
  const secondServe = () => runReceiverCli(['serve', '-c', secondConfig], { timeoutMs: 30_000 });

  beforeAll(async () => {
    receiver = await startReceiver({ servers: [{ name: 'main' }] });
    cluster = await createCluster({ name: 'main', archive: true, agentConfig: { receiver, server: 'main' }, extraConf: { wal_keep_size: '1GB' } });
    await cluster.start();
    // big enough (~160 MB) that a backup is still running while a second serve tries to start
    await runOk(pgBin('pgbench'), ['-i', '-s', '10', '-q', '-h', cluster.socketDir, '-p', String(cluster.port), 'postgres'], { asPostgres: true });
    secondPort = await freePort();
    secondConfig = join(receiver.dir, 'barman-second.conf');
    writeFileSync(secondConfig, readFileSync(receiver.configPath, 'utf8').replace(`listen = 127.0.0.1:${receiver.port}`, `listen = 127.0.0.1:${secondPort}`));
  });

  it('refuses a second serve on the same barman_home while the first carries on: its backup is DONE, archiving goes on', async () => {
    expect(holder()).toMatchObject({ pid: receiver.pid, host: hostname(), purpose: 'serve' });
    const backup = startAgentInBackground(['backup', '-c', cluster.agentConfigPath!]);
    const id = await waitFor('a backup in progress', async () => {
      if (!backup.running) throw new Error(`barman-agent backup exited early:\n${backup.output()}`);
      return (await listBackupsJson(receiver, 'main')).find((b) => b.status === 'STARTED')?.backup_id ?? false;
    }, { intervalMs: 20 });

    const second = await secondServe();
    expectFailure(second, 1, new RegExp(`the catalog of server main is in use by barman-receiver serve \\(pid ${receiver.pid} on host ${hostname()}, since [^)]+\\); one writer per catalog`));
    expect(second.stderr).toMatch(new RegExp(`^HINT: Stop the other receiver first \\(kill ${receiver.pid}\\)`, 'm'));

    // the refused serve touched nothing: the backup it would have failed finishes, its staging included
    expect((await backup.exited).code, backup.output()).toBe(0);
    await waitBackupStatus(receiver, 'main', id, 'DONE', cluster);
    expect(receiver.tempFiles('main')).toEqual([]);

    // an agent pointed at the second receiver finds nobody there; the first archives on
    const strayConf = writeAgentConfig({ receiver: { url: `ws://127.0.0.1:${secondPort}`, tokens: receiver.tokens }, server: 'main' });
    expectFailure(await runAgent(['push', '-c', strayConf.path, cluster.walFile(await cluster.switchWal())]), 1, /cannot reach the receiver/);
    await cluster.waitArchived(await cluster.switchWal());
    await expectCatalogMatchesCluster(receiver, 'main', cluster);
    expect(holder().pid).toBe(receiver.pid);
  });

  it('a serve killed with SIGKILL leaves its lock file behind, and the next serve takes it over', async () => {
    const killedPid = receiver.pid;
    await receiver.kill();
    expect(holder()).toMatchObject({ pid: killedPid, purpose: 'serve' });
    await receiver.start();
    expect(holder()).toMatchObject({ pid: receiver.pid, host: hostname(), purpose: 'serve' });
    expect(receiver.pid).not.toBe(killedPid);
    await cluster.waitArchived(await cluster.switchWal());
    // and it is held again: the second configuration is still refused
    expectFailure(await secondServe(), 1, new RegExp(`in use by barman-receiver serve \\(pid ${receiver.pid} `));
  });

  it('keep, delete and cron work while serve runs (serve makes the change) and when it does not (the command takes the lock)', async () => {
    const conf = ['-c', receiver.configPath];
    const [older, newer] = [await backupAndWait(receiver, 'main', cluster), await backupAndWait(receiver, 'main', cluster)];
    const keepOf = async (id: string) => (await listBackupsJson(receiver, 'main')).find((b) => b.backup_id === id)?.keep;

    // while serve runs: the commands ask it, it changes the catalog under its own lock
    const kept = await runReceiverCli(['keep', ...conf, 'main', older]);
    expectSuccess(kept);
    expect(kept.stdout).toBe(`Backup ${older} of main: keep on\n`);
    expect(await keepOf(older)).toBe(true);
    // the server's token opens an admin connection, but an agent holds it too: a change also needs
    // the key serve keeps in barman_home (0600), which only the backup host can read
    expect(statSync(join(receiver.serverDir('main'), 'catalog.key')).mode & 0o777).toBe(0o600);
    const agent = await RawClient.authenticated(receiver.url, 'main', receiver.tokens.get('main')!, 'admin');
    agent.send({ type: 'catalog-change', id: 1, action: 'release', backup: older, key: 'ab'.repeat(32) });
    expect(await agent.nextFrame()).toMatchObject({ type: 'error', id: 1, code: 'AUTH_FAILED' });
    agent.close();
    expect(await keepOf(older)).toBe(true);
    expectFailure(await runReceiverCli(['delete', ...conf, 'main', older]), 1, new RegExp(`backup ${older} is marked keep`));
    expectSuccess(await runReceiverCli(['keep', ...conf, 'main', older, '--release']));
    expect(await keepOf(older)).toBe(false);
    const deleted = await runReceiverCli(['delete', ...conf, 'main', older]);
    expectSuccess(deleted);
    expect(deleted.stdout).toBe(`Deleted backup ${older} of main\n`);
    expect((await listBackupsJson(receiver, 'main')).map((b) => b.backup_id)).not.toContain(older);
    const cron = await runReceiverCli(['cron', ...conf]);
    expectSuccess(cron);
    expect(cron.stdout).toMatch(/^main: removed 0 backup\(s\)/m);
    const asked = receiver.logs().split('\n').filter((l) => l.includes('catalog changed on request')).map((l) => (JSON.parse(l) as { action: string }).action);
    expect(asked).toEqual(['keep', 'release', 'delete', 'cron']);
    expect(holder().pid).toBe(receiver.pid);

    // without serve: the commands take the lock for their run and leave none behind
    expect(await receiver.stop()).toBe(0);
    expect(listDir(receiver.serverDir('main'))).not.toContain('catalog.lock');
    expect(listDir(receiver.serverDir('main'))).not.toContain('catalog.key');
    expectSuccess(await runReceiverCli(['keep', ...conf, 'main', newer]));
    expect(await keepOf(newer)).toBe(true);
    expectFailure(await runReceiverCli(['delete', ...conf, 'main', newer]), 1, new RegExp(`backup ${newer} is marked keep`));
    expectSuccess(await runReceiverCli(['keep', ...conf, 'main', newer, '--release']));
    const offline = await runReceiverCli(['cron', ...conf]);
    expect(offline.code, describeRun(offline)).toBe(0);
    expectSuccess(await runReceiverCli(['delete', ...conf, 'main', newer]));
    expect((await listBackupsJson(receiver, 'main')).map((b) => b.backup_id)).not.toContain(newer);
    expect(listDir(receiver.serverDir('main'))).not.toContain('catalog.lock');
    await receiver.start();
  });

  it('refuses to start over a lock held from another host sharing barman_home, and says how to clear it', async () => {
    await receiver.stop();
    writeFileSync(lockFile(), JSON.stringify({ pid: 4242, host: 'backup-host-2', purpose: 'serve', since: '2026-11-30T10:00:00.000Z' }) + '\n');
    const refused = await runReceiverCli(['serve', '-c', receiver.configPath], { timeoutMs: 30_000 });
    expectFailure(refused, 1, /in use by barman-receiver serve \(pid 4242 on host backup-host-2, since 2026-11-30T10:00:00.000Z\)/);
    expect(refused.stderr).toMatch(new RegExp(`^HINT: .*kill 4242 on backup-host-2.*If that process is gone, remove ${lockFile()}`, 'm'));
    // a command is refused the same way (it cannot ask a serve it cannot reach)
    expectFailure(await runReceiverCli(['cron', '-c', receiver.configPath]), 1, /in use by barman-receiver serve \(pid 4242 on host backup-host-2/);
    rmSync(lockFile());
    await receiver.start();
    expect(holder().pid).toBe(receiver.pid);
  });
});
