// `list-servers` and `show-server`.

import type { ReceiverConfig, ServerConfig } from '../../shared/config/receiver';
import { formatRetentionPolicy } from '../../shared/config/retention';
import { BarmanError, ErrorCode } from '../../shared/errors';
import { ServerCatalog } from '../catalog/catalog';

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
  const catalog = new ServerCatalog(config.barmanHome, server.name);
  return {
    name: server.name,
    description: server.description,
    barman_home: config.barmanHome,
    server_directory: catalog.root,
    wals_directory: catalog.walsDir,
    basebackups_directory: catalog.baseDir,
    streaming_wals_directory: catalog.streamingDir,
    incoming_wals_directory: catalog.incomingDir,
    errors_directory: catalog.errorsDir,
    compression: config.compression,
    retention_policy: server.retentionPolicy ? formatRetentionPolicy(server.retentionPolicy) : 'none',
    minimum_redundancy: server.minimumRedundancy,
    listen: `${config.listen.host}:${config.listen.port}`,
    tls: Boolean(config.tls),
  };
}
