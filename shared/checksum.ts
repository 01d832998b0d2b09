// File checksums: SHA-256 everywhere (the catalog, the wire and PostgreSQL's backup_manifest all
// accept it, and with SHA-NI it hashes faster than the disk reads).

import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';

export function newHash(): Hash {
  return createHash('sha256');
}

export async function sha256File(path: string): Promise<{ sha256: string; size: number }> {
  const hash = newHash();
  let size = 0;
  for await (const chunk of createReadStream(path, { highWaterMark: 1024 * 1024 })) {
    hash.update(chunk as Buffer);
    size += (chunk as Buffer).length;
  }
  return { sha256: hash.digest('hex'), size };
}
