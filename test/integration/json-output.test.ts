// What scripts read: every `--json` document of both programs, on a catalog that has WAL and a
// backup, uses one key style, snake_case (`backup_id`, `last_received_at`), at every depth. The
// commands are found in the programs' own --help, so a command that gains --json later is
// walked here too (or this test says it is missing).

import { beforeAll, describe, expect, it } from 'vitest';
import { type Cluster, createCluster, describeRun, type Receiver, runAgent, runReceiverCli, startReceiver } from '../harness';
import { backupAndWait } from '../harness/backups';

const SNAKE = /^[a-z][a-z0-9]*(_[a-z0-9]+)*$/;

/** Every key of a JSON document with its path, at every depth (arrays included). */
function keysOf(value: unknown, path = '$'): Array<{ key: string; path: string }> {
  if (Array.isArray(value)) return value.flatMap((v, i) => keysOf(v, `${path}[${i}]`));
  if (value === null || typeof value !== 'object') return [];
  return Object.entries(value).flatMap(([k, v]) => [{ key: k, path: `${path}.${k}` }, ...keysOf(v, `${path}.${k}`)]);
}

/** The subcommands of a program whose --help offers --json. */
async function commandsWithJson(run: (args: string[]) => ReturnType<typeof runReceiverCli>): Promise<string[]> {
  const help = await run(['--help']);
  const names = [...help.stdout.matchAll(/^ {2}([a-z][a-z-]*)[| ]/gm)].map((m) => m[1]!).filter((n) => n !== 'help');
  expect(names.length, describeRun(help)).toBeGreaterThan(3);
  const withJson: string[] = [];
  for (const name of names) if ((await run([name, '--help'])).stdout.includes('--json')) withJson.push(name);
  return withJson.sort();
}

describe('every --json output speaks snake_case', () => {
  let receiver: Receiver;
  let cluster: Cluster;
  let backupId: string;

  beforeAll(async () => {
    receiver = await startReceiver({ servers: [{ name: 'main', extra: { retention_policy: 'REDUNDANCY 3' } }] });
    cluster = await createCluster({ name: 'main', archive: true, agentConfig: { receiver, server: 'main' } });
    await cluster.start();
    await cluster.psql('create table t (id int); insert into t select generate_series(1, 1000)');
    backupId = await backupAndWait(receiver, 'main', cluster);
  });

  it('in list-servers, show-server, check, status, list-backups, show-backup, verify-backup, cron and drill', async () => {
    const conf = ['-c', receiver.configPath];
    const documents: Record<string, string[]> = {
      'list-servers': ['list-servers', ...conf, '--json'],
      'show-server': ['show-server', ...conf, 'main', '--json'],
      check: ['check', ...conf, 'main', '--json'],
      status: ['status', ...conf, 'main', '--json'],
      'list-backups': ['list-backups', ...conf, 'main', '--json'],
      'show-backup': ['show-backup', ...conf, 'main', backupId, '--json'],
      'verify-backup': ['verify-backup', ...conf, 'main', backupId, '--json'],
      cron: ['cron', ...conf, '--json'],
      drill: ['drill', ...conf, 'main', '--json'],
    };
    expect(await commandsWithJson((args) => runReceiverCli(args))).toEqual(Object.keys(documents).sort());
    // the agent has no --json output today; one that appears must be added here
    expect(await commandsWithJson((args) => runAgent(args))).toEqual([]);

    for (const [command, args] of Object.entries(documents)) {
      const r = await runReceiverCli(args);
      expect(r.code, describeRun(r)).toBe(0);
      const doc = JSON.parse(r.stdout) as unknown;
      const keys = keysOf(doc);
      expect(keys.length, `${command} --json printed no keys`).toBeGreaterThan(0);
      expect(keys.filter((k) => !SNAKE.test(k.key)).map((k) => `${command}: ${k.path}`)).toEqual([]);
    }
  });

  it('names backups by backup_id, and the documents that name one agree on it', async () => {
    const conf = ['-c', receiver.configPath];
    const list = JSON.parse((await runReceiverCli(['list-backups', ...conf, 'main', '--json'])).stdout) as Array<Record<string, unknown>>;
    const show = JSON.parse((await runReceiverCli(['show-backup', ...conf, 'main', 'latest', '--json'])).stdout) as Record<string, unknown>;
    const verify = JSON.parse((await runReceiverCli(['verify-backup', ...conf, 'main', 'latest', '--json'])).stdout) as Record<string, unknown>;
    const status = JSON.parse((await runReceiverCli(['status', ...conf, 'main', '--json'])).stdout) as { backups: { last_id: string } };
    expect(list.map((b) => b.backup_id)).toEqual([backupId]);
    expect(show).toMatchObject({ backup_id: backupId, status: 'DONE' });
    expect(verify).toMatchObject({ backup_id: backupId, ok: true });
    expect(status.backups.last_id).toBe(backupId);
  });
});
