// `barman-agent backup`: take a base backup of the local cluster now and stream it to the receiver.

import type { AgentConfig } from '../../shared/config/agent';
import { type BackupProgress, type BackupResult, takeBackup } from '../backup/backup';
import { AgentConnection } from '../../shared/protocol/client';

export async function backupNow(config: AgentConfig, progress?: BackupProgress): Promise<BackupResult> {
  const conn = await AgentConnection.open(config, 'backup');
  try {
    return await takeBackup(conn, config, undefined, progress);
  } finally {
    conn.close();
  }
}
