// keep, delete and cron from the command line, as the catalog's one writer (receiver/catalog/lock.ts).
// With no serve holding the catalog the command takes the lock and makes the change itself; while
// a serve holds it, the command asks that serve over its admin connection (as `backup` does),
// showing the key serve keeps in barman_home (the server's token alone would let an agent ask too),
// and the serve makes the change under its own lock. Another command holding it is waited for a while.

import type { BackupInfo } from '../../shared/backup/info';
import type { ReceiverConfig, ServerConfig } from '../../shared/config/receiver';
import { BarmanError, ErrorCode } from '../../shared/errors';
import { withServer } from '../catalog/open';
import { type CatalogLock, CatalogLockedError, type LockPurpose } from '../catalog/lock';
import { applyCatalogChange, type CatalogChange, type CronReport } from '../catalog/maintenance';
import { openAdmin } from './admin';
import { requireServer } from './servers';

/** how long a command waits for another command (not a serve) that holds the catalog */
const WAIT_FOR_COMMAND_MS = 30_000;

export async function changeCatalog(config: ReceiverConfig, serverName: string, change: CatalogChange, now = new Date()): Promise<BackupInfo | CronReport> {
  const server = requireServer(config, serverName);
  return withServer(config, server, async ({ catalog, backups }) => {
    const purpose: LockPurpose = change.action === 'release' ? 'keep' : change.action;
    const deadline = Date.now() + WAIT_FOR_COMMAND_MS;
    let lock: CatalogLock;
    for (;;) {
      try {
        lock = await catalog.locker().acquire(purpose);
        break;
      } catch (err) {
        if (!(err instanceof CatalogLockedError)) throw err;
        if (err.holder?.purpose === 'serve') return askServe(config, server, change, err, () => catalog.readChangeKey());
        if (Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 250));
      }
    }
    let lost: BarmanError | undefined;
    lock.watch((err) => (lost = err));
    try {
      // the lock makes this process the only writer: no commits of others to wait for
      const result = await applyCatalogChange(server, backups, { withCommitLock: (fn) => fn() }, change, now);
      if (lost) throw lost;
      return result;
    } finally {
      await lock.release();
    }
  });
}

/** The serve that holds the catalog makes the change; its answer is the change's result as JSON. */
async function askServe(config: ReceiverConfig, server: ServerConfig, change: CatalogChange, locked: CatalogLockedError, readKey: () => Promise<string | undefined>): Promise<BackupInfo | CronReport> {
  let conn;
  try {
    conn = await openAdmin(config, server.name, 10);
  } catch (err) {
    const e = err as BarmanError;
    throw new BarmanError(ErrorCode.CATALOG_LOCKED, `${locked.message}, and it cannot be asked to make the change (${e.message})`, `Run the command with the configuration that receiver runs with (its listen = must be reachable from here), or stop it and run the command again.`, { cause: err });
  }
  try {
    const parts: Uint8Array[] = [];
    const key = (await readKey()) ?? '0'.repeat(64);
    for await (const chunk of conn.fetch((id) => ({ type: 'catalog-change', id, action: change.action, backup: change.action === 'cron' ? '' : change.backup, key }))) parts.push(chunk);
    return JSON.parse(Buffer.concat(parts).toString('utf8')) as BackupInfo | CronReport;
  } finally {
    conn.close();
  }
}
