// `barman-receiver get-wal <srv> <name>`: a WAL file's plain bytes on stdout or into a directory,
// checked against the checksum recorded when it was stored. A damaged file is refused: into a
// directory nothing appears; on stdout the last chunk is held back, so the output is never whole.

import { createWriteStream, promises as fs } from 'node:fs';
import { once } from 'node:events';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReceiverConfig } from '../../shared/config/receiver';
import { BarmanError, ErrorCode } from '../../shared/errors';
import { parseWalFileName } from '../../shared/wal/names';
import { withServer } from '../catalog/open';
import { readStoredWal } from '../catalog/wal-archive';
import { requireServer } from './servers';

export async function getWalCommand(config: ReceiverConfig, serverName: string, name: string, outputDir: string | undefined, warn: (text: string) => void = () => undefined): Promise<void> {
  const server = requireServer(config, serverName);
  if (!parseWalFileName(name)) throw new BarmanError(ErrorCode.INVALID_NAME, `"${name}" is not a WAL file name`, 'Give a segment name such as 000000010000000000000003, or a .history / .backup file name.');
  await withServer(config, server, async ({ catalog }) => {
    const stored = await catalog.findWal(name);
    if (!stored) throw new BarmanError(ErrorCode.WAL_NOT_FOUND, `${name} is not in the catalog of ${server.name}`, `It was never archived, or retention removed it; barman-receiver status ${server.name} shows the last WAL received.`);
    if (stored.sha256 === undefined) warn(`${name} was stored without a checksum (by an older barman-ts) and cannot be verified; barman-receiver cron records one`);
    if (outputDir) {
      const dest = join(outputDir, name);
      const tmp = `${dest}.tmp`;
      try {
        await pipeline(Readable.from(readStoredWal(catalog, stored)), createWriteStream(tmp, { mode: 0o600 }));
        const fh = await fs.open(tmp, 'r+');
        await fh.sync();
        await fh.close();
      } catch (err) {
        await fs.rm(tmp, { force: true });
        throw err;
      }
      await fs.rename(tmp, dest);
    } else {
      // not pipeline(): on a damaged file it would destroy stdout with the error instead of letting it be reported
      for await (const chunk of readStoredWal(catalog, stored)) {
        if (!process.stdout.write(chunk)) await once(process.stdout, 'drain');
      }
    }
  });
}
