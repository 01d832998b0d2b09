// WAL for a recovery: an archived file (checked against its recorded checksum: a damaged one
// stops the recovery), or, for the newest segment, what streaming received of it so far, padded
// with zeros to a whole segment (PostgreSQL restores whole segments only, and reads the zeros as
// the end of WAL).

import { BarmanError, ErrorCode } from '../../shared/errors';
import type { ServerCatalog } from '../catalog/catalog';
import { readStreamedPartial } from '../catalog/streaming';
import { readStoredWal } from '../catalog/wal-archive';

export async function* recoveryWal(catalog: ServerCatalog, name: string): AsyncGenerator<Buffer> {
  const stored = await catalog.findWal(name);
  if (stored) {
    yield* readStoredWal(catalog, stored);
    return;
  }
  const segmentSize = await catalog.segmentSize();
  let size = 0;
  try {
    for await (const chunk of readStreamedPartial(catalog, name)) {
      const buf = (chunk as Buffer).subarray(0, segmentSize - size);
      size += buf.length;
      yield buf;
      if (size >= segmentSize) return;
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new BarmanError(ErrorCode.WAL_NOT_FOUND, `${name} is not in the catalog of ${catalog.server}`, 'The segment was never archived, or retention removed it.');
    }
    throw err;
  }
  const zeros = Buffer.alloc(Math.min(1 << 20, segmentSize));
  while (size < segmentSize) {
    const n = Math.min(zeros.length, segmentSize - size);
    size += n;
    yield zeros.subarray(0, n);
  }
}
