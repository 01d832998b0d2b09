// WAL file names: the only code that parses or builds them. A segment name is 24 hex digits,
// TTTTTTTT (timeline) XXXXXXXX (log) YYYYYYYY (segment within the log); it is compared as text or
// as its parts, never as one JS number. How many segments a log holds, and so every name, depends
// on the cluster's segment size (initdb --wal-segsize, 1 MB to 1 GB): every function that turns
// names into positions takes it, as the catalog learned it from that server; none assumes 16 MB.

import { type Lsn } from './lsn';

export type WalFileKind = 'segment' | 'partial' | 'history' | 'backup';

export interface WalFileName {
  kind: WalFileKind;
  name: string;
  timeline: number;
  /** present for segment, partial and backup files */
  segment?: string;
}

const SEGMENT = /^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$/;
const PARTIAL = /^([0-9A-F]{24})\.partial$/;
const HISTORY = /^([0-9A-F]{8})\.history$/;
const BACKUP = /^([0-9A-F]{24})\.([0-9A-F]{8})\.backup$/;

/** Parses a file name PostgreSQL archives; undefined for anything else (including any path). */
export function parseWalFileName(name: string): WalFileName | undefined {
  if (SEGMENT.test(name)) return { kind: 'segment', name, timeline: parseInt(name.slice(0, 8), 16), segment: name };
  let m = PARTIAL.exec(name);
  if (m) return { kind: 'partial', name, timeline: parseInt(name.slice(0, 8), 16), segment: m[1]! };
  m = HISTORY.exec(name);
  if (m) return { kind: 'history', name, timeline: parseInt(m[1]!, 16) };
  m = BACKUP.exec(name);
  if (m) return { kind: 'backup', name, timeline: parseInt(name.slice(0, 8), 16), segment: m[1]! };
  return undefined;
}

/** The byte offset within its segment where the backup a backup history file describes started. */
export function backupFileOffset(name: string): bigint | undefined {
  const m = BACKUP.exec(name);
  return m ? BigInt(`0x${m[2]}`) : undefined;
}

export function isSegmentName(name: string): boolean {
  return SEGMENT.test(name);
}

export function segmentsPerXLogId(segmentSize: number): bigint {
  return 0x100000000n / BigInt(segmentSize);
}

/** The segment number (XLogSegNo) named by a segment file name. */
export function segmentNumber(name: string, segmentSize: number): bigint {
  const m = SEGMENT.exec(name);
  if (!m) throw new RangeError(`"${name}" is not a WAL segment name`);
  const per = segmentsPerXLogId(segmentSize);
  const seg = BigInt(`0x${m[3]}`);
  // PostgreSQL never writes a segment part >= per; accepting one would alias the next log's segment
  if (seg >= per) throw new RangeError(`"${name}" is not a WAL segment name for ${segmentSize}-byte segments (its last 8 digits must be below ${per.toString(16).toUpperCase()})`);
  return BigInt(`0x${m[2]}`) * per + seg;
}

export function segmentTimeline(name: string): number {
  return parseInt(name.slice(0, 8), 16);
}

export function segmentName(timeline: number, segNo: bigint, segmentSize: number): string {
  const per = segmentsPerXLogId(segmentSize);
  const hex = (v: bigint | number, w = 8) => v.toString(16).toUpperCase().padStart(w, '0');
  return hex(timeline) + hex(segNo / per) + hex(segNo % per);
}

/** The LSN where a segment starts. */
export function segmentStartLsn(name: string, segmentSize: number): Lsn {
  return segmentNumber(name, segmentSize) * BigInt(segmentSize);
}

/** The segment that holds `lsn` on `timeline`. */
export function segmentForLsn(timeline: number, lsn: Lsn, segmentSize: number): string {
  return segmentName(timeline, lsn / BigInt(segmentSize), segmentSize);
}

export function nextSegment(name: string, segmentSize: number): string {
  return segmentName(segmentTimeline(name), segmentNumber(name, segmentSize) + 1n, segmentSize);
}

/**
 * Where a segment (or the segment of a .partial or .backup file) lies regardless of timeline: its
 * log and segment digits as text. A new timeline's segments continue the numbering, so WAL of all
 * timelines before a point is what compares below that point's position.
 */
export function segmentPosition(name: string): string | undefined {
  const segment = parseWalFileName(name)?.segment;
  return segment?.slice(8);
}

/** The catalog's directory for a segment: its first 16 hex characters (timeline + log). */
export function walDirectoryOf(name: string): string {
  return name.slice(0, 16);
}

/** Whether `name` is such a directory (what walDirectoryOf makes). */
export function isWalDirectory(name: string): boolean {
  return /^[0-9A-F]{16}$/.test(name);
}

export function historyFileName(timeline: number): string {
  return `${timeline.toString(16).toUpperCase().padStart(8, '0')}.history`;
}

export function isValidSegmentSize(size: number): boolean {
  // PostgreSQL allows powers of two from 1 MB to 1 GB.
  return Number.isInteger(size) && size >= 1 << 20 && size <= 1 << 30 && (size & (size - 1)) === 0;
}
