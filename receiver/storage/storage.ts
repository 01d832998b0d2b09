// The storage interface the catalog is built on: keys in, bytes out, and nothing about disks or
// buckets. A driver (posix-driver.ts, s3.ts) stores raw bytes under keys; `Storage` wraps a
// driver with compression (compression.ts: the key's suffix says how an object is stored) and the
// lease (lease.ts: one writer per server). The catalog names keys; it never touches node:fs for
// catalog data and never knows which driver it runs on.
//
// The contract every driver keeps (test/contract/storage.test.ts checks it on each):
// - A write is invisible under its key until `commit()` resolves; `abort()` (or a failure, or a
//   crash) leaves nothing under the key and, once `cleanup()` ran, nothing anywhere.
// - A committed object is durable (posix: file and directory fsynced; s3: PUT or
//   CompleteMultipartUpload answered), unless the write asked for `sync: false`, in which case
//   `sync(keys)` makes it durable later.
// - Reads and writes stream with bounded memory; many writes of different keys may be in flight.
// - `list(prefix)` yields every object whose key starts with `prefix`, in byte order of the keys.
// - Failures are BarmanErrors with the STORAGE_* codes below and a hint.

import { pipeline, Readable, Transform, type TransformCallback, Writable } from 'node:stream';
import { BarmanError, ErrorCode } from '../../shared/errors';
import { type Compression, compressor, decompressor, parseStoredKey, storedKey } from './compression';
export { compressWhole } from './compression';
import { Lease, type LeaseOwner, type LeaseRecord, readLease } from './lease';

export interface ObjectInfo {
  /** the key as stored (with a compression suffix, when there is one) */
  key: string;
  /** bytes as stored */
  size: number;
  mtime: Date;
}

/** Byte range of a read: `start` inclusive, `end` exclusive (default: to the end). */
export interface ByteRange {
  start: number;
  end?: number;
}

export interface DriverWriteOptions {
  /** make the object durable before commit() resolves (default true); false: `sync([key])` later */
  sync?: boolean;
  /** bytes the object will probably have as stored, when known: lets s3 send one PUT instead of parts */
  sizeHint?: number;
}

/** One object being written. Not visible under `key` before commit(). */
export interface ObjectWriter {
  readonly key: string;
  /** Resolves when the writer can take more (backpressure); rejects if the write failed. */
  write(chunk: Uint8Array): Promise<void>;
  /** Publishes the object under its key; after it resolves the object is durable and visible. */
  commit(): Promise<WriteResult>;
  /** Drops the write: nothing is left under the key. Safe to call at any point; a no-op after commit. */
  abort(): Promise<void>;
}

export interface WriteResult {
  /** the key the object is stored under */
  key: string;
  /** bytes given to write() (for Storage writers: plain, uncompressed bytes) */
  size: number;
  /** bytes as stored */
  storedSize: number;
}

/** What a driver does: raw bytes under keys. */
export interface StorageDriver {
  readonly kind: 'posix' | 's3';
  /** where the objects are, for messages: a directory or s3://bucket/prefix at an endpoint */
  readonly location: string;
  /** A stream of the stored bytes; rejects with STORAGE_NOT_FOUND when the object does not exist. */
  read(key: string, range?: ByteRange): Promise<Readable>;
  openWrite(key: string, options?: DriverWriteOptions): Promise<ObjectWriter>;
  /** Creates the object only if no object has that key; false when one exists. Atomic. */
  putIfAbsent(key: string, bytes: Uint8Array): Promise<boolean>;
  stat(key: string): Promise<ObjectInfo | undefined>;
  exists(key: string): Promise<boolean>;
  /** Every object whose key starts with `prefix`, in byte order of the keys, fetched page by page. */
  list(prefix: string): AsyncIterable<ObjectInfo>;
  /**
   * The names one level below `prefix` (empty or ending in '/') that have objects under them
   * ("directories"), in byte order; objects directly at that level are not named.
   */
  listDirs(prefix: string): AsyncIterable<string>;
  /** Removes one object; a missing one is not an error. */
  remove(key: string): Promise<void>;
  /**
   * Removes every object whose key starts with `prefix`; returns how many. A prefix ending in
   * '/' also loses what interrupted writes left below it (temporary files, incomplete uploads).
   */
  removePrefix(prefix: string): Promise<number>;
  /** Makes objects written with `sync: false` durable. */
  sync(keys: readonly string[]): Promise<void>;
  /** Removes what interrupted writes left (temp files, incomplete multipart uploads) older than `before`. */
  cleanup(before: Date): Promise<number>;
  /** Proves the storage is usable: the directory or bucket exists and may be written. */
  check(): Promise<void>;
  close(): Promise<void>;
}

