// `check`, the whole suite, on a server with an agent daemon that streams: it names what is
// missing before the first backup, passes every line on a healthy server with a backup and a
// drill, asks an idle server to switch WAL rather than calling it broken, and names the failing
// check for each of: archive_command wrong, a FAILED backup, a file in errors/, a stale drill,
// too little free space, the agent stopped, the service stopped. `--nagios` says OK, WARNING or
// CRITICAL (exit 0, 1, 2) and names the failed checks; `--json` carries the same.

import { copyFileSync, mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  type AgentDaemon, type Cluster, createCluster, describeRun, expectSuccess, makeTempDir, RawClient, type Receiver, runAgent, runReceiverCli, type RunResult, startDaemon,
  startReceiver, waitStreamCaughtUp,
} from '../harness';
import { chownTo } from '../harness/env';

const HEALTHY = [
  'configuration', 'storage', 'free space', 'agent connected', 'PostgreSQL', 'wal_level', 'archive_mode', 'archive_command', 'WAL archive', 'WAL integrity',
  'WAL streaming', 'replication slot', 'minimum redundancy requirements', 'backup maximum age', 'failed backups', 'system identifier', 'archiver errors', 'last drill',
];

/** The check lines of `check`'s output: name → OK or FAILED and the detail. */
function lines(r: RunResult): Map<string, { ok: boolean; detail: string }> {
  const out = new Map<string, { ok: boolean; detail: string }>();
  for (const m of r.stdout.matchAll(/^\t([^:\n]+): (OK|FAILED)(?: \((.*)\))?$/gm)) out.set(m[1]!, { ok: m[2] === 'OK', detail: m[3] ?? '' });
  return out;
}

const failed = (r: RunResult) => [...lines(r)].filter(([, l]) => !l.ok).map(([name]) => name);

