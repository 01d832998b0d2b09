// backup_manifest in PostgreSQL's own format (version 1, as pg_basebackup writes it for
// PostgreSQL 13-16), so pg_verifybackup accepts our backups. The Manifest-Checksum is the
// SHA-256 of every byte before the "Manifest-Checksum" key.

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

export function buildManifest(files: ManifestFile[], walRanges: WalRange[]): string {
  let text = '{ "PostgreSQL-Backup-Manifest-Version": 1,\n"Files": [';
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
  files: ManifestFile[];
  walRanges: WalRange[];
}

/** Reads a manifest we (or pg_basebackup) wrote, verifying its own checksum. */
export function parseManifest(text: string): ParsedManifest {
  const at = text.lastIndexOf('"Manifest-Checksum"');
  if (at < 0) throw new Error('no Manifest-Checksum');
  const doc = JSON.parse(text) as {
    Files: Array<{ Path: string; Size: number; 'Last-Modified': string; Checksum?: string }>;
    'WAL-Ranges': Array<{ Timeline: number; 'Start-LSN': string; 'End-LSN': string }>;
    'Manifest-Checksum': string;
  };
  const actual = createHash('sha256').update(text.slice(0, at)).digest('hex');
  if (actual !== doc['Manifest-Checksum']) throw new Error(`manifest checksum mismatch (${actual} vs ${doc['Manifest-Checksum']})`);
  return {
    files: doc.Files.map((f) => ({ path: f.Path, size: f.Size, mtime: Date.parse(f['Last-Modified'].replace(' GMT', 'Z').replace(' ', 'T')) / 1000, sha256: f.Checksum ?? '' })),
    walRanges: doc['WAL-Ranges'].map((r) => ({ timeline: r.Timeline, startLsn: r['Start-LSN'], endLsn: r['End-LSN'] })),
  };
}
