// `barman-agent get-wal <name> <dest>`: the restore_command. A file the receiver does not have
// exits 1 without a word (PostgreSQL asks for files that do not exist as a matter of course).
// A file whose bytes fail their checksum (damaged in the catalog or on the way) leaves nothing at
// <dest> and exits ABORT_RECOVERY: PostgreSQL then stops recovery instead of taking the damaged
// segment for the end of WAL and promoting without the transactions that follow it.

import { basename } from 'node:path';
import type { AgentConfig } from '../../shared/config/agent';
import { BarmanError, ErrorCode, ExitCode } from '../../shared/errors';
import { parseWalFileName } from '../../shared/wal/names';
import { AgentConnection } from '../../shared/protocol/client';

export async function getWal(config: AgentConfig, name: string, dest: string): Promise<boolean> {
  if (!parseWalFileName(name) || basename(name) !== name) {
    throw new BarmanError(ErrorCode.INVALID_NAME, `"${name}" is not a WAL file name`, "Set restore_command = 'barman-agent get-wal %f %p'.");
  }
  const conn = await AgentConnection.open(config, 'get');
  try {
    return await conn.getFile(name, dest);
  } catch (err) {
    if (err instanceof BarmanError && err.code === ErrorCode.CHECKSUM_MISMATCH) {
      throw new BarmanError(err.code, err.message, err.hint, { cause: err, exitCode: ExitCode.ABORT_RECOVERY });
    }
    throw err;
  } finally {
    conn.close();
  }
}
