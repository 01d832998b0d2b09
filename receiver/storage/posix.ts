// The durable write path on a POSIX filesystem: every file is written under a temporary name in
// the same filesystem, fsynced, renamed to its final name, and the directory fsynced. A crash at
// any moment leaves either no file or the whole file under its final name, never a half.

import { createHash, randomBytes, type Hash } from 'node:crypto';
import { constants, promises as fs } from 'node:fs';
import { dirname, join } from 'node:path';
import { createGzip, type Gzip } from 'node:zlib';
import type { Compression } from '../../shared/config/receiver';
import { BarmanError, ErrorCode, asBarmanError } from '../../shared/errors';
import { fsyncDir } from '../../shared/durable';
import { makeDirs } from '../../shared/dirs';

export { fsyncDir, fsyncTree } from '../../shared/durable';

/** bytes written between early flushes of a file acknowledged on its own */
const EARLY_FLUSH_BYTES = 4 * 1024 * 1024;

/** mkdir -p that fsyncs the parent of every directory it creates, so the new entries survive a crash. */
export async function ensureDir(path: string): Promise<void> {
  try {
    for (const dir of await makeDirs(path, 0o750)) await fsyncDir(dirname(dir));
  } catch (err) {
    throw storageError(err, `cannot create directory ${path}`);
  }
}

export async function exists(path: string): Promise<boolean> {
  try {
    await fs.access(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * A file being received. Bytes are hashed as they arrive (the checksum is always of the plain
 * bytes) and written, compressed or not, to a temporary file in `incomingDir`.
 */
export class IncomingFile {
  readonly hash: Hash = createHash('sha256');
  size = 0;
  private gzip: Gzip | undefined;
  private gzipDone: Promise<void> | undefined;
  private writeChain: Promise<void> = Promise.resolve();
  private written = 0;
  private flushedUpTo = 0;
  private earlyFlush: Promise<void> | undefined;
  private flushError: unknown;
  /** flush as we go: for files acknowledged on their own (WAL), not for a backup's many files */
  syncEarly = false;

  private constructor(readonly tmpPath: string, private readonly fh: fs.FileHandle, compression: Compression) {
    if (compression === 'gzip') {
      const gz = createGzip({ level: 1 });
      this.gzip = gz;
      // gzip output is written in order through the same chain as plain writes
      gz.on('data', (out: Buffer) => {
        this.writeChain = this.writeChain.then(() => this.writeAll(out));
      });
      this.gzipDone = new Promise((resolve, reject) => {
        gz.on('end', resolve);
        gz.on('error', reject);
      });
    }
  }

  static async create(incomingDir: string, label: string, compression: Compression): Promise<IncomingFile> {
    return IncomingFile.createAt(join(incomingDir, `${label}.${randomBytes(6).toString('hex')}.tmp`), compression);
  }

  /** A file at an exact path inside a directory that is itself not yet complete (a backup's staging). */
  static async createAt(path: string, compression: Compression): Promise<IncomingFile> {
    const fh = await fs.open(path, 'wx', 0o640);
    return new IncomingFile(path, fh, compression);
  }

  async write(chunk: Uint8Array): Promise<void> {
    this.hash.update(chunk);
    this.size += chunk.length;
    if (this.gzip) {
      const gz = this.gzip;
      if (!gz.write(chunk)) await new Promise<void>((resolve) => gz.once('drain', resolve));
      await this.writeChain;
    } else {
      await this.writeAll(chunk);
    }
  }

  /**
   * Flushes and closes the file; returns the hex SHA-256 of the plain bytes. With `sync` false the
   * fsync is the caller's job (a backup fsyncs all its files at the end, letting the kernel write
   * back in bulk while the transfer runs).
   */
  async finish(sync = true): Promise<string> {
    if (this.gzip) {
      this.gzip.end();
      await this.gzipDone;
      await this.writeChain;
    }
    await this.earlyFlush;
    if (this.flushError) throw this.flushError;
    if (sync) await this.fh.sync();
    await this.fh.close();
    return this.hash.digest('hex');
  }

  /** Renames the finished file to `finalPath` and fsyncs the directory. */
  async commit(finalPath: string): Promise<void> {
    await ensureDir(dirname(finalPath));
    await fs.rename(this.tmpPath, finalPath);
    await fsyncDir(dirname(finalPath));
  }

  async discard(): Promise<void> {
    await this.fh.close().catch(() => undefined);
    await fs.rm(this.tmpPath, { force: true });
  }

  private async writeAll(buf: Uint8Array): Promise<void> {
    let off = 0;
    while (off < buf.length) {
      const { bytesWritten } = await this.fh.write(buf, off, buf.length - off);
      off += bytesWritten;
    }
    this.written += buf.length;
    if (this.syncEarly && this.written - this.flushedUpTo >= EARLY_FLUSH_BYTES) {
      // start writing back what we have while the rest arrives, so the final fsync (before the
      // ack) only waits for the tail; one flush in flight at a time
      this.flushedUpTo = this.written;
      this.earlyFlush ??= this.fh
        .datasync()
        .catch((err: unknown) => {
          this.flushError ??= err;
        })
        .finally(() => (this.earlyFlush = undefined));
    }
  }
}

export function storageError(err: unknown, what: string): BarmanError {
  const e = asBarmanError(err);
  if (e.code !== ErrorCode.INTERNAL) return e;
  return new BarmanError(ErrorCode.STORAGE, `${what}: ${e.message}`, 'Check the receiver host: free space, permissions on barman_home, filesystem health.', { cause: err });
}
