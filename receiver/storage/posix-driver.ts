// The storage driver for a local (POSIX) filesystem: a key is a path below the root directory.
// A write goes to a temporary name in the key's own directory (so the same filesystem), is
// fsynced, renamed to its final name, and the directory is fsynced: a crash at any moment leaves
// either nothing or the whole object under the key. Temporary names start with '.', which no key
// segment may, so listings never show them and `cleanup` finds them.

import { randomBytes } from 'node:crypto';
import { constants, promises as fs, type Dirent } from 'node:fs';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { BarmanError, ErrorCode } from '../../shared/errors';
import { fsyncDir, fsyncFile } from '../../shared/durable';
import { eachAtOnce } from '../../shared/each-at-once';
import { type ByteRange, checkKey, checkPrefix, type DriverWriteOptions, noSpace, notFound, type ObjectInfo, type ObjectWriter, type StorageDriver, type WriteResult } from './storage';

/** bytes per read of a stored object */
const READ_CHUNK = 1024 * 1024;

/** bytes written between early flushes, so the final fsync only waits for the tail */
const EARLY_FLUSH_BYTES = 4 * 1024 * 1024;
const TEMP = /^\..+\.[0-9a-f]{12}\.tmp$/;

export class PosixDriver implements StorageDriver {
  readonly kind = 'posix';

  /** directories this process made or wrote into (bounded: forgotten all at once past a limit) */
  private readonly knownDirs = new Set<string>();

  constructor(readonly root: string) {}

  private rememberDir(dir: string): void {
    if (this.knownDirs.size >= 4096) this.knownDirs.clear();
    this.knownDirs.add(dir);
  }

  get location(): string {
    return this.root;
  }

  private path(key: string): string {
    return join(this.root, key);
  }

  /** Maps a filesystem error to a stable code; `key` names the object in the message. */
  mapError(err: unknown, op: string, key: string): BarmanError {
    if (err instanceof BarmanError) return err;
    const e = err as NodeJS.ErrnoException;
    const where = `${op} ${key} in ${this.root}`;
    switch (e?.code) {
      case 'ENOENT':
        return new BarmanError(ErrorCode.STORAGE_NOT_FOUND, `${where}: no such file or directory`, 'Check that barman_home exists and is the directory this catalog was written to.', { cause: err });
      case 'EACCES':
      case 'EPERM':
      case 'EROFS':
        return new BarmanError(ErrorCode.STORAGE_PERMISSION, `${where}: ${e.code === 'EROFS' ? 'read-only filesystem' : 'permission denied'}`, 'Give the user running barman-receiver read and write access to barman_home (and make sure the filesystem is mounted read-write).', { cause: err });
      case 'ENOSPC':
      case 'EDQUOT':
        return noSpace(this.root, err);
      default:
        return new BarmanError(ErrorCode.STORAGE, `${where}: ${e instanceof Error ? e.message : String(err)}`, 'Check the receiver host: the filesystem of barman_home, its health and its mount.', { cause: err });
    }
  }

