// `barman-agent push <path>`: the archive_command. Exit 0 only once the receiver holds the file
// durably with a matching checksum; any failure exits non-zero so PostgreSQL keeps the file and
// retries.

import { basename, resolve } from 'node:path';
import type { AgentConfig } from '../../shared/config/agent';
import { BarmanError, ErrorCode } from '../../shared/errors';
import { parseWalFileName } from '../../shared/wal/names';
import { sha256File } from '../../shared/checksum';
import { AgentConnection } from '../../shared/protocol/client';
import { AckSpool } from '../wal/spool';

export async function pushWal(config: AgentConfig, path: string): Promise<'stored' | 'duplicate'> {
  const name = basename(path);
  const parsed = parseWalFileName(name);
  if (!parsed) {
    throw new BarmanError(ErrorCode.INVALID_NAME, `"${name}" is not a WAL segment, .history or .backup file name`, 'Set archive_command = \'barman-agent push %p\'; PostgreSQL then passes the right path.', { exitCode: 1 });
  }
  // the daemon may have pushed it already: its durable ack names the bytes it sent
  const spool = new AckSpool(config.spoolDir);
  const acked = await spool.lookup(name);
  if (acked) {
    const { sha256 } = await sha256File(resolve(path)).catch(() => ({ sha256: '' }));
    if (sha256 === acked) return 'duplicate';
  }
  const conn = await AgentConnection.open(config, 'push');
  try {
    const ack = (await conn.putFile({ kind: 'wal', name }, resolve(path)))!;
    if (ack.status === 'sent') throw new BarmanError(ErrorCode.PROTOCOL, 'receiver answered a push with "sent"', 'Install the same barman-ts version on agent and receiver.');
    return ack.status;
  } finally {
    conn.close();
  }
}
