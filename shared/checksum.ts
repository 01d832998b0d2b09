// File checksums: SHA-256 everywhere (the catalog, the wire and PostgreSQL's backup_manifest all
// accept it, and with SHA-NI it hashes faster than the disk reads).

import { createHash, type Hash } from 'node:crypto';
import { type FileHandle, open } from 'node:fs/promises';

export function newHash(): Hash {
  return createHash('sha256');
}

/**
 * A file's bytes through one buffer per file, reused for every chunk: fresh 1 MB buffers per read
 * page-fault heavily on small VMs. The consumer must be done with a chunk before asking for the next.
 */
export async function* readChunks(path: string): AsyncGenerator<Buffer> {
  const fh = await open(path, 'r');
  try {
    const { size } = await fh.stat();
    const buf = Buffer.allocUnsafeSlow(Math.max(1, Math.min(1024 * 1024, size)));
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) return;
      yield buf.subarray(0, bytesRead);
    }
  } finally {
    await fh.close();
  }
}

export async function sha256File(path: string): Promise<{ sha256: string; size: number }> {
  const hash = newHash();
  let size = 0;
  for await (const chunk of readChunks(path)) {
    hash.update(chunk);
    size += chunk.length;
  }
  return { sha256: hash.digest('hex'), size };
}

/** SHA-256 of an open file's bytes, by positioned reads (the file position stays where it is). */
export async function sha256Handle(fh: FileHandle): Promise<string> {
  const hash = newHash();
  const buf = Buffer.allocUnsafeSlow(1024 * 1024);
  for (let pos = 0; ;) {
    const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
    if (bytesRead === 0) break;
    hash.update(buf.subarray(0, bytesRead));
    pos += bytesRead;
  }
  return hash.digest('hex');
}
