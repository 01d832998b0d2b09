// serve keeps each catalog by itself, every housekeeping_interval: retention as `cron` applies it
// (list-backups marks what goes as OBSOLETE beforehand), temporary files a crash left behind,
// and the restore drills drill_schedule asks for, recorded like any other drill.

import { mkdirSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { type Cluster, createCluster, describeRun, expectSuccess, listDir, type Receiver, runReceiverCli, startReceiver, waitFor } from '../harness';
import { backupAndWait, listBackupsJson } from '../harness/backups';
import { receiverStatus } from '../harness/daemon';

describe('serve keeps the catalog on its own', () => {
  let receiver: Receiver;
  let cluster: Cluster;

  beforeAll(async () => {
    receiver = await startReceiver({
      servers: [{ name: 'main', extra: { retention_policy: 'REDUNDANCY 1', drill_schedule: 'daily' } }],
      logLevel: 'debug',
      extra: { housekeeping_interval: '1 hour' },
    });
    cluster = await createCluster({ name: 'kept', archive: true, agentConfig: { receiver, server: 'main' } });
    await cluster.start();
    await cluster.psql('create table t (id int); insert into t select generate_series(1, 1000)');
  });

  it('marks what the retention policy will delete as OBSOLETE, then deletes it, tidies what a crash left and runs the scheduled drill', async () => {
    const first = await backupAndWait(receiver, 'main', cluster);
    const second = await backupAndWait(receiver, 'main', cluster);
    // no housekeeping yet (every hour): the older backup is still there, marked
    const list = await runReceiverCli(['list-backups', '-c', receiver.configPath, 'main']);
    expectSuccess(list);
    expect(list.stdout, describeRun(list)).toMatch(new RegExp(`^main - ${first} - .* - DONE - OBSOLETE$`, 'm'));
    expect(list.stdout).toMatch(new RegExp(`^main - ${second} - .* - DONE$`, 'm'));
    expect((await listBackupsJson(receiver, 'main')).map((b) => [b.backup_id, b.obsolete])).toEqual([[second, false], [first, true]]);
    const shown = await runReceiverCli(['show-backup', '-c', receiver.configPath, 'main', first]);
    expect(shown.stdout).toMatch(/Retention policy\s+: OBSOLETE/);
    // a temporary file a crash left two days ago, beside the key it was being written to
    const segmentDir = join(receiver.serverDir('main'), 'wals', '0000000100000000');
    mkdirSync(segmentDir, { recursive: true });
    const staleName = `.000000010000000000000009-${'ab'.repeat(32)}.zst.abcdef012345.tmp`;
    const stale = join(segmentDir, staleName);
    writeFileSync(stale, 'half a segment');
    const twoDaysAgo = new Date(Date.now() - 2 * 86_400_000);
    utimesSync(stale, twoDaysAgo, twoDaysAgo);
    const rounds = () => receiver.logs().split('\n').filter((l) => l.includes('"msg":"housekeeping done"')).length;
    expect(rounds()).toBe(0);

    // housekeeping every 2 s from the next start
    receiver.rewriteConfig({ barman: { housekeeping_interval: '2s' } });
    await receiver.restart();
    await waitFor('serve to delete the obsolete backup', async () => (await listBackupsJson(receiver, 'main')).length === 1);
    expect((await listBackupsJson(receiver, 'main')).map((b) => [b.backup_id, b.obsolete])).toEqual([[second, false]]);
    // the same round goes on to what crashes left: once it is done, the stale file is gone
    await waitFor('that housekeeping round to be done', () => new RegExp(`"removedBackups":\\["${first}"\\].*"msg":"housekeeping done"`).test(receiver.logs()));
    expect(listDir(segmentDir)).not.toContain(staleName);

    // no drill had run: the schedule wants one now, of the newest backup
    const status = await waitFor('the scheduled drill to be recorded', async () => {
      const s = await receiverStatus(receiver, 'main') as unknown as { drill: { backup_id: string; passed: boolean; rto_seconds: number } | null };
      return s.drill ?? false;
    }, { timeoutMs: 120_000, intervalMs: 500 });
    expect(status).toMatchObject({ backup_id: second, passed: true });
    expect(status.rto_seconds).toBeGreaterThan(0);
    // a day has not passed: later rounds run no other drill
    const after = rounds();
    await waitFor('three more housekeeping rounds', () => rounds() >= after + 3, { timeoutMs: 60_000, intervalMs: 250 });
    expect(receiver.logs().split('\n').filter((l) => l.includes('"msg":"scheduled restore drill starting"'))).toHaveLength(1);
    expect(receiver.logs()).toMatch(/"msg":"scheduled restore drill passed"/);
  });
});
