// backup_manifest in PostgreSQL's own format, as that server's pg_basebackup writes it, so its
// pg_verifybackup accepts our backups: version 1 for PostgreSQL 13-16; version 2 from 17, which
// adds the cluster's System-Identifier (pg_verifybackup 17 checks it against global/pg_control).
// The Manifest-Checksum is the SHA-256 of every byte before the "Manifest-Checksum" key.

import { createHash } from 'node:crypto';

export interface ManifestFile {
  path: string;
  size: number;
  /** seconds since the epoch */
  mtime: number;
  sha256: string;
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
    text += `${i === 0 ? '\n' : ',\n'}{ ${pathField(f.path)}, "Size": ${f.size}, "Last-Modified": "${gmt(f.mtime)}", "Checksum-Algorithm": "SHA256", "Checksum": "${f.sha256}" }`;
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
    Files: Array<{ Path: string; Size: number; 'Last-Modified': string; Checksum?: string }>;
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
    files: doc.Files.map((f) => ({ path: f.Path, size: f.Size, mtime: Date.parse(f['Last-Modified'].replace(' GMT', 'Z').replace(' ', 'T')) / 1000, sha256: f.Checksum ?? '' })),
    walRanges: doc['WAL-Ranges'].map((r) => ({ timeline: r.Timeline, startLsn: r['Start-LSN'], endLsn: r['End-LSN'] })),
  };
}
