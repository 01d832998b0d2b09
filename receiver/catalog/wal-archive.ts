// Where a WAL file becomes durable, and the only way one is read back. The sender declares the
// SHA-256 of the plain bytes before it sends them (hash-first): the key a WAL file is stored under
// carries that checksum and must be known when the write opens, for an object store has no
// rename. An upload is validated as it arrives (name, size, page header, system identifier; a
// .history or .backup file's content, which must be one PostgreSQL can read), hashed, and
// written through the storage (compressed as the server says) under that key, invisible until
// the hash of what arrived equals the declared one and the storage has committed it. Identical
// re-sends are a success (and repair a stored copy that went bad); different bytes under an
// existing name are refused and kept under errors/. Every read checks the bytes against the
// recorded checksum.

import type { Readable } from 'node:stream';
import type { Compression } from '../../shared/config/receiver';
import { BarmanError, damagedWalHint, ErrorCode } from '../../shared/errors';
import { crc32c, crc32cHex, newHash } from '../../shared/checksum';
import { Turns } from '../../shared/turns';
import { validateBackupHistory } from '../../shared/wal/backup-history';
import { LONG_HEADER_SIZE, readLongHeader } from '../../shared/wal/header';
import { validateHistory } from '../../shared/wal/history';
import { formatLsn } from '../../shared/wal/lsn';
import { isValidSegmentSize, parseWalFileName, segmentStartLsn, type WalFileName } from '../../shared/wal/names';
import type { ObjectWriter } from '../storage/storage';
import { BLOCK_SIZE, decompressWireFrame, zstdStoredFrames } from '../storage/compression';
import type { WireCompression } from '../../shared/protocol/frames';
import type { ServerCatalog, StoredWal } from './catalog';
import type { StoreResult, Upload } from './upload';

/** .history and .backup files are a few hundred bytes; anything near this is not one. */
const MAX_SMALL_WAL_FILE = 1024 * 1024;

const NAME_HINT = 'archive_command must pass %p (the path PostgreSQL gives), and only WAL segments, .history and .backup files are archived.';

export function invalidWal(message: string, hint = 'The file is not a complete WAL file of this server; check the source cluster and its archive_command.'): BarmanError {
  return new BarmanError(ErrorCode.WAL_INVALID, message, hint);
}

/** What a damaged file's bytes came to: their SHA-256, or why they could not be read (a compressed file that no longer decompresses). */
type Damage = { sha256: string } | { unreadable: string };

/** What a stored WAL file's damaged bytes came to, against the checksum recorded when it was stored. */
export function describeDamage(stored: StoredWal, damage: Damage): string {
  return 'sha256' in damage ? `its bytes hash to ${damage.sha256.slice(0, 12)}…, not to the ${stored.sha256?.slice(0, 12)}… recorded when it was stored` : `it no longer decompresses (${damage.unreadable})`;
}

/** A stored WAL file whose bytes no longer match the checksum recorded when it was stored. */
export function damagedWal(catalog: ServerCatalog, stored: StoredWal, damage: Damage): BarmanError {
  return new BarmanError(
    ErrorCode.CHECKSUM_MISMATCH,
    `${stored.name} in the catalog of ${catalog.server} is damaged: ${describeDamage(stored, damage)}; refusing to hand it out`,
    damagedWalHint(stored.name, catalog.server),
  );
}

/** A WAL file that was listed a moment ago and is gone now (retention removed it meanwhile). */
function vanished(catalog: ServerCatalog, stored: StoredWal, cause: unknown): BarmanError {
  return new BarmanError(ErrorCode.WAL_NOT_FOUND, `${stored.name} is no longer in the catalog of ${catalog.server}`, 'Retention removed it while it was being read; recover from a newer backup.', { cause });
}

/** A stored WAL file's plain bytes (decompressed as its key says), unchecked. */
function openStoredBytes(catalog: ServerCatalog, stored: StoredWal): Promise<Readable> {
  return catalog.storage.read(stored.key);
}

