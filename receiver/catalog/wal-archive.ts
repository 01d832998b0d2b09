// Where a WAL file becomes durable, and the only way one is read back. An upload is validated as
// it arrives (name, size, page header, system identifier; a .history or .backup file's content,
// which must be one PostgreSQL can read), hashed, written to incoming/, fsynced, compared with
// the sender's checksum, and only then renamed into wals/ under a name that carries that
// checksum. Identical re-sends are a success (and repair a stored copy that went bad); different
// bytes under an existing name are refused and kept under errors/. Every read checks the bytes
// against the recorded checksum.

import { createReadStream } from 'node:fs';
import { createGunzip } from 'node:zlib';
import type { Readable } from 'node:stream';
import type { Compression } from '../../shared/config/receiver';
import { BarmanError, ErrorCode } from '../../shared/errors';
import { newHash } from '../../shared/checksum';
import { validateBackupHistory } from '../../shared/wal/backup-history';
import { LONG_HEADER_SIZE, readLongHeader } from '../../shared/wal/header';
import { validateHistory } from '../../shared/wal/history';
import { formatLsn } from '../../shared/wal/lsn';
import { isValidSegmentSize, parseWalFileName, segmentStartLsn, type WalFileName } from '../../shared/wal/names';
import { exists, IncomingFile, storageError } from '../storage/posix';
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

/** A stored WAL file whose bytes no longer match the checksum recorded when it was stored. */
export function damagedWal(catalog: ServerCatalog, stored: StoredWal, damage: Damage): BarmanError {
  const what = 'sha256' in damage ? `its bytes hash to ${damage.sha256.slice(0, 12)}…, not to the ${stored.sha256?.slice(0, 12)}… recorded when it was stored` : `it no longer decompresses (${damage.unreadable})`;
  return new BarmanError(
    ErrorCode.CHECKSUM_MISMATCH,
    `${stored.name} in the catalog of ${catalog.server} is damaged: ${what}; refusing to hand it out`,
    `Do not replay past it. If a PostgreSQL host still has ${stored.name} in pg_wal, push it again (barman-agent push <pg_wal>/${stored.name}): an identical copy replaces the damaged one. Otherwise recover to a point before it, and check the backup host's disk (barman-receiver check ${catalog.server} --verify-wal).`,
  );
}

/** A stored WAL file's bytes as stored (compressed or not), unchecked: for hashing. */
function openStoredBytes(stored: StoredWal): Readable {
  const raw = createReadStream(stored.path, { highWaterMark: 1024 * 1024 });
  if (stored.compression === 'none') return raw;
  if (stored.compression === 'gzip') return raw.pipe(createGunzip());
  throw new BarmanError(ErrorCode.STORAGE, `${stored.path} uses ${stored.compression}, which this receiver cannot read`, 'Run a barman-ts version with that compression, or set compression = gzip.');
}

/** A decompression failure (zlib's Z_* codes): the stored bytes are damaged, not the disk unreadable. */
function isDecodeError(err: unknown): err is Error {
  return err instanceof Error && typeof (err as NodeJS.ErrnoException).code === 'string' && (err as NodeJS.ErrnoException).code!.startsWith('Z_');
}

/** SHA-256 of a stored WAL file's plain bytes as they are now, or why they cannot be decompressed. */
async function hashStored(stored: StoredWal): Promise<Damage> {
  const hash = newHash();
  try {
    for await (const chunk of openStoredBytes(stored)) hash.update(chunk as Buffer);
  } catch (err) {
    if (isDecodeError(err)) return { unreadable: err.message };
    throw err;
  }
  return { sha256: hash.digest('hex') };
}

/** SHA-256 of a stored WAL file's plain bytes as they are now ('' when they no longer decompress). */
export async function hashStoredWal(stored: StoredWal): Promise<string> {
  const h = await hashStored(stored);
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
    for await (const chunk of openStoredBytes(stored)) {
      const buf = chunk as Buffer;
      hash.update(buf);
      if (held) yield held;
      held = buf;
    }
  } catch (err) {
    if (isDecodeError(err)) throw damagedWal(catalog, stored, { unreadable: err.message });
    throw err;
  }
  if (stored.sha256 !== undefined) {
    const actual = hash.digest('hex');
    if (actual !== stored.sha256) throw damagedWal(catalog, stored, { sha256: actual });
  }
  if (held) yield held;
}

