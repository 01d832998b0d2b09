// backup_manifest in PostgreSQL's own format, as that server's pg_basebackup writes it, so its
// pg_verifybackup accepts our backups: version 1 for PostgreSQL 13-16; version 2 from 17, which
// adds the cluster's System-Identifier (pg_verifybackup 17 checks it against global/pg_control).
// The Manifest-Checksum is the SHA-256 of every byte before the "Manifest-Checksum" key.
// Each file's checksum names its algorithm, as PostgreSQL's does: CRC32C (pg_basebackup's default,
// what barman-ts writes unless backup_checksum = sha256) or SHA256 (what barman-ts wrote before);
// every reader verifies a file with the algorithm its entry records.

import { createHash, type Hash } from 'node:crypto';
import { crc32c, crc32cHex } from '../checksum';

/** A file checksum algorithm, as backup_manifest names it. */
export type ChecksumAlgorithm = 'CRC32C' | 'SHA256';

export interface ManifestFile {
  path: string;
  size: number;
  /** seconds since the epoch */
  mtime: number;
  /** undefined: the entry has no checksum (pg_basebackup --manifest-checksums=none) */
  checksumAlgorithm: ChecksumAlgorithm | undefined;
  /** lowercase hex as the manifest writes it; '' without an algorithm */
  checksum: string;
}

/**
 * A CRC-32C as backup_manifest writes it: PostgreSQL hex-encodes the uint32 as it lies in memory
 * (pg_checksum_final copies it), so the hex is of its little-endian bytes.
 */
export function crc32cManifestHex(value: number): string {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32LE(value >>> 0);
  return b.toString('hex');
}

/** A file's checksum with its algorithm, as a manifest entry records it. */
export interface FileChecksumValue {
  algorithm: ChecksumAlgorithm;
  checksum: string;
}

/** The CRC-32C a manifest records (little-endian hex) as the wire carries it: crc32cHex of the value. */
export function crc32cWireHex(manifestHex: string): string {
  return crc32cHex(Buffer.from(manifestHex, 'hex').readUInt32LE(0));
}

/** A running checksum of one file's bytes in `algorithm`; digest() gives the manifest's hex. */
export interface FileChecksum {
  update(data: Uint8Array): void;
  digest(): string;
}

export function fileChecksum(algorithm: ChecksumAlgorithm): FileChecksum {
  if (algorithm === 'SHA256') {
    const hash: Hash = createHash('sha256');
    return { update: (data) => void hash.update(data), digest: () => hash.digest('hex') };
  }
  const crc = crc32c();
  let value = 0;
  return { update: (data) => void (value = crc(data, value)), digest: () => crc32cManifestHex(value) };
}

/** How a checksum is shown in a message: its algorithm and its first digits. */
export function describeChecksum(algorithm: ChecksumAlgorithm | undefined, checksum: string | undefined): string {
  if (!algorithm || !checksum) return 'no checksum';
  return `${algorithm === 'CRC32C' ? 'CRC-32C' : 'SHA-256'} ${checksum.length > 12 ? `${checksum.slice(0, 12)}…` : checksum}`;
}

/** Whether `checksum` is a well-formed value of `algorithm`. */
function checksumShape(algorithm: ChecksumAlgorithm, checksum: string): boolean {
  return (algorithm === 'CRC32C' ? /^[0-9a-f]{8}$/ : /^[0-9a-f]{64}$/).test(checksum);
}

export interface WalRange {
  timeline: number;
  startLsn: string;
  endLsn: string;
}

function gmt(seconds: number): string {
  return new Date(seconds * 1000).toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' GMT');
}

function pathField(path: string): string {
  // JSON.stringify escapes exactly what a manifest string needs; non-UTF-8 names cannot reach here
  return `"Path": ${JSON.stringify(path)}`;
}

export type ManifestVersion = 1 | 2;

/** The manifest version a server's own tools write and expect: 2 from PostgreSQL 17, 1 before. */
export function manifestVersionFor(pgVersionNum: number): ManifestVersion {
  return pgVersionNum >= 170000 ? 2 : 1;
}

/** What the manifest says of the cluster: its server_version_num decides the version, v2 carries the system identifier. */
export interface ManifestCluster {
  pgVersion: number;
  systemIdentifier: string;
}

