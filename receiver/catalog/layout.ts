// Every key of a server's catalog, and every local path it keeps beside it: the one place that
// knows where things are (docs/catalog.md). Keys are relative to the storage's root (barman_home
// with storage = posix, the bucket and s3_prefix with s3); the compression suffix a stored key
// may carry is the storage's (receiver/storage/compression.ts), never spelled here.
//
//   <srv>/wals/<tli+log>/<segment>-<sha256>       segments and .partial segments (16 hex digits of dir)
//   <srv>/wals/<tli>.history-<sha256>             timeline history files
//   <srv>/wals/<segment>.<offset>.backup-<sha256> backup history files
//   <srv>/base/<id>/backup.info                   the backup's record, written first (STARTED) and last
//   <srv>/base/<id>/backup_manifest               PostgreSQL's manifest of the plain files (plain JSON)
//   <srv>/base/<id>/tablespace_map
//   <srv>/base/<id>/contents.json                 the backup's directories, and where each file is stored
//   <srv>/base/<id>/data/<path>                   the backup's larger files, each under its final key
//   <srv>/base/<id>/bundles/<n>                   its small files, many to an object (offsets in contents.json)
//   <srv>/errors/<name>.<when>.<reason>           refused, conflicting or damaged copies, kept
//   <srv>/errors/reviewed/                        those a DBA has dealt with (moved there: check no longer reports them)
//   <srv>/identity.json, <srv>/streaming.json     what the catalog learned of its cluster
//   <srv>/agent.json                              written when an agent daemon first attached: from then on one is expected
//   <srv>/drills.json                             the restore drills run of this server's backups, newest last
//   <srv>/lock/<generation>                       the lease of the one writer (storage = s3)
//
// Small files are bundled, many to an object: readers find a backup's files through
// contents.json, never by guessing keys, and its entry of a bundled file names the bundle and
// where in it the file's own compressed bytes are.
//
// Local state, always under barman_home/<srv>/ on the receiver host, never catalog content:
// streaming/<segment>.partial (the segment being streamed), catalog.lock (posix lock holder),
// catalog.key (what keep, delete and cron show a running serve), wal-verify.json (check's cursor).

import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { isWalDirectory, parseWalFileName, walDirectoryOf } from '../../shared/wal/names';
import { isBackupId } from '../../shared/backup/info';
import type { Compression } from '../storage/compression';
import type { StoredObject } from '../storage/storage';

const SHA256 = /^[0-9a-f]{64}$/;
const SHA256_SUFFIX = /-([0-9a-f]{64})$/;
/** a path segment a key may hold as it is (storage keys allow [A-Za-z0-9._-], not a leading '.' or '_' here) */
const PLAIN_SEGMENT = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const COMPRESSED_ENDING = /\.(zst|lz4|gz)$/;

/** A stored copy of a WAL file (segment, .partial, .history or .backup). */
export interface StoredWal {
  /** the WAL file name, as PostgreSQL names it */
  name: string;
  /** the storage key it is stored under, compression suffix included */
  key: string;
  compression: Compression;
  /** SHA-256 of the plain bytes, recorded with the file; undefined for a file stored before checksums */
  sha256: string | undefined;
  /** bytes as stored */
  size: number;
  /** when it was stored */
  mtime: Date;
}

/** The last segment of a catalog key (a file name). */
function baseName(key: string): string {
  return key.slice(key.lastIndexOf('/') + 1);
}

/**
 * One path component of a backup file as a key segment: as it is when a key may hold it (all of
 * PostgreSQL's own names), else `_` and the SHA-256 of the name (names with spaces or other
 * characters, names starting with '.' or '_', names that end like a compressed object): short
 * enough for any filesystem, and never read back as a name, for contents.json records each
 * file's key. A plain segment never starts with '_', so the two forms cannot collide.
 */
export function encodePathSegment(segment: string): string {
  if (PLAIN_SEGMENT.test(segment) && !COMPRESSED_ENDING.test(segment)) return segment;
  return `_${createHash('sha256').update(segment, 'utf8').digest('hex')}`;
}

export class CatalogLayout {
  constructor(readonly server: string) {}

  /** everything of this server in the storage */
  get root(): string {
    return `${this.server}/`;
  }

  // ---- WAL ----

  get walPrefix(): string {
    return `${this.server}/wals/`;
  }

  /** Where the copies of WAL file `name` are: list this prefix and keep those parseWal names `name`. */
  walCopiesPrefix(name: string): string {
    return this.walDirOf(name) + name;
  }

  private walDirOf(name: string): string {
    const parsed = parseWalFileName(name);
    if (!parsed) throw new RangeError(`not an archivable WAL file name: ${name}`);
    if (parsed.kind === 'history' || parsed.kind === 'backup') return this.walPrefix;
    return `${this.walPrefix}${walDirectoryOf(name)}/`;
  }

  /** The key (without compression suffix) of WAL file `name` whose plain bytes hash to `sha256`. */
  walKey(name: string, sha256: string): string {
    if (!SHA256.test(sha256)) throw new RangeError(`not a SHA-256: ${sha256}`);
    return `${this.walDirOf(name)}${name}-${sha256}`;
  }

  /** The directories of segments (timeline + log), as listed under walPrefix. */
  isSegmentDir(name: string): boolean {
    return isWalDirectory(name);
  }

