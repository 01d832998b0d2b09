// The one way into a server's catalog, for the service and for every command: the storage the
// configuration names (opened once per process), and the server's catalog and backups on it.

import { promises as fs } from 'node:fs';
import type { ReceiverConfig, ServerConfig } from '../../shared/config/receiver';
import { openStorage } from '../storage/open';
import type { Storage } from '../storage/storage';
import { BackupCatalog } from './backups';
import { ServerCatalog } from './catalog';

export interface OpenServer {
  config: ServerConfig;
  catalog: ServerCatalog;
  backups: BackupCatalog;
}

/** The catalog storage of this receiver configuration (posix: barman_home; s3: the bucket and prefix). */
export async function openCatalogStorage(config: ReceiverConfig): Promise<Storage> {
  // barman_home holds this host's local state whatever the storage (and the catalog with posix)
  await fs.mkdir(config.barmanHome, { recursive: true, mode: 0o750 }).catch(() => undefined);
  return openStorage(config.storage, config.barmanHome);
}

/** A server's catalog on an open storage. */
export function serverOn(storage: Storage, config: ReceiverConfig, server: ServerConfig): OpenServer {
  const catalog = new ServerCatalog(storage, config.barmanHome, server.name, server.compression);
  return { config: server, catalog, backups: new BackupCatalog(catalog, server.backupChecksum) };
}

/** Runs `fn` with server `server`'s catalog (a configured server: see requireServer), then closes the storage. */
export async function withServer<T>(config: ReceiverConfig, server: ServerConfig, fn: (open: OpenServer) => Promise<T>): Promise<T> {
  const storage = await openCatalogStorage(config);
  try {
    return await fn(serverOn(storage, config, server));
  } finally {
    await storage.close();
  }
}