/** A decompression failure: the stored bytes are damaged, not the storage unreachable. */
function isDecodeError(err: unknown): err is BarmanError {
  return err instanceof BarmanError && err.code === ErrorCode.STORAGE_CORRUPT;
}

function isGone(err: unknown): boolean {
  return err instanceof BarmanError && err.code === ErrorCode.STORAGE_NOT_FOUND;
}

/** What a failed read of a stored WAL file to hand out is: damaged (it no longer decompresses), gone (retention), or the error as it is. */
function readFailure(catalog: ServerCatalog, stored: StoredWal, err: unknown): unknown {
  if (isDecodeError(err)) return damagedWal(catalog, stored, { unreadable: err.message });
  if (isGone(err)) return vanished(catalog, stored, err);
  return err;
}

/** SHA-256 of a stored WAL file's plain bytes as they are now, or why they cannot be decompressed. */
async function hashStored(catalog: ServerCatalog, stored: StoredWal): Promise<Damage> {
  const hash = newHash();
  try {
    for await (const chunk of await openStoredBytes(catalog, stored)) hash.update(chunk as Buffer);
  } catch (err) {
    if (isDecodeError(err)) return { unreadable: err.message };
    if (isGone(err)) throw vanished(catalog, stored, err);
    throw err;
  }
  return { sha256: hash.digest('hex') };
}

/** SHA-256 of a stored WAL file's plain bytes as they are now ('' when they no longer decompress). */
export async function hashStoredWal(catalog: ServerCatalog, stored: StoredWal): Promise<string> {
  const h = await hashStored(catalog, stored);
  return 'sha256' in h ? h.sha256 : '';
}

/**
 * A stored WAL file's plain bytes, checked against the checksum recorded with it. The last
 * chunk is held back until the whole file has hashed right: a damaged file never reaches a
 * reader whole, the read throws CHECKSUM_MISMATCH instead. A file stored before checksums is
 * handed out unchecked (`stored.sha256` undefined).
 */
export async function* readStoredWal(catalog: ServerCatalog, stored: StoredWal): AsyncGenerator<Buffer> {
  const hash = newHash();
  let held: Buffer | undefined;
  try {
    for await (const chunk of await openStoredBytes(catalog, stored)) {
      const buf = chunk as Buffer;
      hash.update(buf);
      if (held) yield held;
      held = buf;
    }
  } catch (err) {
    throw readFailure(catalog, stored, err);
  }
  if (stored.sha256 !== undefined) {
    const actual = hash.digest('hex');
    if (actual !== stored.sha256) throw damagedWal(catalog, stored, { sha256: actual });
  }
  if (held) yield held;
}

/**
 * A stored zstd WAL file's frames as they are stored, unchecked: for a reader that decompresses
 * them itself and checks the plain bytes against `stored.sha256` (an agent's get). A file that no
 * longer splits into frames ends in the CHECKSUM_MISMATCH readStoredWal would throw.
 */
export async function* readStoredWalFrames(catalog: ServerCatalog, stored: StoredWal): AsyncGenerator<Buffer> {
  try {
    yield* zstdStoredFrames(await catalog.storage.readStoredStream(stored.key), `${stored.key} in ${catalog.storage.location}`);
  } catch (err) {
    throw readFailure(catalog, stored, err);
  }
}

/** Reads a whole small stored WAL file (.history), checked like readStoredWal. */
export async function readSmallStoredWal(catalog: ServerCatalog, stored: StoredWal): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of readStoredWal(catalog, stored)) parts.push(chunk);
  return Buffer.concat(parts);
}

/** Checks a stored WAL file against its recorded checksum: 'ok', 'damaged' (with the actual hash) or 'unchecked' (stored before checksums). */
export async function verifyStoredWal(catalog: ServerCatalog, stored: StoredWal): Promise<{ state: 'ok' } | { state: 'unchecked' } | { state: 'damaged'; damage: Damage }> {
  if (stored.sha256 === undefined) return { state: 'unchecked' };
  const damage = await hashStored(catalog, stored);
  return 'sha256' in damage && damage.sha256 === stored.sha256 ? { state: 'ok' } : { state: 'damaged', damage };
}