  /** What a stored object under wals/ holds, or undefined when it is no WAL file of this catalog. */
  parseWal(stored: StoredObject): StoredWal | undefined {
    if (!stored.plainKey.startsWith(this.walPrefix)) return undefined;
    let name = baseName(stored.plainKey);
    const m = SHA256_SUFFIX.exec(name);
    const sha256 = m?.[1];
    if (m) name = name.slice(0, m.index);
    if (!parseWalFileName(name)) return undefined;
    // a segment must sit in its own directory, a history or backup file directly in wals/
    if (this.walDirOf(name) !== stored.plainKey.slice(0, stored.plainKey.lastIndexOf('/') + 1)) return undefined;
    return { name, key: stored.key, compression: stored.compression, sha256, size: stored.size, mtime: stored.mtime };
  }

  // ---- errors/ ----

  get errorsPrefix(): string {
    return `${this.server}/errors/`;
  }

  /** Where a copy set aside for `reason` (damaged, streamed-invalid, ...) goes, named by the time. */
  errorKey(name: string, reason: string, now = new Date()): string {
    const stamp = now.toISOString().replace(/[-:]/g, '').replace(/\..*$/, '');
    return `${this.errorsPrefix}${name}.${stamp}.${reason}`;
  }

  /** errors/ files a DBA has dealt with */
  get reviewedErrorsPrefix(): string {
    return `${this.errorsPrefix}reviewed/`;
  }

  /** The WAL file a key of errors/ holds a copy of, and why it is there (as errorKey and conflictKey name them). */
  parseErrorKey(plainKey: string): { wal: string; reason: string } | undefined {
    if (!plainKey.startsWith(this.errorsPrefix)) return undefined;
    const m = /^(.+)\.(?:\d{8}T\d{6}|[0-9a-f]{16})\.([a-z-]+)$/.exec(baseName(plainKey));
    return m && parseWalFileName(m[1]!) ? { wal: m[1]!, reason: m[2]! } : undefined;
  }

  /** Where a conflicting copy of `name` is kept: one per distinct content. */
  conflictKey(name: string, sha256: string): string {
    return `${this.errorsPrefix}${name}.${sha256.slice(0, 16)}.conflict`;
  }

  // ---- small records ----

  get identityKey(): string {
    return `${this.server}/identity.json`;
  }

  get streamingRecordKey(): string {
    return `${this.server}/streaming.json`;
  }

  get agentRecordKey(): string {
    return `${this.server}/agent.json`;
  }

  get drillsKey(): string {
    return `${this.server}/drills.json`;
  }

  /** the lease of the catalog's one writer (object storage) */
  get leaseKey(): string {
    return `${this.server}/lock`;
  }

  // ---- backups ----

  get backupsPrefix(): string {
    return `${this.server}/base/`;
  }

  /** The backup IDs among the names listed directly under backupsPrefix. */
  isBackupDir(name: string): boolean {
    return isBackupId(name);
  }

  backupPrefix(id: string): string {
    if (!isBackupId(id)) throw new RangeError(`not a backup ID: ${id}`);
    return `${this.backupsPrefix}${id}/`;
  }

  backupInfoKey(id: string): string {
    return `${this.backupPrefix(id)}backup.info`;
  }

  manifestKey(id: string): string {
    return `${this.backupPrefix(id)}backup_manifest`;
  }

  /** the catalog's record of the backup's directories and of where each of its files is stored */
  contentsKey(id: string): string {
    return `${this.backupPrefix(id)}contents.json`;
  }

  tablespaceMapKey(id: string): string {
    return `${this.backupPrefix(id)}tablespace_map`;
  }

  backupDataPrefix(id: string): string {
    return `${this.backupPrefix(id)}data/`;
  }

  backupBundlesPrefix(id: string): string {
    return `${this.backupPrefix(id)}bundles/`;
  }

  /** The key (without compression suffix) of the backup's `n`th bundle of small files (from 1). */
  backupBundleKey(id: string, n: number): string {
    return `${this.backupBundlesPrefix(id)}${String(n).padStart(6, '0')}`;
  }

  /** The key (without compression suffix) of a backup's file at relative path `path` (already checked safe). */
  backupFileKey(id: string, path: string): string {
    return this.backupDataPrefix(id) + path.split('/').map(encodePathSegment).join('/');
  }

  // ---- local state under barman_home/<srv>/ ----

  localDir(barmanHome: string): string {
    return join(barmanHome, this.server);
  }

  streamingDir(barmanHome: string): string {
    return join(this.localDir(barmanHome), 'streaming');
  }

  /** the segment being streamed: streaming/<segment>.partial */
  streamingPartialPath(barmanHome: string, segment: string): string {
    return join(this.streamingDir(barmanHome), `${segment}.partial`);
  }

  /** The segment a file in streaming/ holds, or undefined for any other file. */
  streamingPartialSegment(file: string): string | undefined {
    const parsed = parseWalFileName(file);
    return parsed?.kind === 'partial' ? parsed.segment : undefined;
  }

  lockPath(barmanHome: string): string {
    return join(this.localDir(barmanHome), 'catalog.lock');
  }

  changeKeyPath(barmanHome: string): string {
    return join(this.localDir(barmanHome), 'catalog.key');
  }

  walVerifyCursorPath(barmanHome: string): string {
    return join(this.localDir(barmanHome), 'wal-verify.json');
  }
}
