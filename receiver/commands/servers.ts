// `list-servers` and `show-server`.

import type { ReceiverConfig, ServerConfig } from '../../shared/config/receiver';
import { join } from 'node:path';
import { formatRetentionPolicy } from '../../shared/config/retention';
import { BarmanError, ErrorCode } from '../../shared/errors';
import { CatalogLayout } from '../catalog/layout';

export function requireServer(config: ReceiverConfig, name: string): ServerConfig {
  const server = config.servers.get(name);
  if (!server) {
    const known = [...config.servers.keys()];
    throw new BarmanError(ErrorCode.UNKNOWN_SERVER, `no server named "${name}" in ${config.file}`, known.length ? `Known servers: ${known.join(', ')}.` : `Add a [${name}] section to ${config.file}.`);
  }
  return server;
}

export function listServers(config: ReceiverConfig): Array<{ name: string; description: string }> {
  return [...config.servers.values()].map((s) => ({ name: s.name, description: s.description }));
}

export function showServer(config: ReceiverConfig, name: string): Record<string, string | number | boolean> {
  const server = requireServer(config, name);
  const layout = new CatalogLayout(server.name);
  const storage = config.storage;
  // where the catalog's parts are: directories under barman_home, or prefixes in the bucket
  const at = (prefix: string) => (storage.kind === 'posix' ? join(config.barmanHome, prefix).replace(/\/$/, '') : `s3://${storage.bucket}/${storage.prefix}${prefix}`);
  return {
    name: server.name,
    description: server.description,
    barman_home: config.barmanHome,
    storage: storage.kind,
    ...(storage.kind === 's3' ? { s3_endpoint: storage.endpoint ?? '', s3_bucket: storage.bucket, s3_prefix: storage.prefix } : {}),
    server_directory: at(layout.root),
    wals_directory: at(layout.walPrefix),
    basebackups_directory: at(layout.backupsPrefix),
    streaming_wals_directory: layout.streamingDir(config.barmanHome),
    errors_directory: at(layout.errorsPrefix),
    compression: server.compression,
    retention_policy: server.retentionPolicy ? formatRetentionPolicy(server.retentionPolicy) : 'none',
    minimum_redundancy: server.minimumRedundancy,
    listen: `${config.listen.host}:${config.listen.port}`,
    tls: Boolean(config.tls),
  };
}