/** Segments and .partial segments are made of WAL pages and get the page header checks. */
function hasPages(file: WalFileName): boolean {
  return file.kind === 'segment' || file.kind === 'partial';
}

/** how long a stored copy this process wrote or read back intact is trusted without reading it again */
const KNOWN_INTACT_MS = 10 * 60 * 1000;
const KNOWN_INTACT_MAX = 4096;

export class WalArchive {
  /** commits of one server are serialised: identity is set once, duplicates are detected reliably */
  private readonly commits = new Turns();
  /**
   * Stored copies this process wrote, or read back and found intact, a moment ago: key → the
   * copy's mtime then and when. A file arrives two or three times within seconds (streamed,
   * pushed ahead by the daemon, pushed by PostgreSQL); reading the copy back for each costs a
   * decompression and a hash. A copy written since (its mtime moved) is read back again.
   */
  private readonly knownIntact = new Map<string, { mtimeMs: number; at: number }>();

  constructor(readonly catalog: ServerCatalog) {}

  /** How a WAL file is stored: segments as the server's compression says, .history and .backup files plain. */
  compressionFor(file: WalFileName): Compression {
    return file.kind === 'segment' ? this.catalog.compression : 'none';
  }

  /** How an agent may send WAL segments (welcome's walCompression): compressed as the catalog stores them, when it is zstd. */
  wireCompression(): WireCompression | undefined {
    return this.catalog.compression === 'zstd' ? 'zstd' : undefined;
  }

  /**
   * Opens the upload of WAL file `name`, `size` bytes whose SHA-256 the sender declares as
   * `sha256`; with `wire`, a segment whose chunks are frames so compressed (size and checksum
   * stay those of the plain bytes).
   */
  async begin(name: string, size: number, sha256: string, wire?: WireCompression): Promise<WalUpload> {
    const parsed = parseWalFileName(name);
    if (!parsed) {
      throw new BarmanError(ErrorCode.INVALID_NAME, `"${name.slice(0, 80)}" is not a WAL file name`, NAME_HINT);
    }
    if (wire && parsed.kind !== 'segment') {
      throw new BarmanError(ErrorCode.PROTOCOL, `${name}: only WAL segments are sent compressed`, 'Agent and receiver must run compatible versions of barman-ts.');
    }
    if (hasPages(parsed)) {
      const identity = await this.catalog.identity();
      const expected = identity?.segmentSize;
      if (expected !== undefined ? size !== expected : !isValidSegmentSize(size)) {
        throw invalidWal(`${name}: size ${size} bytes is not this server's WAL segment size (${expected ?? 'a power of two from 1 MB to 1 GB'})`, 'The file is truncated or not a WAL segment; PostgreSQL will retry with the complete file.');
      }
    } else if (size > MAX_SMALL_WAL_FILE) {
      throw invalidWal(`${name}: ${size} bytes is too large for a .${parsed.kind} file`);
    }
    // where the bytes go is looked up beside the transfer (a session's frames must not wait on
    // the storage): WalUpload.prepare
    return new WalUpload(this, parsed, size, sha256, wire);
  }

  /** Whether a stored copy still holds bytes hashing to `sha256`: read back, unless this process just did or wrote it. */
  async intact(stored: StoredWal, sha256: string): Promise<boolean> {
    const known = this.knownIntact.get(stored.key);
    if (stored.sha256 === sha256 && known && known.mtimeMs === stored.mtime.getTime() && Date.now() - known.at < KNOWN_INTACT_MS) return true;
    const ok = (await hashStoredWal(this.catalog, stored)) === sha256;
    if (ok && stored.sha256 === sha256) this.remember(stored);
    else this.knownIntact.delete(stored.key);
    return ok;
  }