describe('check: everything that must hold for a server to be recoverable', () => {
  let receiver: Receiver;
  let cluster: Cluster;
  let daemon: AgentDaemon;
  const check = (config = receiver.configPath, ...args: string[]) => runReceiverCli(['check', '-c', config, 'main', ...args]);

  beforeAll(async () => {
    receiver = await startReceiver({
      servers: [{ name: 'main', extra: { minimum_redundancy: '1', max_wal_age: '1 hour', last_backup_maximum_age: '1 day', drill_max_age: '1 day', min_free_space: '1MB' } }],
    });
    cluster = await createCluster({ name: 'checked', archive: true, agentConfig: { receiver, server: 'main', extra: { streaming: 'on' } }, extraConf: { wal_keep_size: '1GB' } });
    await cluster.start();
    await cluster.psql('create table t (id int); insert into t select generate_series(1, 1000)');
    daemon = startDaemon(cluster.agentConfigPath!);
    await daemon.waitStreaming();
    await cluster.waitArchived(await cluster.switchWal());
    await waitStreamCaughtUp(receiver, 'main', cluster);
  });

  it('before the first backup, names what is missing: the backup, and the drill that proves it', async () => {
    const r = await check();
    expect(r.code, describeRun(r)).toBe(1);
    expect(failed(r)).toEqual(['minimum redundancy requirements', 'backup maximum age', 'last drill']);
    expect(lines(r).get('backup maximum age')!.detail).toBe('no DONE backup (last_backup_maximum_age 1 day)');
    expect(r.stdout).toMatch(/^HINT: backup maximum age: Take one: barman-receiver backup main --wait/m);
    const nagios = await check(receiver.configPath, '--nagios');
    expect(nagios.code).toBe(2);
    expect(nagios.stdout).toMatch(/^BARMAN CRITICAL - server main: 3 of 18 checks failed: minimum redundancy requirements, backup maximum age, last drill \(minimum redundancy requirements: have 0 backups, expected at least 1\)\n$/);
  });

  it('passes every line on a healthy server with a backup and a drill; --nagios says OK, --json the same', async () => {
    expectSuccess(await runReceiverCli(['backup', '-c', receiver.configPath, 'main', '--wait']));
    expectSuccess(await runReceiverCli(['drill', '-c', receiver.configPath, 'main']));
    await waitStreamCaughtUp(receiver, 'main', cluster);
    const r = await check();
    expectSuccess(r);
    expect([...lines(r)].map(([name, l]) => [name, l.ok])).toEqual(HEALTHY.map((name) => [name, true]));
    const l = lines(r);
    expect(l.get('PostgreSQL')!.detail).toMatch(/^PostgreSQL \d+\.\d+, through the agent daemon$/);
    expect(l.get('archive_command')!.detail).toMatch(/barman-agent.* push %p/);
    expect(l.get('replication slot')!.detail).toMatch(/^barman_main active, restart_lsn [0-9A-F]+\/[0-9A-F]+, wal_status reserved$/);
    expect(l.get('system identifier')!.detail).toBe(`${await cluster.systemIdentifier()}, the server's too`);
    expect(l.get('free space')!.detail).toMatch(/free of .* min_free_space 1\.0 MiB$/);
    const agentCheck = await runAgent(['check', '-c', cluster.agentConfigPath!]);
    expectSuccess(agentCheck);
    expect(agentCheck.stdout).toMatch(/^\s*replication slot: OK \(barman_main active, restart_lsn /m);

    const nagios = await check(receiver.configPath, '--nagios');
    expect(nagios.code).toBe(0);
    expect(nagios.stdout).toBe('BARMAN OK - server main: 18 checks passed\n');
    const json = JSON.parse((await check(receiver.configPath, '--json')).stdout) as { ok: boolean; checks: Array<{ name: string; ok: boolean; severity: string }> };
    expect(json.ok).toBe(true);
    expect(json.checks.map((c) => c.name)).toEqual(HEALTHY);
    expect(json.checks.find((c) => c.name === 'last drill')!.severity).toBe('warning');
    expect(json.checks.find((c) => c.name === 'agent connected')!.severity).toBe('critical');
  });

  it('asks an idle server to switch WAL instead of calling archiving broken', async () => {
    const idle = receiver.configVariant({ main: { max_wal_age: '1s' } });
    await new Promise((r) => setTimeout(r, 1500));
    const before = receiver.segments('main');
    const r = await check(idle);
    expectSuccess(r);
    const detail = lines(r).get('WAL archive')!.detail;
    const m = /^idle: the last WAL, [0-9A-F]{24}, arrived \d+ s ago; asked to switch WAL, PostgreSQL completed ([0-9A-F]{24}) and it was archived [\d.]+ s later$/.exec(detail);
    expect(m, detail).not.toBeNull();
    expect(before).not.toContain(m![1]);
    expect(receiver.segments('main')).toContain(m![1]);
  });

  it('names archive_command when it does not point at the agent (CRITICAL)', async () => {
    const good = await cluster.psql('show archive_command');
    await cluster.psql("alter system set archive_command = '/bin/true'");
    await cluster.reload();
    try {
      const r = await check();
      expect(r.code).toBe(1);
      expect(failed(r)).toEqual(['archive_command']);
      expect(lines(r).get('archive_command')!.detail).toBe('is /bin/true');
      expect(r.stdout).toMatch(/^HINT: archive_command: Set archive_command = 'barman-agent push %p' and reload PostgreSQL\.$/m);
      const nagios = await check(receiver.configPath, '--nagios');
      expect(nagios.code).toBe(2);
      expect(nagios.stdout).toMatch(/^BARMAN CRITICAL - server main: 1 of 18 checks failed: archive_command \(archive_command: is \/bin\/true\)$/m);
    } finally {
      await cluster.psql('alter system reset archive_command');
      await cluster.reload();
    }
    expect(await cluster.psql('show archive_command')).toBe(good);
    expectSuccess(await check());
  });

  it('names a FAILED backup newer than the last DONE one (WARNING), until it is deleted', async () => {
    const agent = await RawClient.authenticated(receiver.url, 'main', receiver.tokens.get('main')!, 'backup');
    const start = { startLsn: await cluster.psql('select pg_current_wal_lsn()'), timeline: 1, startTime: new Date().toISOString(), systemIdentifier: await cluster.systemIdentifier(), pgVersion: Number(await cluster.psql('show server_version_num')), segmentSize: 16 * 1024 * 1024, pgdata: cluster.pgdata, tablespaces: [] };
    agent.send({ type: 'backup-begin', id: 1, start });
    const accepted = await agent.nextFrame();
    if (accepted.type !== 'backup-accepted') throw new Error(JSON.stringify(accepted));
    agent.send({ type: 'backup-abort', id: 2, backupId: accepted.backupId, reason: 'pg_backup_stop failed: the disk of the PostgreSQL host is full' });
    expect((await agent.nextFrame()).type).toBe('backup-status');
    agent.close();

    const r = await check();
    expect(r.code).toBe(1);
    expect(failed(r)).toEqual(['failed backups']);
    expect(lines(r).get('failed backups')!.detail).toMatch(new RegExp(`^backup ${accepted.backupId} FAILED \\(pg_backup_stop failed: the disk of the PostgreSQL host is full\\) after the newest DONE backup, \\d{8}T\\d{6}$`));
    const nagios = await check(receiver.configPath, '--nagios');
    expect(nagios.code).toBe(1);
    expect(nagios.stdout).toMatch(/^BARMAN WARNING - server main: 1 of 18 checks failed: failed backups \(failed backups: backup /m);

    expectSuccess(await runReceiverCli(['delete', '-c', receiver.configPath, 'main', accepted.backupId]));
    expectSuccess(await check());
  });

  it('names a file in errors/ (WARNING) until a DBA moves it to errors/reviewed/', async () => {
    const segment = await cluster.switchWal();
    await cluster.waitArchived(segment);
    const forged = join(makeTempDir('forged', 'postgres', 0o755), segment);
    copyFileSync(cluster.walFile(segment), forged);
    const bytes = readFileSync(forged);
    bytes[30_000] = bytes[30_000]! ^ 0xff;
    writeFileSync(forged, bytes);
    chownTo(forged, 'postgres');
    const push = await runAgent(['push', '-c', cluster.agentConfigPath!, forged]);
    expect(push.code, describeRun(push)).toBe(1);
    const errors = join(receiver.serverDir('main'), 'errors');
    const kept = readdirSync(errors).filter((f) => f.startsWith(segment));
    expect(kept).toHaveLength(1);

    const r = await check();
    expect(r.code).toBe(1);
    expect(failed(r)).toEqual(['archiver errors']);
    expect(lines(r).get('archiver errors')!.detail).toBe(`1 file(s) in ${errors} not dealt with: ${kept[0]} (conflict)`);
    expect(r.stdout).toMatch(new RegExp(`^HINT: archiver errors: .*move it to ${errors}/reviewed`, 'm'));
    expect((await check(receiver.configPath, '--nagios')).stdout).toMatch(/^BARMAN WARNING - server main: 1 of 18 checks failed: archiver errors /);

    mkdirSync(join(errors, 'reviewed'), { recursive: true });
    renameSync(join(errors, kept[0]!), join(errors, 'reviewed', kept[0]!));
    expectSuccess(await check());
  });

  it('names a stale drill (WARNING) and too little free space (CRITICAL)', async () => {
    await new Promise((r) => setTimeout(r, 1100));
    const stale = await check(receiver.configVariant({ main: { drill_max_age: '1s' } }));
    expect(stale.code).toBe(1);
    expect(failed(stale)).toEqual(['last drill']);
    expect(lines(stale).get('last drill')!.detail).toMatch(/^the last drill passed \d+ s ago, more than drill_max_age 1 s$/);
    const nagios = await check(receiver.configVariant({ main: { drill_max_age: '1s' } }), '--nagios');
    expect(nagios.code).toBe(1);
    expect(nagios.stdout).toMatch(/^BARMAN WARNING - server main: 1 of 18 checks failed: last drill \(last drill: the last drill passed \d+ s ago, more than drill_max_age 1 s\)$/m);

    const full = await check(receiver.configVariant({ main: { min_free_space: '99%' } }));
    expect(failed(full)).toEqual(['free space']);
    expect(lines(full).get('free space')!.detail).toMatch(/ free of .*, min_free_space 99% \(/);
  });

  it('names the agent when its daemon is stopped (CRITICAL), and says so clearly when the service is not running', async () => {
    expect(await daemon.stop()).toBe(0);
    try {
      const r = await check();
      expect(r.code).toBe(1);
      expect(failed(r)).toEqual(['agent connected', 'PostgreSQL', 'WAL streaming']);
      expect(lines(r).get('agent connected')!.detail).toMatch(/^no agent daemon is connected \(one first attached \S+ from host \S+\)$/);
      expect(lines(r).get('PostgreSQL')!.detail).toBe('cannot be asked: no agent daemon is connected');
      const nagios = await check(receiver.configPath, '--nagios');
      expect(nagios.code).toBe(2);
      expect(nagios.stdout).toMatch(/^BARMAN CRITICAL - server main: 3 of \d+ checks failed: agent connected, PostgreSQL, WAL streaming \(agent connected: no agent daemon is connected/m);
      // the database host's half still passes: PostgreSQL is fine, the slot waits for the daemon
      const agentCheck = await runAgent(['check', '-c', cluster.agentConfigPath!]);
      expectSuccess(agentCheck);
      expect(agentCheck.stdout).toMatch(/^\s*replication slot: OK \(barman_main not in use now \(no daemon streaming\), restart_lsn /m);

      expect(await receiver.stop()).toBe(0);
      try {
        const down = await check();
        expect(down.code).toBe(1);
        expect(lines(down).get('agent connected')!.detail).toMatch(/^cannot tell: the receiver service is not running \(cannot reach the receiver service: /);
        expect(lines(down).get('PostgreSQL')!.detail).toMatch(/^cannot be asked: the receiver service is not running/);
        expect(down.stdout).toMatch(/^HINT: agent connected: Start it \(barman-receiver serve/m);
      } finally {
        await receiver.start();
      }
    } finally {
      daemon.restart();
      await daemon.waitStreaming(daemon.linesMatching(/^streaming WAL$/).length);
    }
    await waitStreamCaughtUp(receiver, 'main', cluster);
    expectSuccess(await check());
  });
});