// ---- keys ----

const SEGMENT = /^[A-Za-z0-9_][A-Za-z0-9._-]*$/;
const MAX_KEY = 1024;

/**
 * Keys are '/'-separated segments of letters, digits, '.', '_' and '-', none starting with '.'
 * (drivers keep their temporary names there) or empty. Anything else is a bug in the caller.
 */
export function checkKey(key: string): string {
  if (key.length === 0 || key.length > MAX_KEY || !key.split('/').every((s) => SEGMENT.test(s))) {
    throw new BarmanError(ErrorCode.INTERNAL, `invalid storage key "${key.slice(0, 200)}"`, 'This is a bug in barman-ts; please report it with the command that failed.');
  }
  return key;
}

/** A list prefix: empty, or a key that may end with '/' or in the middle of a segment. */
export function checkPrefix(prefix: string): string {
  if (prefix === '') return prefix;
  const parts = prefix.split('/');
  const last = parts.pop()!;
  if (prefix.length > MAX_KEY || !parts.every((s) => SEGMENT.test(s)) || (last !== '' && !/^[A-Za-z0-9._-]+$/.test(last))) {
    throw new BarmanError(ErrorCode.INTERNAL, `invalid storage prefix "${prefix.slice(0, 200)}"`, 'This is a bug in barman-ts; please report it with the command that failed.');
  }
  return prefix;
}

// ---- errors ----

export function notFound(key: string, location: string): BarmanError {
  return new BarmanError(ErrorCode.STORAGE_NOT_FOUND, `${key} does not exist in ${location}`, 'The object was removed or never written; check that barman_home (or the bucket and s3_prefix) is the one this catalog was written to.');
}

export function noSpace(location: string, cause?: unknown): BarmanError {
  return new BarmanError(ErrorCode.STORAGE_NO_SPACE, `no space left in ${location}`, 'Free space there (or run `barman-receiver cron` to apply retention, or raise the quota), then retry.', { cause });
}

// ---- streams ----

/** Passes bytes [start, end) of what flows through. */
class Slice extends Transform {
  private seen = 0;
  constructor(private readonly from: number, private readonly to: number) {
    super();
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    const from = Math.max(0, this.from - this.seen);
    const to = Math.min(chunk.length, this.to - this.seen);
    this.seen += chunk.length;
    if (to > from) this.push(chunk.subarray(from, to));
    done();
  }
}

/** Resolves on 'drain'; rejects when the stream errors or closes first. Leaves no listener behind. */
export function drained(stream: Writable): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const settle = (err?: unknown) => {
      stream.off('drain', onDrain).off('error', onError).off('close', onClose);
      if (err) reject(err);
      else resolve();
    };
    const onDrain = () => settle();
    const onError = (err: Error) => settle(err);
    const onClose = () => settle(stream.errored ?? new Error('the stream closed before it drained'));
    stream.on('drain', onDrain).on('error', onError).on('close', onClose);
  });
}

/** `first` piped into `rest`, returned as one readable; an error anywhere destroys the last. */
function chain(first: Readable, ...rest: Transform[]): Readable {
  if (rest.length === 0) return first;
  return pipeline([first, ...rest], () => undefined) as unknown as Readable;
}

// ---- the storage the catalog uses ----

export interface PutOptions extends DriverWriteOptions {
  /** how to store the bytes (default none); the stored key gets the compression's suffix */
  compression?: Compression;
  /** the caller never changes a chunk after handing it to write(): the compressor may keep it instead of copying */
  ownsChunks?: boolean;
}

export interface StoredObject extends ObjectInfo {
  /** the catalog's key, without the compression suffix */
  plainKey: string;
  compression: Compression;
}

export class Storage {
  constructor(readonly driver: StorageDriver) {}

  get location(): string {
    return this.driver.location;
  }

  /**
   * Opens a write of plain bytes under `key` (stored as `storedKey(key, compression)`, which the
   * writer's `key` says). Nothing is visible before commit().
   */
  async openWrite(key: string, options: PutOptions = {}): Promise<ObjectWriter> {
    const compression = options.compression ?? 'none';
    if (compression === 'none' && parseStoredKey(key).compression !== 'none') {
      // it would read back as compressed: the layout must not give a plain object such a name
      throw new BarmanError(ErrorCode.INTERNAL, `storage key "${key.slice(0, 200)}" ends like a compressed object but is stored plain`, 'This is a bug in barman-ts; please report it with the command that failed.');
    }
    const inner = await this.driver.openWrite(checkKey(storedKey(key, compression)), { sync: options.sync, sizeHint: options.sizeHint });
    const filter = compressor(compression, options.ownsChunks);
    return filter ? new FilteredWriter(inner, filter) : new CountingWriter(inner);
  }