  private remember(stored: StoredWal): void {
    this.knownIntact.delete(stored.key);
    this.knownIntact.set(stored.key, { mtimeMs: stored.mtime.getTime(), at: Date.now() });
    if (this.knownIntact.size > KNOWN_INTACT_MAX) this.knownIntact.delete(this.knownIntact.keys().next().value!);
  }

  /** After a commit of bytes that hashed to `sha256`: the copy just written is known intact (looked up beside, not waited for). */
  private rememberStored(name: string, sha256: string): void {
    void this.catalog.findWal(name).then((stored) => {
      if (stored?.sha256 === sha256) this.remember(stored);
    }, () => undefined);
  }

  /** Runs fn with the server's commit lock held. */
  withCommitLock<T>(fn: () => Promise<T>): Promise<T> {
    return this.commits.run(fn);
  }

  /**
   * Puts a complete WAL file (plain bytes hashing to `sha256`) into the catalog unless it is
   * there already; `bytes` makes them durable under a key (`place`) or drops them. Outcomes:
   * - 'stored': nothing was there (or only a damaged copy, now in errors/: `damagedAside`);
   * - 'duplicate': the same bytes are there (a copy stored before checksums gets its checksum recorded);
   * - 'conflict': different bytes are there; the new bytes are left to the caller.
   * The comparison is by the checksum in the stored key, under the commit lock. A duplicate's
   * stored copy is then read back outside the lock (other commits and the stream go on
   * meanwhile), so that an identical push repairs a copy that went bad.
   */
  async store(name: string, sha256: string, bytes: WalBytes): Promise<{ outcome: 'stored' | 'duplicate' | 'conflict'; damagedAside?: string }> {
    const catalog = this.catalog;
    const key = catalog.layout.walKey(name, sha256);
    const place = async () => {
      await bytes.beforePlace?.();
      await bytes.place(key);
      if (bytes.hashed) this.rememberStored(name, sha256);
    };
    const first = await this.withCommitLock(async () => {
      const existing = await catalog.findWal(name);
      if (!existing) {
        await place();
        return { outcome: 'stored' as const };
      }
      if (existing.sha256 === undefined) {
        if ((await hashStoredWal(catalog, existing)) !== sha256) return { outcome: 'conflict' as const };
        await catalog.recordChecksum(existing, sha256);
        await bytes.drop();
        return { outcome: 'duplicate' as const };
      }
      return existing.sha256 === sha256 ? { outcome: 'verify' as const, existing } : { outcome: 'conflict' as const };
    });
    if (first.outcome !== 'verify') return first;
    if (await this.intact(first.existing, sha256)) {
      await bytes.drop();
      return { outcome: 'duplicate' };
    }
    return this.withCommitLock(async () => {
      // read again under the lock: another identical copy may have repaired it meanwhile
      const now = await catalog.findWal(name);
      if (now?.sha256 === sha256 && (await this.intact(now, sha256))) {
        await bytes.drop();
        return { outcome: 'duplicate' as const };
      }
      const damagedAside = now ? await catalog.setAside(now, 'damaged') : undefined;
      await place();
      return { outcome: 'stored' as const, damagedAside };
    });
  }
}

/** How WalArchive.store gets a new WAL file's bytes into the catalog, or away. */
export interface WalBytes {
  /**
   * the caller hashed these bytes and they gave the SHA-256 they are stored under (the stream's
   * own segments): the copy is known intact once placed. A pushed file's SHA-256 is the agent's,
   * checked here by its CRC-32C only: its copy is read back the first time an identical one
   * arrives, so that a host that declared a checksum its bytes do not have cannot make the
   * identical, honest push of that segment a duplicate.
   */
  hashed: boolean;
  /** just before the bytes go in, with the commit lock held (record the cluster's identity) */
  beforePlace?(): Promise<void>;
  /** makes the bytes durable under `key` (the catalog key, without compression suffix) */
  place(key: string): Promise<void>;
  drop(): Promise<void>;
}

