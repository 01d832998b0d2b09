// File checksums: SHA-256 everywhere (the catalog, the wire and PostgreSQL's backup_manifest all
// accept it, and with SHA-NI it hashes faster than the disk reads).

import { createHash, type Hash } from 'node:crypto';
import { open } from 'node:fs/promises';

export function newHash(): Hash {
  return createHash('sha256');
}

/** Hashes a file through one reused buffer (fresh memory costs more than hashing on small VMs). */
export async function sha256File(path: string): Promise<{ sha256: string; size: number }> {
  const hash = newHash();
  const buf = Buffer.allocUnsafeSlow(1024 * 1024);
  const fh = await open(path, 'r');
  let size = 0;
  try {
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
      size += bytesRead;
    }
  } finally {
    await fh.close();
  }
  return { sha256: hash.digest('hex'), size };
}
