// Catalog commands that need the running service (backup, status) reach it like an agent would:
// over its own WebSocket, proving themselves with the server's token from the configuration.

import type { ReceiverConfig } from '../../shared/config/receiver';
import { BarmanError } from '../../shared/errors';
import { AgentConnection } from '../../shared/protocol/client';
import { requireServer } from './servers';

export async function openAdmin(config: ReceiverConfig, server: string, timeoutSeconds = 30): Promise<AgentConnection> {
  const s = requireServer(config, server);
  const host = ['0.0.0.0', '::', ''].includes(config.listen.host) ? '127.0.0.1' : config.listen.host;
  const url = new URL(`${config.tls ? 'wss' : 'ws'}://${host.includes(':') ? `[${host}]` : host}:${config.listen.port}`);
  try {
    return await AgentConnection.open({ file: config.file, receiver: url, server: s.name, token: s.token, caFile: config.tls?.cert, timeoutSeconds }, 'admin');
  } catch (err) {
    const e = err as BarmanError;
    throw new BarmanError(e.code, `cannot reach the receiver service: ${e.message}`, 'Start it with barman-receiver serve.');
  }
}