  async read(key: string, range?: ByteRange): Promise<Readable> {
    checkKey(key);
    let fh: fs.FileHandle;
    try {
      fh = await fs.open(this.path(key), 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw notFound(key, this.root);
      throw this.mapError(err, 'reading', key);
    }
    const start = range?.start ?? 0;
    const end = range?.end;
    if (end !== undefined && end <= start) {
      await fh.close();
      return Readable.from([]);
    }
    // reads of up to 1 MiB, but never a buffer larger than what there is to read: most stored
    // files are a few kB, and a 1 MiB buffer for each (kept alive by the slice handed out) made
    // reading a backup's thousand small files allocate a gigabyte for the garbage collector
    const size = (await fh.stat().catch(() => undefined))?.size;
    const left = size === undefined ? READ_CHUNK : Math.max(1, (end ?? size) - start);
    // closes the handle when the stream ends or is destroyed
    return fh.createReadStream({ start, end: end === undefined ? undefined : end - 1, highWaterMark: Math.min(READ_CHUNK, left) });
  }

  async openWrite(key: string, options: DriverWriteOptions = {}): Promise<ObjectWriter> {
    checkKey(key);
    const final = this.path(key);
    try {
      const dir = dirname(final);
      const tmp = join(dir, `.${key.slice(key.lastIndexOf('/') + 1)}.${randomBytes(6).toString('hex')}.tmp`);
      // a backup writes a thousand files into a few hundred directories: each is made (and its
      // parent fsynced) once, not asked for again per file; one removed since is made anew
      if (!this.knownDirs.has(dir)) await this.ensureDir(dir);
      let fh: fs.FileHandle;
      try {
        fh = await fs.open(tmp, 'wx', 0o640);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        this.knownDirs.clear();
        await this.ensureDir(dir);
        fh = await fs.open(tmp, 'wx', 0o640);
      }
      this.rememberDir(dir);
      return new PosixWriter(this, key, final, tmp, fh, options.sync ?? true);
    } catch (err) {
      throw this.mapError(err, 'writing', key);
    }
  }

  async putIfAbsent(key: string, bytes: Uint8Array): Promise<boolean> {
    checkKey(key);
    const final = this.path(key);
    const tmp = join(dirname(final), `.${key.slice(key.lastIndexOf('/') + 1)}.${randomBytes(6).toString('hex')}.tmp`);
    try {
      await this.ensureDir(dirname(final));
      await fs.writeFile(tmp, bytes, { flag: 'wx', mode: 0o640, flush: true });
      // link() fails when the name exists: an atomic create-if-absent with the whole content
      await fs.link(tmp, final);
      await fsyncDir(dirname(final));
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw this.mapError(err, 'writing', key);
    } finally {
      await fs.rm(tmp, { force: true });
    }
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    checkKey(key);
    try {
      const st = await fs.stat(this.path(key));
      return st.isFile() ? { key, size: st.size, mtime: st.mtime } : undefined;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return undefined;
      throw this.mapError(err, 'looking up', key);
    }
  }

  async exists(key: string): Promise<boolean> {
    return (await this.stat(key)) !== undefined;
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    checkPrefix(prefix);
    const slash = prefix.lastIndexOf('/');
    const dir = prefix.slice(0, slash + 1);
    const namePrefix = prefix.slice(slash + 1);
    yield* this.walk(dir, namePrefix);
  }

  async *listDirs(prefix: string): AsyncIterable<string> {
    checkPrefix(prefix);
    let entries: Dirent[];
    try {
      entries = await fs.readdir(join(this.root, prefix), { withFileTypes: true });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if ((code === 'ENOENT' || code === 'ENOTDIR') && prefix !== '') return;
      throw this.mapError(err, 'listing', prefix || '/');
    }
    const names = entries.filter((e) => e.isDirectory() && !e.name.startsWith('.')).map((e) => e.name).sort(); // (by UTF-16 code unit, no locale)
    for (const name of names) {
      // a directory left empty (its objects removed) holds no object: not named, as on s3
      const empty = (await fs.readdir(join(this.root, prefix, name)).catch(() => [] as string[])).every((n) => n.startsWith('.'));
      if (!empty) yield name;
    }
  }

  /** Files below `dir` (a key prefix ending in '/' or empty), in byte order of their keys. */
  private async *walk(dir: string, namePrefix: string): AsyncIterable<ObjectInfo> {
    let entries: Dirent[];
    try {
      entries = await fs.readdir(join(this.root, dir), { withFileTypes: true });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if ((code === 'ENOENT' || code === 'ENOTDIR') && dir !== '') return;
      throw this.mapError(err, 'listing', dir || '/');
    }
    // "a/b" sorts after "a-c" as keys ('/' > '-'): sort directories as if their names ended in '/'
    const named = entries
      .filter((e) => !e.name.startsWith('.') && e.name.startsWith(namePrefix) && (e.isFile() || e.isDirectory()))
      .map((e) => ({ e, sortKey: e.isDirectory() ? `${e.name}/` : e.name }))
      .sort((a, b) => (a.sortKey < b.sortKey ? -1 : a.sortKey > b.sortKey ? 1 : 0));
    for (const { e } of named) {
      const key = dir + e.name;
      if (e.isDirectory()) {
        yield* this.walk(`${key}/`, '');
      } else {
        try {
          const st = await fs.stat(join(this.root, key));
          yield { key, size: st.size, mtime: st.mtime };
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw this.mapError(err, 'listing', key); // removed meanwhile
        }
      }
    }
  }

  async remove(key: string): Promise<void> {
    checkKey(key);
    try {
      await fs.rm(this.path(key), { force: true });
    } catch (err) {
      throw this.mapError(err, 'removing', key);
    }
  }

  async removePrefix(prefix: string): Promise<number> {
    checkPrefix(prefix);
    this.knownDirs.clear();
    let removed = 0;
    const dirs = new Set<string>();
    for await (const info of this.list(prefix)) {
      await this.remove(info.key);
      dirs.add(dirname(info.key));
      removed++;
    }
    // a "directory" prefix: what interrupted writes left below it goes too, and so do the
    // directories (object stores have no leftovers to keep a prefix alive either)
    if (prefix.endsWith('/')) {
      await this.removeTempFilesBelow(prefix.slice(0, -1));
      dirs.add(prefix.slice(0, -1));
    }
    // leave no empty directories below the prefix behind (deepest first)
    for (const dir of [...dirs].sort((a, b) => b.length - a.length)) {
      for (let d = dir; d !== '.' && d !== '' && `${d}/`.startsWith(prefix); d = dirname(d)) {
        try {
          await fs.rmdir(join(this.root, d));
        } catch {
          break; // not empty (or gone): its parents are not empty either
        }
      }
    }
    return removed;
  }

  /** Removes temporary files below directory `dir` (a key prefix without its '/') and the directories they leave empty. */
  private async removeTempFilesBelow(dir: string): Promise<void> {
    const visit = async (rel: string): Promise<void> => {
      let entries: Dirent[];
      try {
        entries = await fs.readdir(join(this.root, rel), { withFileTypes: true });
      } catch {
        return;
      }
      for (const e of entries) {
        const child = `${rel}/${e.name}`;
        if (e.isDirectory()) {
          await visit(child);
          await fs.rmdir(join(this.root, child)).catch(() => undefined); // only when empty
        } else if (TEMP.test(e.name)) {
          await fs.rm(join(this.root, child), { force: true });
        }
      }
    };
    try {
      await visit(dir);
    } catch (err) {
      throw this.mapError(err, 'removing', `${dir}/`);
    }
  }

  async sync(keys: readonly string[]): Promise<void> {
    const dirs = new Set<string>();
    await eachAtOnce(keys, 8, async (key) => {
      try {
        await fsyncFile(this.path(checkKey(key)));
      } catch (err) {
        throw this.mapError(err, 'syncing', key);
      }
      dirs.add(dirname(key));
    });
    for (const dir of dirs) {
      try {
        await fsyncDir(this.path(dir));
      } catch (err) {
        throw this.mapError(err, 'syncing', dir === '.' ? '/' : `${dir}/`);
      }
    }
  }

  async cleanup(before: Date): Promise<number> {
    let removed = 0;
    const visit = async (dir: string): Promise<void> => {
      let entries: Dirent[];
      try {
        entries = await fs.readdir(dir, { withFileTypes: true });
      } catch {
        return;
      }
      for (const e of entries) {
        const p = join(dir, e.name);
        if (e.isDirectory() && !e.name.startsWith('.')) await visit(p);
        else if (e.isFile() && TEMP.test(e.name)) {
          const st = await fs.stat(p).catch(() => undefined);
          if (st && st.mtime < before) {
            await fs.rm(p, { force: true });
            removed++;
          }
        }
      }
    };
    await visit(this.root);
    return removed;
  }

  async check(): Promise<void> {
    try {
      const st = await fs.stat(this.root);
      if (!st.isDirectory()) throw new BarmanError(ErrorCode.STORAGE, `${this.root} is not a directory`, 'Point barman_home at a directory.');
      await fs.access(this.root, constants.W_OK);
    } catch (err) {
      throw this.mapError(err, 'checking', '/');
    }
  }

  async close(): Promise<void> {
    // nothing held open between calls
  }

  /** mkdir -p that fsyncs the parent of each directory it creates, so new entries survive a crash. */
  async ensureDir(path: string): Promise<void> {
    try {
      await fs.mkdir(path, { mode: 0o750 });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') return;
      if (code !== 'ENOENT' || path === this.root) throw err;
      await this.ensureDir(dirname(path));
      try {
        await fs.mkdir(path, { mode: 0o750 });
      } catch (again) {
        if ((again as NodeJS.ErrnoException).code !== 'EEXIST') throw again;
        return;
      }
    }
    await fsyncDir(dirname(path));
  }
}

class PosixWriter implements ObjectWriter {
  private written = 0;
  private flushedUpTo = 0;
  private earlyFlush: Promise<void> | undefined;
  private flushError: unknown;
  private state: 'open' | 'committed' | 'aborted' = 'open';

