// Catalog commands that need the running service (backup, status) reach it like an agent would:
// over its own WebSocket, proving themselves with the server's token from the configuration.

import type { ReceiverConfig } from '../../shared/config/receiver';
import { BarmanError, ErrorCode } from '../../shared/errors';
import { AgentConnection } from '../../shared/protocol/client';
import type { PgProbeFrame, StatusFrame } from '../../shared/protocol/frames';
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

/**
 * What the running service tells an admin command (check): the server's live status, and
 * PostgreSQL as the agent daemon sees it. One connection for all of a command's questions.
 */
export class ServiceLink {
  private constructor(private readonly conn: AgentConnection) {}

  /** The link, or why there is none (the service not running, most often). */
  static async open(config: ReceiverConfig, server: string, timeoutSeconds = 5): Promise<ServiceLink | BarmanError> {
    try {
      return new ServiceLink(await openAdmin(config, server, timeoutSeconds));
    } catch (err) {
      return err instanceof BarmanError ? err : new BarmanError(ErrorCode.RECEIVER_UNREACHABLE, String(err), 'Start it with barman-receiver serve.');
    }
  }

  status(): Promise<StatusFrame> {
    return this.conn.call((id) => ({ type: 'status-request', id }), (f) => (f.type === 'status' ? f : undefined));
  }

  /** PostgreSQL's settings, system identifier and slot, through the daemon; with `switchWal` after a forced WAL switch. */
  probePostgres(switchWal: boolean): Promise<PgProbeFrame> {
    return this.conn.call((id) => ({ type: 'pg-probe-request', id, switchWal }), (f) => (f.type === 'pg-probe' ? f : undefined));
  }

  close(): void {
    this.conn.close();
  }
}