  /** Writes a whole object from a buffer or a stream, committing it at the end. */
  async put(key: string, source: Uint8Array | AsyncIterable<Uint8Array>, options: PutOptions = {}): Promise<WriteResult> {
    const writer = await this.openWrite(key, options);
    try {
      if (source instanceof Uint8Array) await writer.write(source);
      else for await (const chunk of source) await writer.write(chunk);
      return await writer.commit();
    } catch (err) {
      await writer.abort().catch(() => undefined);
      throw err;
    }
  }

  /** The plain bytes of a stored object (decompressed as its key says); `range` is in plain bytes. */
  async read(stored: string, range?: ByteRange): Promise<Readable> {
    const { compression } = parseStoredKey(checkKey(stored));
    if (compression === 'none') return this.driver.read(stored, range);
    const raw = await this.driver.read(stored);
    const stages = [decompressor(compression, `${stored} in ${this.location}`)!];
    // compressed frames do not say where plain offsets are: decompress and skip
    if (range) stages.push(new Slice(range.start, range.end ?? Infinity));
    return chain(raw, ...stages);
  }

  /**
   * Opens a write of bytes already stored as `compression` says (bundles: members compressed
   * one by one with compressWhole) under `storedKey(key, compression)`, as they are.
   */
  async openStoredWrite(key: string, compression: Compression, options: DriverWriteOptions = {}): Promise<ObjectWriter> {
    return this.driver.openWrite(checkKey(storedKey(key, compression)), options);
  }

  /**
   * The plain bytes of a part of a stored object that is whole in itself (a bundle member:
   * `range` in stored bytes, on boundaries of the object's compressed frames).
   */
  async readPart(stored: string, range: ByteRange): Promise<Readable> {
    const { compression } = parseStoredKey(checkKey(stored));
    // an empty member is no bytes at all (compressWhole), which gunzip would call truncated
    if (range.end !== undefined && range.end <= range.start) return Readable.from([]);
    const raw = await this.driver.read(stored, range);
    if (compression === 'none') return raw;
    return chain(raw, decompressor(compression, `${stored} (bytes ${range.start}-${range.end ?? ''}) in ${this.location}`)!);
  }

  /** The stored bytes of an object (or of `range` of them, in stored bytes) as they are, still compressed, streamed. */
  async readStoredStream(stored: string, range?: ByteRange): Promise<Readable> {
    if (range?.end !== undefined && range.end <= range.start) return Readable.from([]);
    return this.driver.read(checkKey(stored), range);
  }

  /**
   * The stored bytes of an object whole, as they are (still compressed): a bundle, whose members
   * are then decompressed one by one (decompressWhole). Refuses more than `limit` bytes.
   */
  async readStored(stored: string, limit: number): Promise<Buffer> {
    return this.collect(stored, await this.driver.read(checkKey(stored)), limit);
  }

  /** A small object whole (JSON documents, leases); refuses more than `limit` plain bytes. */
  async readAll(stored: string, limit = 16 * 1024 * 1024): Promise<Buffer> {
    return this.collect(stored, await this.read(stored), limit);
  }

