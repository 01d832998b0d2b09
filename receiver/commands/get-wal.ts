// `barman-receiver get-wal <srv> <name>`: a WAL file's plain bytes on stdout or into a directory.

import { createWriteStream, promises as fs } from 'node:fs';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { ReceiverConfig } from '../../shared/config/receiver';
import { BarmanError, ErrorCode } from '../../shared/errors';
import { parseWalFileName } from '../../shared/wal/names';
import { ServerCatalog } from '../catalog/catalog';
import { openStoredWal } from '../catalog/wal-archive';
import { requireServer } from './servers';

export async function getWalCommand(config: ReceiverConfig, serverName: string, name: string, outputDir: string | undefined): Promise<void> {
  const server = requireServer(config, serverName);
  if (!parseWalFileName(name)) throw new BarmanError(ErrorCode.INVALID_NAME, `"${name}" is not a WAL file name`, 'Give a segment name such as 000000010000000000000003, or a .history / .backup file name.');
  const catalog = new ServerCatalog(config.barmanHome, server.name);
  const stored = await catalog.findWal(name);
  if (!stored) throw new BarmanError(ErrorCode.WAL_NOT_FOUND, `${name} is not in the catalog of ${server.name}`, `List what is there with: ls ${catalog.walsDir}`);
  if (outputDir) {
    const dest = join(outputDir, name);
    const tmp = `${dest}.tmp`;
    await pipeline(openStoredWal(stored), createWriteStream(tmp, { mode: 0o600 }));
    const fh = await fs.open(tmp, 'r+');
    await fh.sync();
    await fh.close();
    await fs.rename(tmp, dest);
  } else {
    await pipeline(openStoredWal(stored), process.stdout);
  }
}
