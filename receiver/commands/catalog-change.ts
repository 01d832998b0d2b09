// keep, delete, cron and drill from the command line, as the catalog's one writer (receiver/catalog/lock.ts).
// With no serve holding the catalog the command takes the lock and makes the change itself; while
// a serve holds it, the command asks that serve over its admin connection (as `backup` does),
// showing the key serve keeps in barman_home (the server's token alone would let an agent ask too),
// and the serve makes the change under its own lock. Another command holding it is waited for a while.

import type { BackupInfo } from '../../shared/backup/info';
import type { ReceiverConfig } from '../../shared/config/receiver';
import { BarmanError, ErrorCode } from '../../shared/errors';
import type { Frame } from '../../shared/protocol/frames';
import type { ServerCatalog } from '../catalog/catalog';
import { withServer } from '../catalog/open';
import { type CatalogLock, CatalogLockedError, type LockPurpose } from '../catalog/lock';
import { applyCatalogChange, type CatalogChange, type CronReport } from '../catalog/maintenance';
import { openAdmin } from './admin';
import { requireServer } from './servers';

/** how long a command waits for another command (not a serve) that holds the catalog */
const WAIT_FOR_COMMAND_MS = 30_000;

/** Who writes the catalog now: this process (the lock is taken; release it) or the serve that holds it (ask it). */
export type CatalogWriter = { kind: 'here'; lock: CatalogLock } | { kind: 'serve'; locked: CatalogLockedError };

export async function catalogWriter(catalog: ServerCatalog, purpose: LockPurpose): Promise<CatalogWriter> {
  const deadline = Date.now() + WAIT_FOR_COMMAND_MS;
  for (;;) {
    try {
      return { kind: 'here', lock: await catalog.locker().acquire(purpose) };
    } catch (err) {
      if (!(err instanceof CatalogLockedError)) throw err;
      if (err.holder?.purpose === 'serve') return { kind: 'serve', locked: err };
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

export async function changeCatalog(config: ReceiverConfig, serverName: string, change: CatalogChange, now = new Date()): Promise<BackupInfo | CronReport> {
  const server = requireServer(config, serverName);
  return withServer(config, server, async ({ catalog, backups }) => {
    const writer = await catalogWriter(catalog, change.action === 'release' ? 'keep' : change.action);
    if (writer.kind === 'serve') {
      return askServe(config, catalog, writer.locked, (id, key) => ({ type: 'catalog-change', id, action: change.action, backup: change.action === 'cron' ? '' : change.backup, key }));
    }
    return asTheWriter(writer.lock, () => applyCatalogChange(server, backups, { withCommitLock: (fn) => fn() }, change, now));
  });
}

/**
 * Runs `fn` holding `lock`, then releases it. The lock makes this process the only writer (no
 * commits of others to wait for); a lease lost meanwhile (object storage) fails the command.
 */
export async function asTheWriter<T>(lock: CatalogLock, fn: () => Promise<T>): Promise<T> {
  let lost: BarmanError | undefined;
  lock.watch((err) => (lost = err));
  try {
    const result = await fn();
    if (lost) throw lost;
    return result;
  } finally {
    await lock.release();
  }
}

/** The serve that holds the catalog does the work; its answer is the result as a JSON document. */
export async function askServe<T>(config: ReceiverConfig, catalog: ServerCatalog, locked: CatalogLockedError, build: (id: number, key: string) => Frame): Promise<T> {
  let conn;
  try {
    conn = await openAdmin(config, catalog.server, 10);
  } catch (err) {
    const e = err as BarmanError;
    throw new BarmanError(ErrorCode.CATALOG_LOCKED, `${locked.message}, and it cannot be asked to make the change (${e.message})`, `Run the command with the configuration that receiver runs with (its listen = must be reachable from here), or stop it and run the command again.`, { cause: err });
  }
  try {
    const parts: Uint8Array[] = [];
    const key = (await catalog.readChangeKey()) ?? '0'.repeat(64);
    for await (const chunk of conn.fetch((id) => build(id, key))) parts.push(chunk);
    return JSON.parse(Buffer.concat(parts).toString('utf8')) as T;
  } finally {
    conn.close();
  }
}