export class WalUpload implements Upload {
  private head = Buffer.alloc(0);
  private headerChecked = false;
  private systemIdentifier: string | undefined;
  private walMagic = 0;
  private pgVersion: number | undefined;
  private received = 0;
  /**
   * CRC-32C of the plain bytes received (decompressed, where frames came): checked against the
   * one the agent computed over what it read. The file is recorded under the SHA-256 the agent
   * declared before its bytes, computed by the agent from the same bytes; every way out of the
   * catalog checks that SHA-256 (a copy whose bytes are not those is refused as damaged).
   */
  private crc = 0;
  private readonly crc32c = crc32c();
  /** a .history or .backup file's bytes, checked before it is stored (at most MAX_SMALL_WAL_FILE) */
  private readonly content: Buffer[] = [];
  /** where a damaged stored copy went when this upload replaced it (for the log) */
  replacedDamaged: string | undefined;
  /** compressed frames handed to write() so far */
  private framesStarted = 0;
  /** the last compressed frame's check, hash and write (they run in order) */
  private taking: Promise<void> = Promise.resolve();
  /** aborted: frames still in hand are dropped */
  private closed = false;

  /** where the bytes go, decided beside the transfer (see prepare) */
  private readonly prepared: Promise<Destination>;

  constructor(
    private readonly archive: WalArchive,
    readonly file: WalFileName,
    readonly size: number,
    /** what the sender declared before the bytes */
    private readonly declaredSha256: string,
    /** the chunks are frames so compressed, each of BLOCK_SIZE plain bytes (the last one fewer) */
    private readonly wire?: WireCompression,
  ) {
    this.prepared = this.prepare();
    this.prepared.catch(() => undefined); // reported by the first write or by finish
  }

  /**
   * Where the bytes go: straight to the key they will have (the final one, or, when different
   * bytes are archived under this name already, the conflict's in errors/: PostgreSQL retries a
   * refused file every minute, and the first retry after a race is kept there). When the same
   * bytes are stored already (a file arrives two or three times: streamed, pushed ahead by the
   * daemon, pushed by PostgreSQL), the stored copy is read back meanwhile: once it proves intact
   * the new bytes are only hashed, no longer compressed and written; a damaged copy gets them.
   */
  private async prepare(): Promise<Destination> {
    const { catalog } = this.archive;
    const name = this.file.name;
    const sha256 = this.declaredSha256;
    const existing = await catalog.findWal(name);
    const conflicting = existing !== undefined && existing.sha256 !== sha256 && (existing.sha256 ?? (await hashStoredWal(catalog, existing))) !== sha256;
    const key = conflicting ? catalog.layout.conflictKey(name, sha256) : catalog.layout.walKey(name, sha256);
    const compression = this.archive.compressionFor(this.file);
    // frames the agent compressed as the catalog stores them are stored as they arrived (each
    // checked first: it decompresses to the plain bytes hashed here); otherwise the plain bytes
    // go through the storage's compression
    const asSent = this.wire !== undefined && this.wire === compression;
    const writer = asSent ? await catalog.storage.openStoredWrite(key, compression) : await catalog.storage.openWrite(key, { compression, sizeHint: compression === 'none' ? this.size : undefined });
    const dest: Destination = { kind: conflicting ? 'conflict' : 'store', key, writer, asSent };
    if (existing?.sha256 === sha256) {
      dest.intact = this.archive.intact(existing, sha256).catch(() => false);
      void dest.intact.then((intact) => {
        if (intact) dest.discard = true;
      });
    }
    return dest;
  }

  get label(): string {
    return this.file.name;
  }

  /**
   * Whether the catalog holds these very bytes already: an intact copy whose recorded checksum is
   * the one declared. Then there is nothing to receive (the sender's bytes hash to that checksum).
   */
  async alreadyStored(): Promise<boolean> {
    const dest = await this.prepared;
    if (!dest.intact || !(await dest.intact)) return false;
    const now = await this.archive.withCommitLock(() => this.archive.catalog.findWal(this.file.name));
    return now?.sha256 === this.declaredSha256;
  }