/** Reads a whole small stored WAL file (.history), checked like readStoredWal. */
export async function readSmallStoredWal(catalog: ServerCatalog, stored: StoredWal): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of readStoredWal(catalog, stored)) parts.push(chunk);
  return Buffer.concat(parts);
}

/** Checks a stored WAL file against its recorded checksum: 'ok', 'damaged' (with the actual hash) or 'unchecked' (stored before checksums). */
export async function verifyStoredWal(stored: StoredWal): Promise<{ state: 'ok' } | { state: 'unchecked' } | { state: 'damaged'; damage: Damage }> {
  if (stored.sha256 === undefined) return { state: 'unchecked' };
  const damage = await hashStored(stored);
  return 'sha256' in damage && damage.sha256 === stored.sha256 ? { state: 'ok' } : { state: 'damaged', damage };
}

/** Segments and .partial segments are made of WAL pages and get the page header checks. */
function hasPages(file: WalFileName): boolean {
  return file.kind === 'segment' || file.kind === 'partial';
}

export class WalArchive {
  /** commits of one server are serialised: identity is set once, duplicates are detected reliably */
  private commitLock: Promise<unknown> = Promise.resolve();

  constructor(readonly catalog: ServerCatalog, private readonly compression: Compression) {}

  async begin(name: string, size: number): Promise<WalUpload> {
    const parsed = parseWalFileName(name);
    if (!parsed) {
      throw new BarmanError(ErrorCode.INVALID_NAME, `"${name.slice(0, 80)}" is not a WAL file name`, NAME_HINT);
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
    await this.catalog.ensureLayout();
    const compression = parsed.kind === 'segment' ? this.compression : 'none';
    try {
      const incoming = await IncomingFile.create(this.catalog.incomingDir, name, compression);
      incoming.syncEarly = true;
      return new WalUpload(this, parsed, size, compression, incoming);
    } catch (err) {
      throw storageError(err, `cannot create a file in ${this.catalog.incomingDir}`);
    }
  }

  /** Runs fn with the server's commit lock held. */
  withCommitLock<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.commitLock.then(fn, fn);
    this.commitLock = run.catch(() => undefined);
    return run;
  }

  /**
   * Puts a complete WAL file (plain bytes hashing to `sha256`) into the catalog unless it is
   * there already; `file` moves the new bytes to a path (`place`) or drops them. Outcomes:
   * - 'stored': nothing was there (or only a damaged copy, now in errors/: `damagedAside`);
   * - 'duplicate': the same bytes are there (a copy stored before checksums gets its checksum recorded);
   * - 'conflict': different bytes are there; the new bytes are left to the caller.
   * The comparison is by the checksum in the stored name, under the commit lock. A duplicate's
   * stored copy is then read back outside the lock (other commits and the stream go on
   * meanwhile), so that an identical push repairs a copy that went bad on disk.
   */
  async store(name: string, sha256: string, compression: Compression, file: StoreSteps): Promise<{ outcome: 'stored' | 'duplicate' | 'conflict'; damagedAside?: string }> {
    const catalog = this.catalog;
    const place = async () => {
      await file.beforePlace?.();
      await file.place(catalog.walPath(name, sha256, compression));
    };
    const first = await this.withCommitLock(async () => {
      const existing = await catalog.findWal(name);
      if (!existing) {
        await place();
        return { outcome: 'stored' as const };
      }
      if (existing.sha256 === undefined) {
        if ((await hashStoredWal(existing)) !== sha256) return { outcome: 'conflict' as const };
        await catalog.recordChecksum(existing, sha256);
        await file.drop();
        return { outcome: 'duplicate' as const };
      }
      return existing.sha256 === sha256 ? { outcome: 'verify' as const, existing } : { outcome: 'conflict' as const };
    });
    if (first.outcome !== 'verify') return first;
    if ((await hashStoredWal(first.existing)) === sha256) {
      await file.drop();
      return { outcome: 'duplicate' };
    }
    return this.withCommitLock(async () => {
      // read again under the lock: another identical copy may have repaired it meanwhile
      const now = await catalog.findWal(name);
      if (now?.sha256 === sha256 && (await hashStoredWal(now)) === sha256) {
        await file.drop();
        return { outcome: 'duplicate' as const };
      }
      const damagedAside = now ? await catalog.setAside(now, 'damaged') : undefined;
      await place();
      return { outcome: 'stored' as const, damagedAside };
    });
  }
}

