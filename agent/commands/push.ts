// `barman-agent push <path>`: the archive_command. Exit 0 only once the receiver holds the file
// durably with a matching checksum; any failure exits non-zero so PostgreSQL keeps the file and
// retries.

import { promises as fs } from 'node:fs';
import { basename, resolve } from 'node:path';
import type { AgentConfig } from '../../shared/config/agent';
import { BarmanError, ErrorCode } from '../../shared/errors';
import { isSegmentName, parseWalFileName } from '../../shared/wal/names';
import { sha256File, sha256Handle } from '../../shared/checksum';
import { fileSource, PACK_MAX, packFile, wireCompressor } from '../../shared/protocol/chunks';
import { AgentConnection, localFileError, type PutOptions } from '../../shared/protocol/client';
import { checkSpooled } from '../wal/prefetch';
import { AckSpool } from '../wal/spool';

export async function pushWal(config: AgentConfig, path: string): Promise<'stored' | 'duplicate'> {
  const name = basename(path);
  const parsed = parseWalFileName(name);
  if (!parsed) {
    throw new BarmanError(ErrorCode.INVALID_NAME, `"${name}" is not a WAL segment, .history or .backup file name`, 'Set archive_command = \'barman-agent push %p\'; PostgreSQL then passes the right path.', { exitCode: 1 });
  }
  // the daemon may have pushed it already: its ack names the bytes the receiver confirmed, for
  // this server on this receiver (the launcher answers from it without Node where the file's
  // identity proves it unchanged; here the bytes are hashed and compared)
  const acked = await new AckSpool(config.spoolDir).lookup(name);
  if (acked && acked.server === config.server && acked.receiver === config.receiver.href) {
    // a segment's bytes must also be the segment its name says (page header), as the receiver would check
    if (parsed.kind === 'segment') {
      if ((await checkSpooled(resolve(path), name, acked.sha256).catch(() => 'unreadable')) === undefined) return 'duplicate';
    } else {
      const local = await sha256File(resolve(path)).catch(() => undefined);
      if (local && local.sha256 === acked.sha256 && local.size === acked.size) return 'duplicate';
    }
  }
  const fh = await fs.open(resolve(path), 'r').catch((err: unknown) => {
    throw localFileError(path, err);
  });
  try {
    // the file is read while the connection is set up: hashed (the put declares the checksum) and,
    // a segment, compressed as receivers store WAL by default, in the same pass (putOpened sends
    // those frames where the receiver says it takes them, and reads the file again where not)
    const compress = isSegmentName(name) && (await fh.stat()).size <= PACK_MAX ? wireCompressor('zstd') : undefined;
    const reading: Promise<PutOptions> = compress ? packFile(fileSource(fh, 0), compress, 'zstd').then((packed) => ({ packed })) : sha256Handle(fh).then((walSha256) => ({ walSha256 }));
    reading.catch(() => undefined);
    const conn = await AgentConnection.open(config, 'push');
    try {
      const ack = await conn.putOpened({ kind: 'wal', name }, fh, resolve(path), await reading);
      if (ack.status === 'sent') throw new BarmanError(ErrorCode.PROTOCOL, 'receiver answered a push with "sent"', 'Install the same barman-ts version on agent and receiver.');
      return ack.status;
    } finally {
      conn.close();
    }
  } finally {
    await fh.close();
  }
}