  async write(chunk: Uint8Array): Promise<void> {
    if (!this.wire) return this.take(chunk, chunk);
    // this frame decompresses (on libuv's thread pool) while the one before it is checked, hashed
    // and written: at most two frames in hand, and write() returns once the one before is taken
    const expected = Math.min(BLOCK_SIZE, this.size - this.framesStarted * BLOCK_SIZE);
    this.framesStarted++;
    const decoding = this.decompress(chunk, expected);
    decoding.catch(() => undefined); // taken in order below
    const before = this.taking;
    const step = before.then(async () => {
      const plain = await decoding;
      await this.take(plain, (await this.prepared).asSent ? chunk : plain);
    });
    step.catch(() => undefined); // reported by the next write or by finish
    this.taking = step;
    await before;
  }

  /**
   * The plain bytes of one compressed chunk: exactly one zstd frame of the shape barman-ts makes
   * (checked by its headers before anything decompresses it), holding the BLOCK_SIZE plain bytes
   * of its place in the segment (the last one the rest). Anything else refuses the upload.
   */
  private async decompress(chunk: Uint8Array, expected: number): Promise<Buffer> {
    const name = this.file.name;
    if (expected <= 0) throw invalidWal(`${name}: more compressed frames than its ${this.size} bytes make`, 'Agent and receiver must run compatible versions; retry the push.');
    let plain: Buffer;
    try {
      plain = await decompressWireFrame(chunk);
    } catch (err) {
      throw invalidWal(`${name}: a chunk is not a zstd frame as barman-ts makes them (${(err as Error).message})`, 'Nothing was stored. Agent and receiver must run compatible versions of barman-ts; PostgreSQL retries the push.');
    }
    if (plain.length !== expected) {
      throw invalidWal(`${name}: a compressed frame decompresses to ${plain.length} bytes, not the ${expected} of its place in the segment`, 'Nothing was stored. PostgreSQL retries the push; check the memory of the PostgreSQL host if it repeats.');
    }
    return plain;
  }

  /** Plain bytes that arrived (`stored`: what of them goes to storage, the same bytes or their frame as sent). */
  private async take(chunk: Uint8Array, stored: Uint8Array): Promise<void> {
    if (this.closed) return;
    if (this.received + chunk.length > this.size) {
      throw invalidWal(`${this.file.name}: more bytes than the ${this.size} announced`, 'Agent and receiver must run compatible versions; retry the push.');
    }
    if (hasPages(this.file) && !this.headerChecked) {
      this.head = Buffer.concat([this.head, chunk.subarray(0, LONG_HEADER_SIZE - this.head.length)]);
      if (this.head.length >= LONG_HEADER_SIZE) await this.checkHeader();
    }
    if (!hasPages(this.file)) this.content.push(Buffer.from(chunk));
    this.received += chunk.length;
    this.crc = this.crc32c(chunk, this.crc);
    const dest = await this.prepared;
    if (dest.discard) {
      if (!dest.aborted) {
        dest.aborted = true;
        await dest.writer.abort();
      }
      return;
    }
    await dest.writer.write(stored);
  }

  private async checkHeader(): Promise<void> {
    const name = this.file.name;
    const header = readLongHeader(this.head);
    if (typeof header === 'string') throw invalidWal(`${name}: ${header}`);
    if (header.segmentSize !== this.size) {
      throw invalidWal(`${name}: page header says segment size ${header.segmentSize}, file has ${this.size} bytes`);
    }
    let start: bigint;
    try {
      start = segmentStartLsn(this.file.segment!, header.segmentSize);
    } catch (err) {
      throw invalidWal(`${name}: ${(err as Error).message}`, 'The file was renamed or comes from elsewhere; archive only what PostgreSQL hands to archive_command.');
    }
    if (header.pageAddress !== start) {
      throw invalidWal(`${name}: first page address ${formatLsn(header.pageAddress)} does not match the file name (expected ${formatLsn(start)})`, 'The file was renamed or comes from elsewhere; archive only what PostgreSQL hands to archive_command.');
    }
    // The first segment of a new timeline starts with pages copied from the old one, so the
    // page's timeline may be lower than the name's, never higher.
    if (header.timeline > this.file.timeline) {
      throw invalidWal(`${name}: page timeline ${header.timeline} is newer than the file name's timeline ${this.file.timeline}`);
    }
    this.systemIdentifier = header.systemIdentifier;
    this.walMagic = header.magic;
    this.pgVersion = header.pgVersion;
    await this.checkIdentity();
    this.headerChecked = true;
  }

