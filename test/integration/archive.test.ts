// A DBA's day with barman-ts: PostgreSQL archives through `barman-agent push`, the receiver keeps
// every segment byte for byte, and both sides hand the WAL back (agent get-wal as the
// restore_command, receiver get-wal on the backup host). A promoted copy's timeline history goes
// the same way. Then the backup host's everyday commands: check, list-servers, show-server, and
// Barman's `barman ...` forms.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  agentCommandLine, cloneCluster, type Cluster, createCluster, describeRun, expectCatalogMatchesCluster, expectSuccess, listDir, makeDir, type Receiver, runAgent,
  runReceiverCli, sha256Of, sha256OfBytes, startReceiver,
} from '../harness';

const DESCRIPTION = 'Main PostgreSQL server';

describe("a DBA's day: WAL archiving through the agent", () => {
  let receiver: Receiver;
  let cluster: Cluster;
  let agentConf: string;
  /** the segments the test completed with pg_switch_wal, in order */
  const switched: string[] = [];

  beforeAll(async () => {
    receiver = await startReceiver({ servers: [{ name: 'main', description: DESCRIPTION }] });
    // wal_keep_size keeps every segment in pg_wal, so the catalog can be compared with PostgreSQL's own files
    cluster = await createCluster({ name: 'main', archive: true, agentConfig: { receiver, server: 'main' }, extraConf: { wal_keep_size: '1GB' } });
    agentConf = cluster.agentConfigPath!;
    await cluster.start();
  });

  it('agent check finds the receiver, the token and the PostgreSQL settings in order', async () => {
    const r = await runAgent(['check', '-c', agentConf]);
    expectSuccess(r);
    for (const name of ['configuration', 'receiver', 'PostgreSQL connection', 'wal_level', 'archive_mode', 'archive_command']) {
      expect(r.stdout, describeRun(r)).toMatch(new RegExp(`^\\s*${name}: OK`, 'm'));
    }
    expect(r.stdout).not.toMatch(/FAILED/);
  });

  it('archives every segment PostgreSQL completes, byte for byte', async () => {
    await cluster.psql('create table orders (id int primary key, note text); insert into orders select g, md5(g::text) from generate_series(1, 20000) g;');
    for (let batch = 1; batch <= 12; batch++) {
      await cluster.psql(`insert into orders select g, 'batch ${batch}' from generate_series(${batch * 100_000}, ${batch * 100_000 + 999}) g`);
      switched.push(await cluster.switchWal());
    }
    expect(new Set(switched).size).toBe(12);

    await cluster.waitArchived(switched);
    const stats = await cluster.waitArchiverIdle();
    expect(stats.failedCount).toBe(0);
    expect(stats.lastArchivedWal).toBe(switched.at(-1));

    // what PostgreSQL counts as archived is exactly what the catalog holds, byte for byte
    const catalog = await expectCatalogMatchesCluster(receiver, 'main', cluster);
    expect(catalog.length).toBe(stats.archivedCount);
    expect(catalog).toEqual(expect.arrayContaining(switched));
    // nothing left half-way
    expect(receiver.tempFiles('main')).toEqual([]);
    expect(listDir(join(receiver.serverDir('main'), 'errors'))).toEqual([]);
  });

  it('gives every segment back through `barman-agent get-wal` (restore_command), as postgres', async () => {
    const restoreDir = makeDir(join(cluster.dir, 'restore'), 'postgres', 0o700);
    for (const name of switched) {
      const dest = join(restoreDir, 'RECOVERYXLOG');
      const r = await runAgent(['get-wal', '-c', agentConf, name, dest]);
      expectSuccess(r);
      expect(await sha256Of(dest), name).toBe(await sha256Of(cluster.walFile(name)));
    }
    // PostgreSQL asks for files that do not exist as a matter of course: exit 1, quietly
    const missing = await runAgent(['get-wal', '-c', agentConf, '000000010000000A00000000', join(restoreDir, 'RECOVERYXLOG.missing')]);
    expect(missing.code, describeRun(missing)).toBe(1);
    expect(missing.stderr, describeRun(missing)).toBe('');
    expect(listDir(restoreDir)).toEqual(['RECOVERYXLOG']);
  });

  it('prints a segment\'s plain bytes with `barman-receiver get-wal main SEG`', async () => {
    for (const name of [switched[0]!, switched.at(-1)!]) {
      const r = await runReceiverCli(['get-wal', '-c', receiver.configPath, 'main', name]);
      expectSuccess(r);
      expect(r.stdoutBytes.length).toBe(16 * 1024 * 1024);
      expect(sha256OfBytes(r.stdoutBytes), name).toBe(await sha256Of(cluster.walFile(name)));
    }
    const outDir = makeDir(join(receiver.dir, 'out'), 'root');
    const name = switched[5]!;
    expectSuccess(await runReceiverCli(['get-wal', '-c', receiver.configPath, 'main', name, '--output-dir', outDir]));
    expect(await sha256Of(join(outDir, name))).toBe(await sha256Of(cluster.walFile(name)));
    expect(listDir(outDir)).toEqual([name]);
  });

  it('archives the timeline history of a promoted copy and gives it back', async () => {
    const rows = await cluster.psql('select count(*) from orders');
    // a copy that recovers from the catalog (restore_command = the agent) and is then promoted
    const copy = await cloneCluster(cluster, {
      name: 'promoted',
      walMethod: 'none',
      signal: 'standby',
      extraConf: { restore_command: agentCommandLine(agentConf, 'get-wal %f %p') },
    });
    await copy.start();
    expect(await copy.psql('select count(*) from orders')).toBe(rows);
    await copy.promote();
    expect(await copy.psql('select pg_walfile_name(pg_current_wal_lsn())')).toMatch(/^00000002/);
    const history = copy.walFile('00000002.history');
    expect(readFileSync(history, 'utf8')).toMatch(/^1\t[0-9A-F]+\/[0-9A-F]+\t/);

    const push = await runAgent(['push', '-c', agentConf, history]);
    expectSuccess(push);
    expect(receiver.walSha256('main', '00000002.history')).toBe(await sha256Of(history));
    // PostgreSQL retries a push it did not see acknowledged: the same bytes again are a success
    expectSuccess(await runAgent(['push', '-c', agentConf, history]));

    const dest = join(makeDir(join(copy.dir, 'restore'), 'postgres', 0o700), 'RECOVERYHISTORY');
    expectSuccess(await runAgent(['get-wal', '-c', agentConf, '00000002.history', dest]));
    expect(await sha256Of(dest)).toBe(await sha256Of(history));
    const fromReceiver = await runReceiverCli(['get-wal', '-c', receiver.configPath, 'main', '00000002.history']);
    expectSuccess(fromReceiver);
    expect(fromReceiver.stdout).toBe(readFileSync(history, 'utf8'));
  });

  it('answers the backup host\'s everyday commands', async () => {
    const conf = ['-c', receiver.configPath];
    const check = await runReceiverCli(['check', ...conf, 'main']);
    expectSuccess(check);
    expect(check.stdout).toMatch(/^\s*configuration: OK/m);
    expect(check.stdout).toMatch(new RegExp(`^\\s*storage: OK \\(posix: ${receiver.barmanHome}\\)`, 'm'));
    expect(check.stdout).toMatch(/^\s*WAL archive: OK \(last [0-9A-F]{24}/m);
    expect(check.stdout).toMatch(/^\s*minimum redundancy requirements: OK \(have 0 backups, expected at least 0\)/m);
    expect(check.stdout).not.toMatch(/FAILED/);

    for (const args of [['list-servers', ...conf], ['list', ...conf]]) {
      const r = await runReceiverCli(args);
      expectSuccess(r);
      expect(r.stdout).toBe(`main - ${DESCRIPTION}\n`);
    }
    const listJson = await runReceiverCli(['list-servers', ...conf, '--json']);
    expect(JSON.parse(listJson.stdout)).toEqual([{ name: 'main', description: DESCRIPTION }]);

    const walsDirectory = join(receiver.barmanHome, 'main', 'wals');
    for (const args of [['show-server', ...conf, 'main'], ['server', 'show', 'main', ...conf]]) {
      const r = await runReceiverCli(args);
      expectSuccess(r);
      expect(r.stdout).toContain(`wals_directory: ${walsDirectory}\n`);
    }
    const showJson = await runReceiverCli(['show-server', ...conf, 'main', '--json']);
    expect(JSON.parse(showJson.stdout)).toMatchObject({ wals_directory: walsDirectory, storage: 'posix', compression: 'zstd' });

    // Barman's forms, as `barman` (the same bundle)
    const seedList = await runReceiverCli(['list', ...conf]);
    expect(seedList.stdout).toBe(`main - ${DESCRIPTION}\n`);
    const seedCheck = await runReceiverCli(['server', 'check', 'main', ...conf]);
    expectSuccess(seedCheck);
    expect(seedCheck.stdout).toMatch(/^\s*WAL archive: OK/m);
    const checkJson = await runReceiverCli(['check', ...conf, 'main', '--json']);
    expectSuccess(checkJson);
    expect(JSON.parse(checkJson.stdout)).toMatchObject({ server: 'main', ok: true });
  });
});