export function buildManifest(cluster: ManifestCluster, files: ManifestFile[], walRanges: WalRange[]): string {
  const version = manifestVersionFor(cluster.pgVersion);
  if (version === 2 && !/^\d{1,20}$/.test(cluster.systemIdentifier)) throw new RangeError(`system identifier "${cluster.systemIdentifier}" is not a number`);
  // an unsigned 64-bit number, unquoted, as PostgreSQL prints it (UINT64_FORMAT)
  let text = version === 2
    ? `{ "PostgreSQL-Backup-Manifest-Version": 2,\n"System-Identifier": ${cluster.systemIdentifier},\n"Files": [`
    : '{ "PostgreSQL-Backup-Manifest-Version": 1,\n"Files": [';
  files.forEach((f, i) => {
    if (f.checksumAlgorithm && !checksumShape(f.checksumAlgorithm, f.checksum)) throw new RangeError(`${f.path}: "${f.checksum}" is not a ${f.checksumAlgorithm} checksum`);
    const checksum = f.checksumAlgorithm ? `, "Checksum-Algorithm": "${f.checksumAlgorithm}", "Checksum": "${f.checksum}"` : '';
    text += `${i === 0 ? '\n' : ',\n'}{ ${pathField(f.path)}, "Size": ${f.size}, "Last-Modified": "${gmt(f.mtime)}"${checksum} }`;
  });
  text += '\n],\n"WAL-Ranges": [';
  walRanges.forEach((r, i) => {
    text += `${i === 0 ? '\n' : ',\n'}{ "Timeline": ${r.timeline}, "Start-LSN": "${r.startLsn}", "End-LSN": "${r.endLsn}" }`;
  });
  text += '\n],\n';
  const checksum = createHash('sha256').update(text).digest('hex');
  return `${text}"Manifest-Checksum": "${checksum}"}\n`;
}

export interface ParsedManifest {
  version: ManifestVersion;
  /** version 2 only; kept as text (it does not fit a JS number) */
  systemIdentifier: string | undefined;
  files: ManifestFile[];
  walRanges: WalRange[];
}

/** Reads a manifest we (or pg_basebackup) wrote, verifying its own checksum. */
export function parseManifest(text: string): ParsedManifest {
  const at = text.lastIndexOf('"Manifest-Checksum"');
  if (at < 0) throw new Error('no Manifest-Checksum');
  const doc = JSON.parse(text) as {
    'PostgreSQL-Backup-Manifest-Version': number;
    Files: Array<{ Path: string; Size: number; 'Last-Modified': string; 'Checksum-Algorithm'?: string; Checksum?: string }>;
    'WAL-Ranges': Array<{ Timeline: number; 'Start-LSN': string; 'End-LSN': string }>;
    'Manifest-Checksum': string;
  };
  const actual = createHash('sha256').update(text.slice(0, at)).digest('hex');
  if (actual !== doc['Manifest-Checksum']) throw new Error(`manifest checksum mismatch (${actual} vs ${doc['Manifest-Checksum']})`);
  const version = doc['PostgreSQL-Backup-Manifest-Version'];
  if (version !== 1 && version !== 2) throw new Error(`unknown manifest version ${String(version)}`);
  // read from the text: JSON.parse would round a 64-bit identifier to a double
  const systemIdentifier = version === 2 ? /"System-Identifier"\s*:\s*(\d+)/.exec(text)?.[1] : undefined;
  if (version === 2 && systemIdentifier === undefined) throw new Error('manifest version 2 without a System-Identifier');
  return {
    version,
    systemIdentifier,
    files: doc.Files.map((f) => ({ path: f.Path, size: f.Size, mtime: Date.parse(f['Last-Modified'].replace(' GMT', 'Z').replace(' ', 'T')) / 1000, ...entryChecksum(f) })),
    walRanges: doc['WAL-Ranges'].map((r) => ({ timeline: r.Timeline, startLsn: r['Start-LSN'], endLsn: r['End-LSN'] })),
  };
}

/** A file entry's algorithm and checksum, refused unless barman-ts can verify it. */
function entryChecksum(f: { Path: string; 'Checksum-Algorithm'?: string; Checksum?: string }): Pick<ManifestFile, 'checksumAlgorithm' | 'checksum'> {
  const algorithm = f['Checksum-Algorithm'];
  if (algorithm === undefined || algorithm === 'NONE') return { checksumAlgorithm: undefined, checksum: '' };
  if (algorithm !== 'CRC32C' && algorithm !== 'SHA256') throw new Error(`${f.Path}: checksum algorithm ${algorithm} is not one barman-ts verifies (CRC32C, SHA256)`);
  const checksum = (f.Checksum ?? '').toLowerCase();
  if (!checksumShape(algorithm, checksum)) throw new Error(`${f.Path}: "${f.Checksum ?? ''}" is not a ${algorithm} checksum`);
  return { checksumAlgorithm: algorithm, checksum };
}