/** How WalArchive.store moves a new WAL file's bytes: into the catalog, or away. */
export interface StoreSteps {
  /** just before the bytes go in, with the commit lock held (record the cluster's identity) */
  beforePlace?(): Promise<void>;
  place(finalPath: string): Promise<void>;
  drop(): Promise<void>;
}

export class WalUpload implements Upload {
  private head = Buffer.alloc(0);
  private headerChecked = false;
  private systemIdentifier: string | undefined;
  private walMagic = 0;
  private pgVersion: number | undefined;
  /** a .history or .backup file's bytes, checked before it is stored (at most MAX_SMALL_WAL_FILE) */
  private readonly content: Buffer[] = [];
  /** where a damaged stored copy went when this upload replaced it (for the log) */
  replacedDamaged: string | undefined;

  constructor(private readonly archive: WalArchive, readonly file: WalFileName, readonly size: number, private readonly compression: Compression, private readonly incoming: IncomingFile) {}

  get label(): string {
    return this.file.name;
  }

  async write(chunk: Uint8Array): Promise<void> {
    if (this.incoming.size + chunk.length > this.size) {
      throw invalidWal(`${this.file.name}: more bytes than the ${this.size} announced`, 'Agent and receiver must run compatible versions; retry the push.');
    }
    if (hasPages(this.file) && !this.headerChecked) {
      this.head = Buffer.concat([this.head, chunk.subarray(0, LONG_HEADER_SIZE - this.head.length)]);
      if (this.head.length >= LONG_HEADER_SIZE) await this.checkHeader();
    }
    if (!hasPages(this.file)) this.content.push(Buffer.from(chunk));
    try {
      await this.incoming.write(chunk);
    } catch (err) {
      throw storageError(err, `cannot write ${this.incoming.tmpPath}`);
    }
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

  /** Completes the upload; resolves only when the file is durable under its final name. */
  async finish(senderSha256: string): Promise<StoreResult> {
    const name = this.file.name;
    if (this.incoming.size !== this.size) {
      throw invalidWal(`${name}: received ${this.incoming.size} of ${this.size} bytes`, 'The transfer was cut short; PostgreSQL will retry.');
    }
    if (hasPages(this.file) && !this.headerChecked) throw invalidWal(`${name}: too short for a WAL page header`);
    let sha256: string;
    try {
      sha256 = await this.incoming.finish();
    } catch (err) {
      throw storageError(err, `cannot flush ${this.incoming.tmpPath}`);
    }
    const catalog = this.archive.catalog;
    if (sha256 !== senderSha256) {
      await this.incoming.discard();
      throw new BarmanError(ErrorCode.CHECKSUM_MISMATCH, `${name}: checksum of the bytes received (${sha256.slice(0, 12)}…) differs from the agent's (${senderSha256.slice(0, 12)}…)`, 'The file changed while it was read or was damaged in transit; the push is retried by PostgreSQL.');
    }
    try {
      await this.checkContent();
    } catch (err) {
      await this.incoming.discard();
      throw err;
    }
    const result = await this.archive.store(name, sha256, this.compression, {
      beforePlace: async () => {
        // a concurrent upload may have recorded the identity since the header was checked
        await this.checkIdentity();
        if (this.systemIdentifier !== undefined) {
          await catalog.learnIdentity({ systemIdentifier: this.systemIdentifier, segmentSize: this.size, walMagic: this.walMagic, pgVersion: this.pgVersion });
        }
      },
      place: async (finalPath) => {
        try {
          await this.incoming.commit(finalPath);
        } catch (err) {
          throw storageError(err, `cannot store ${name}`);
        }
      },
      drop: () => this.incoming.discard(),
    }).catch(async (err: unknown) => {
      await this.incoming.discard();
      throw err;
    });
    if (result.outcome === 'conflict') {
      // named by content: PostgreSQL retries the same file every minute, one copy is enough
      const aside = catalog.conflictPath(name, sha256);
      if (await exists(aside)) await this.incoming.discard();
      else await this.incoming.commit(aside);
      throw new BarmanError(ErrorCode.WAL_CONFLICT, `${name} is already archived with different content; the new copy was kept as ${aside}`, 'Two clusters may be archiving into the same server section, or a restored copy still has archive_command set. Compare the two files before deleting either.');
    }
    this.replacedDamaged = result.damagedAside;
    return result.outcome;
  }

  async abort(): Promise<void> {
    await this.incoming.discard();
  }
}