  /** Refuses WAL of another cluster (system identifier) or another major version (page magic). */
  private async checkIdentity(): Promise<void> {
    const identity = await this.archive.catalog.identity();
    if (!identity || this.systemIdentifier === undefined) return;
    const name = this.file.name;
    if (identity.systemIdentifier !== this.systemIdentifier) {
      throw new BarmanError(ErrorCode.WAL_FOREIGN, `${name}: system identifier ${this.systemIdentifier} is not this server's (${identity.systemIdentifier}); refusing WAL from another cluster`, `Check that this agent's server = ${this.archive.catalog.server} points at the right receiver section; a new cluster (initdb, pg_upgrade) needs its own section or a fresh catalog.`);
    }
    if (identity.walMagic !== undefined && identity.walMagic !== this.walMagic) {
      throw new BarmanError(ErrorCode.WAL_FOREIGN, `${name}: WAL page magic 0x${this.walMagic.toString(16)} differs from this server's 0x${identity.walMagic.toString(16)} (another PostgreSQL version)`, 'After a major upgrade, archive into a new server section.');
    }
  }

  /** A .history or .backup file must be one PostgreSQL could read: garbage is never stored, so it never blocks a recovery or the right file. */
  private async checkContent(): Promise<void> {
    const name = this.file.name;
    const text = Buffer.concat(this.content).toString('utf8');
    try {
      if (this.file.kind === 'history') validateHistory(text, this.file.timeline);
      else if (this.file.kind === 'backup') validateBackupHistory(text, name, (await this.archive.catalog.identity())?.segmentSize);
    } catch (err) {
      if (!(err instanceof RangeError)) throw err;
      const what = this.file.kind === 'history' ? 'a timeline history file' : 'a backup history file';
      throw invalidWal(`${name} is not ${what} PostgreSQL wrote: ${err.message}`, `Nothing was stored. archive_command must pass PostgreSQL's own file (%p); push the real ${name} from the cluster's pg_wal and it is accepted.`);
    }
  }

  /** Completes the upload with the end's checksums; resolves only when the file is durable under its final key. */
  async finish(senderSha256: string | undefined, senderCrc32c: string | undefined): Promise<StoreResult> {
    const dest = await this.prepared;
    try {
      if (!senderSha256 || !senderCrc32c) throw new BarmanError(ErrorCode.PROTOCOL, `${this.file.name}: the end of a WAL file carries no ${senderSha256 ? 'CRC-32C' : 'SHA-256'}`, 'Install the same barman-ts version on the agent and the receiver.');
      await this.taking;
      return await this.complete(senderSha256, senderCrc32c, dest);
    } finally {
      // whatever was not committed leaves nothing behind (a no-op after commit)
      await dest.writer.abort().catch(() => undefined);
    }
  }