  constructor(private readonly driver: PosixDriver, readonly key: string, private readonly final: string, private readonly tmp: string, private readonly fh: fs.FileHandle, private readonly durable: boolean) {}

  async write(chunk: Uint8Array): Promise<void> {
    if (this.state !== 'open') throw new BarmanError(ErrorCode.INTERNAL, `write to ${this.key} after it was ${this.state}`, 'This is a bug in barman-ts; please report it.');
    try {
      let off = 0;
      while (off < chunk.length) off += (await this.fh.write(chunk, off, chunk.length - off)).bytesWritten;
    } catch (err) {
      throw this.driver.mapError(err, 'writing', this.key);
    }
    this.written += chunk.length;
    if (this.durable && this.written - this.flushedUpTo >= EARLY_FLUSH_BYTES) {
      // write back what we have while the rest arrives; one flush in flight at a time
      this.flushedUpTo = this.written;
      this.earlyFlush ??= this.fh
        .datasync()
        .catch((err: unknown) => {
          this.flushError ??= err;
        })
        .finally(() => (this.earlyFlush = undefined));
    }
  }

  async commit(): Promise<WriteResult> {
    if (this.state !== 'open') throw new BarmanError(ErrorCode.INTERNAL, `commit of ${this.key} after it was ${this.state}`, 'This is a bug in barman-ts; please report it.');
    try {
      await this.earlyFlush;
      if (this.flushError) throw this.flushError;
      if (this.durable) await this.fh.sync();
      await this.fh.close();
      await fs.rename(this.tmp, this.final);
      if (this.durable) await fsyncDir(dirname(this.final));
    } catch (err) {
      await this.abort();
      throw this.driver.mapError(err, 'writing', this.key);
    }
    this.state = 'committed';
    return { key: this.key, size: this.written, storedSize: this.written };
  }

  async abort(): Promise<void> {
    if (this.state !== 'open') return;
    this.state = 'aborted';
    await this.earlyFlush;
    await this.fh.close().catch(() => undefined);
    await fs.rm(this.tmp, { force: true });
  }
}
