// Backups and recoveries as a DBA drives them: `barman-agent backup` on the PostgreSQL host,
// `list-backups` / `show-backup --json` on the backup host until the backup is DONE, and
// `barman-receiver recover` (as root) into a fresh directory whose parent postgres owns.

import { join } from 'node:path';
import type { BackupJson } from '../../receiver/commands/backups';
import { runAgent, runReceiverCli } from './cli';
import type { Cluster } from './cluster';
import { makeTempDir } from './env';
import { expectSuccess } from './expect';
import type { Receiver } from './receiver';
import { existsSync, readFileSync } from 'node:fs';
import { describeRun, type RunResult } from './run';
import { waitFor } from './wait';

/** What `show-backup --json` / `list-backups --json` print for one backup: its backup.info, keys in snake_case. */
export type { BackupJson };

export async function listBackupsJson(receiver: Receiver, server: string): Promise<BackupJson[]> {
  const r = await runReceiverCli(['list-backups', '-c', receiver.configPath, server, '--json']);
  if (r.code !== 0) throw new Error(`list-backups failed\n${describeRun(r)}`);
  return JSON.parse(r.stdout) as BackupJson[];
}

export async function showBackupJson(receiver: Receiver, server: string, id: string): Promise<BackupJson> {
  const r = await runReceiverCli(['show-backup', '-c', receiver.configPath, server, id, '--json']);
  if (r.code !== 0) throw new Error(`show-backup failed\n${describeRun(r)}`);
  return JSON.parse(r.stdout) as BackupJson;
}

/**
 * Waits until the catalog lists backup `id` with `status`. While waiting, the cluster's archiver
 * is woken now and then (a reload), since after a failed push it sleeps up to a minute.
 */
export async function waitBackupStatus(receiver: Receiver, server: string, id: string, status: BackupJson['status'], cluster?: Pick<Cluster, 'reload'>): Promise<BackupJson> {
  let polls = 0;
  return waitFor(`backup ${id} of ${server} to be ${status}`, async () => {
    const info = (await listBackupsJson(receiver, server)).find((b) => b.backup_id === id);
    if (info?.status === status) return info;
    if (cluster && ++polls % 20 === 0) await cluster.reload();
    if (info && info.status !== status && (info.status === 'DONE' || info.status === 'FAILED')) throw new Error(`backup ${id} ended ${info.status}${info.error ? ` (${info.error})` : ''}`);
    return false;
  }, { timeoutMs: 120_000, intervalMs: 200 });
}

/** `barman-agent backup` on the cluster's host, then waits for DONE; returns the backup ID. */
export async function backupAndWait(receiver: Receiver, server: string, cluster: Cluster): Promise<string> {
  const r = await runAgent(['backup', '-c', cluster.agentConfigPath!]);
  expectSuccess(r);
  const id = r.stdout.trim();
  if (!/^\d{8}T\d{6}$/.test(id)) throw new Error(`barman-agent backup printed no backup ID\n${describeRun(r)}`);
  await waitBackupStatus(receiver, server, id, 'DONE', cluster);
  return id;
}

export interface Recovery {
  /** the recovered data directory */
  dest: string;
  /** its parent (postgres owns it): the recovered cluster's socket folder and log go here */
  dir: string;
  result: RunResult;
}

/** `barman-receiver recover <server> <id> <dest> ...options` as root into <new temp dir>/pgdata (`env`: more environment, e.g. PG_BINDIR). */
export async function recoverInto(receiver: Receiver, server: string, id: string, options: string[] = [], env?: Record<string, string>): Promise<Recovery> {
  const dir = makeTempDir('recovered', 'postgres', 0o755);
  const dest = join(dir, 'pgdata');
  const result = await runReceiverCli(['recover', '-c', receiver.configPath, server, id, dest, ...options], env ? { env } : {});
  return { dest, dir, result };
}

/**
 * Waits until `name` (a WAL file) is in the catalog of `server`; wakes `cluster`'s archiver now
 * and then (after a failure it sleeps up to a minute).
 */
export async function waitInCatalog(receiver: Receiver, server: string, name: string, cluster: { psql(sql: string): Promise<string> }): Promise<void> {
  let polls = 0;
  await waitFor(`${name} in the catalog`, async () => {
    if (existsSync(receiver.walPath(server, name))) return true;
    if (++polls % 20 === 0) await cluster.psql('select pg_reload_conf()');
    return false;
  }, { timeoutMs: 120_000, intervalMs: 100 });
}

/**
 * Where a posix catalog keeps one file of a backup, from the backup's contents.json
 * (docs/catalog.md): the object on disk and the stored bytes that are this file's, all of the
 * object for a file of its own, [offset, offset + length) of it for a bundled one.
 */
export function storedFileOf(receiver: Receiver, server: string, id: string, path: string): { file: string; offset: number; length: number; bundled: boolean } {
  const contents = JSON.parse(readFileSync(join(receiver.serverDir(server), 'base', id, 'contents.json'), 'utf8')) as { files: Record<string, { key: string; size: number; offset?: number; length?: number }> };
  const where = contents.files[path];
  if (!where) throw new Error(`contents.json of backup ${id} has no file ${path}`);
  const file = join(receiver.serverDir(server), '..', where.key);
  if (where.offset === undefined) return { file, offset: 0, length: readFileSync(file).length, bundled: false };
  return { file, offset: where.offset, length: where.length ?? 0, bundled: true };
}
