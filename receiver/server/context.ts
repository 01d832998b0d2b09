// What the receiver holds for each configured PostgreSQL server.

import type { Compression, ServerConfig } from '../../shared/config/receiver';
import { ServerCatalog } from '../catalog/catalog';
import { WalArchive } from '../catalog/wal-archive';

export interface ServerContext {
  config: ServerConfig;
  catalog: ServerCatalog;
  walArchive: WalArchive;
}

export function createServerContext(barmanHome: string, config: ServerConfig, compression: Compression): ServerContext {
  const catalog = new ServerCatalog(barmanHome, config.name);
  return { config, catalog, walArchive: new WalArchive(catalog, compression) };
}
