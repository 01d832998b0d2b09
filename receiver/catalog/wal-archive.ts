// Where a WAL file becomes durable. An upload is validated as it arrives (name, size, page
// header, system identifier), hashed, written to incoming/, fsynced, compared with the sender's
// checksum, and only then renamed into wals/. Identical re-sends are a success; different bytes
// under an existing name are refused and kept under errors/.

import { createReadStream } from 'node:fs';
import { createGunzip } from 'node:zlib';
import type { Readable } from 'node:stream';
import type { Compression } from '../../shared/config/receiver';
import { BarmanError, ErrorCode } from '../../shared/errors';
import { newHash } from '../../shared/checksum';
import { LONG_HEADER_SIZE, readLongHeader } from '../../shared/wal/header';
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

/** Opens a stored WAL file as plain bytes. */
export function openStoredWal(stored: StoredWal): Readable {
  const raw = createReadStream(stored.path, { highWaterMark: 1024 * 1024 });
  if (stored.compression === 'none') return raw;
  if (stored.compression === 'gzip') return raw.pipe(createGunzip());
  throw new BarmanError(ErrorCode.STORAGE, `${stored.path} uses ${stored.compression}, which this receiver cannot read`, 'Run a barman-ts version with that compression, or set compression = gzip.');
}

export async function hashStoredWal(stored: StoredWal): Promise<string> {
  const hash = newHash();
  for await (const chunk of openStoredWal(stored)) hash.update(chunk as Buffer);
  return hash.digest('hex');
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
}

export class WalUpload implements Upload {
  private head = Buffer.alloc(0);
  private headerChecked = false;
  private systemIdentifier: string | undefined;
  private walMagic = 0;
  private pgVersion: number | undefined;

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
    return this.archive.withCommitLock(async () => {
      // a concurrent upload may have recorded the identity since the header was checked
      try {
        await this.checkIdentity();
      } catch (err) {
        await this.incoming.discard();
        throw err;
      }
      const existing = await catalog.findWal(name);
      if (existing) {
        if ((await hashStoredWal(existing)) === sha256) {
          await this.incoming.discard();
          return 'duplicate' as const;
        }
        // named by content: PostgreSQL retries the same file every minute, one copy is enough
        const aside = catalog.conflictPath(name, sha256);
        if (await exists(aside)) await this.incoming.discard();
        else await this.incoming.commit(aside);
        throw new BarmanError(ErrorCode.WAL_CONFLICT, `${name} is already archived with different content; the new copy was kept as ${aside}`, 'Two clusters may be archiving into the same server section, or a restored copy still has archive_command set. Compare the two files before deleting either.');
      }
      if (this.systemIdentifier !== undefined) {
        try {
          await catalog.learnIdentity({ systemIdentifier: this.systemIdentifier, segmentSize: this.size, walMagic: this.walMagic, pgVersion: this.pgVersion });
        } catch (err) {
          await this.incoming.discard();
          throw err;
        }
      }
      try {
        await this.incoming.commit(catalog.walPath(name, this.compression));
      } catch (err) {
        throw storageError(err, `cannot store ${name}`);
      }
      return 'stored' as const;
    });
  }

  async abort(): Promise<void> {
    await this.incoming.discard();
  }
}