  /** The bytes of `stream` (read from object `stored`) in one buffer; refuses more than `limit` of them. */
  private async collect(stored: string, stream: Readable, limit: number): Promise<Buffer> {
    const parts: Buffer[] = [];
    let size = 0;
    for await (const chunk of stream) {
      size += (chunk as Buffer).length;
      if (size > limit) throw new BarmanError(ErrorCode.STORAGE_CORRUPT, `${stored} in ${this.location} is larger than ${limit} bytes`, 'The object is not what barman-ts wrote there; move it away and retry.');
      parts.push(chunk as Buffer);
    }
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts, size);
  }

  /** Every stored object under `prefix`, with the catalog key and compression its key says. */
  async *list(prefix: string): AsyncIterable<StoredObject> {
    for await (const info of this.driver.list(checkPrefix(prefix))) {
      const { key: plainKey, compression } = parseStoredKey(info.key);
      yield { ...info, plainKey, compression };
    }
  }

  /** The "directories" directly below `prefix` (which ends in '/'), by name, in byte order. */
  listDirs(prefix: string): AsyncIterable<string> {
    if (prefix !== '' && !prefix.endsWith('/')) throw new BarmanError(ErrorCode.INTERNAL, `storage prefix "${prefix.slice(0, 200)}" names no directory`, 'This is a bug in barman-ts; please report it.');
    return this.driver.listDirs(checkPrefix(prefix));
  }

  /** The stored object holding `key` in whichever compression it was written, if any. */
  async find(key: string): Promise<StoredObject | undefined> {
    for await (const found of this.list(checkKey(key))) {
      if (found.plainKey === key) return found;
    }
    return undefined;
  }

  stat(stored: string): Promise<ObjectInfo | undefined> {
    return this.driver.stat(checkKey(stored));
  }

  /**
   * Copies a stored object's bytes as they are (compressed or not, damaged or not) to the key
   * `plainKey` with the same compression; returns the stored key written. Object stores have no
   * rename: a move is this and a remove.
   */
  async copy(stored: string, plainKey: string): Promise<string> {
    const { compression } = parseStoredKey(checkKey(stored));
    const writer = await this.driver.openWrite(checkKey(storedKey(plainKey, compression)));
    try {
      for await (const chunk of await this.driver.read(stored)) await writer.write(chunk as Buffer);
      return (await writer.commit()).key;
    } catch (err) {
      await writer.abort().catch(() => undefined);
      throw err;
    }
  }

  exists(stored: string): Promise<boolean> {
    return this.driver.exists(checkKey(stored));
  }

  remove(stored: string): Promise<void> {
    return this.driver.remove(checkKey(stored));
  }

  removePrefix(prefix: string): Promise<number> {
    if (prefix === '') throw new BarmanError(ErrorCode.INTERNAL, 'refusing to remove every object of the storage', 'This is a bug in barman-ts; please report it.');
    return this.driver.removePrefix(checkPrefix(prefix));
  }

  sync(stored: readonly string[]): Promise<void> {
    return this.driver.sync(stored.map(checkKey));
  }

  cleanup(before: Date): Promise<number> {
    return this.driver.cleanup(before);
  }

  check(): Promise<void> {
    return this.driver.check();
  }

  /**
   * One holder at a time for `key` (lease.ts): refused with LEASE_HELD while another owner's
   * lease is live; keep it with `keepAlive` or `renew`, give it up with `release`.
   */
  acquireLease(key: string, owner: LeaseOwner, ttlMs: number): Promise<Lease> {
    return Lease.acquire(this.driver, checkKey(key), owner, ttlMs);
  }

  readLease(key: string): Promise<LeaseRecord | undefined> {
    return readLease(this.driver, checkKey(key));
  }

  close(): Promise<void> {
    return this.driver.close();
  }
}

/** A driver writer that counts what passes (no compression: plain = stored). */
class CountingWriter implements ObjectWriter {
  private size = 0;
  constructor(private readonly inner: ObjectWriter) {}
  get key(): string {
    return this.inner.key;
  }
  async write(chunk: Uint8Array): Promise<void> {
    this.size += chunk.length;
    await this.inner.write(chunk);
  }
  async commit(): Promise<WriteResult> {
    return { ...(await this.inner.commit()), size: this.size };
  }
  abort(): Promise<void> {
    return this.inner.abort();
  }
}

/** Plain bytes → compression → driver writer, with backpressure all the way. */
class FilteredWriter implements ObjectWriter {
  private size = 0;
  private failure: unknown;
  private readonly done: Promise<void>;

  constructor(private readonly inner: ObjectWriter, private readonly filter: Transform) {
    const sink = new Writable({
      highWaterMark: 1,
      write: (chunk: Buffer, _enc, cb) => {
        inner.write(chunk).then(() => cb(), cb);
      },
    });
    this.done = new Promise<void>((resolve, reject) => {
      pipeline(filter, sink, (err) => {
        if (err) {
          this.failure ??= err;
          reject(err);
        } else resolve();
      });
    });
    this.done.catch(() => undefined);
  }

  get key(): string {
    return this.inner.key;
  }

  async write(chunk: Uint8Array): Promise<void> {
    if (this.failure) throw this.failure;
    this.size += chunk.length;
    if (!this.filter.write(chunk)) await drained(this.filter);
    if (this.failure) throw this.failure;
  }

  async commit(): Promise<WriteResult> {
    if (this.failure) throw this.failure;
    this.filter.end();
    await this.done;
    return { ...(await this.inner.commit()), size: this.size };
  }

  async abort(): Promise<void> {
    if (!this.filter.destroyed) this.filter.destroy(new Error('write aborted'));
    await this.done.catch(() => undefined);
    await this.inner.abort();
  }
}