  private async complete(senderSha256: string, senderCrc32c: string, dest: Destination): Promise<StoreResult> {
    const name = this.file.name;
    if (this.received !== this.size) {
      throw invalidWal(`${name}: received ${this.received} of ${this.size} bytes`, 'The transfer was cut short; PostgreSQL will retry.');
    }
    if (hasPages(this.file) && !this.headerChecked) throw invalidWal(`${name}: too short for a WAL page header`);
    const sha256 = this.declaredSha256;
    const catalog = this.archive.catalog;
    if (senderSha256 !== sha256) {
      throw new BarmanError(ErrorCode.CHECKSUM_MISMATCH, `${name}: the SHA-256 at the end of the bytes (${senderSha256.slice(0, 12)}…) differs from the one declared before them (${sha256.slice(0, 12)}…)`, 'The file changed while it was read; the push is retried by PostgreSQL.');
    }
    const crc = crc32cHex(this.crc);
    if (crc !== senderCrc32c) {
      throw new BarmanError(ErrorCode.CHECKSUM_MISMATCH, `${name}: checksum of the bytes received (CRC-32C ${crc}) differs from the agent's (${senderCrc32c.slice(0, 8)})`, 'The file changed while it was read or was damaged in transit; the push is retried by PostgreSQL.');
    }
    await this.checkContent();
    if (dest.kind === 'conflict') return this.keepConflict(dest, sha256);
    if (await dest.intact) {
      // an intact identical copy is stored: these bytes were checked, not kept; is it still there?
      // (retention may have removed it meanwhile)
      const now = await this.archive.withCommitLock(() => catalog.findWal(name));
      if (now?.sha256 === sha256) return 'duplicate';
      if (dest.aborted) throw new BarmanError(ErrorCode.STORAGE, `${name} left the catalog while an identical copy arrived; that copy was not kept`, 'Retention removed it meanwhile. PostgreSQL retries archive_command, and the retry stores it again.');
    }
    const result = await this.archive.store(name, sha256, {
      hashed: false,
      beforePlace: async () => {
        // a concurrent upload may have recorded the identity since the header was checked
        await this.checkIdentity();
        if (this.systemIdentifier !== undefined) {
          await catalog.learnIdentity({ systemIdentifier: this.systemIdentifier, segmentSize: this.size, walMagic: this.walMagic, pgVersion: this.pgVersion });
        }
      },
      place: async (key) => {
        if (key !== dest.key || dest.aborted) throw new BarmanError(ErrorCode.INTERNAL, `${name}: written to ${dest.key}, to be stored under ${key}`, 'This is a bug in barman-ts; please report it.');
        await dest.writer.commit();
      },
      drop: () => dest.writer.abort(),
    });
    if (result.outcome === 'conflict') {
      // different bytes were stored under this name while these arrived: the next retry keeps them
      throw new BarmanError(ErrorCode.WAL_CONFLICT, `${name} was archived with different content while this copy arrived; this copy was not kept`, 'Two clusters may be archiving into the same server section, or a restored copy still has archive_command set. PostgreSQL retries: that copy is then kept under errors/ for comparison.');
    }
    this.replacedDamaged = result.damagedAside;
    return result.outcome;
  }

  /** Different bytes are archived under this name: these are kept under errors/ (once per content), and refused. */
  private async keepConflict(dest: Destination, sha256: string): Promise<never> {
    const catalog = this.archive.catalog;
    const existing = await catalog.storage.find(dest.key);
    const aside = existing?.key ?? (await dest.writer.commit()).key;
    throw new BarmanError(ErrorCode.WAL_CONFLICT, `${this.file.name} is already archived with different content; the new copy (SHA-256 ${sha256.slice(0, 12)}…) was kept as ${catalog.where(aside)}`, 'Two clusters may be archiving into the same server section, or a restored copy still has archive_command set. Compare the two files before deleting either.');
  }

  async abort(): Promise<void> {
    this.closed = true;
    await this.taking.catch(() => undefined);
    await this.prepared.then((dest) => dest.writer.abort(), () => undefined);
  }
}

/** Where an upload's bytes go (WalUpload.prepare). */
interface Destination {
  kind: 'store' | 'conflict';
  /** the catalog key they are written to */
  key: string;
  writer: ObjectWriter;
  /** the writer takes the sender's compressed frames as they are (else plain bytes) */
  asSent: boolean;
  /** the same bytes are stored already: resolves true once that copy read back intact */
  intact?: Promise<boolean>;
  /** from here on the bytes are only hashed (the stored copy is intact) */
  discard?: boolean;
  /** the writer was aborted for that */
  aborted?: boolean;
}
