// Is the WAL that backups need all there and intact? `neededSegments` decides (pure) which
// segments the kept backups need; `verifyWalFiles` reads stored files back against the checksum
// recorded with each. verify-backup checks one backup's own range, check the whole span the
// DONE backups need (its hashing bounded per run, see receiver/commands/check.ts).

import type { BackupInfo } from '../../shared/backup/info';
import { parseHistory } from '../../shared/wal/history';
import { segmentForLsn, segmentName, segmentNumber, segmentTimeline } from '../../shared/wal/names';
import type { ServerCatalog } from './catalog';
import { readSmallStoredWal, verifyStoredWal } from './wal-archive';

/** The segments of one backup's own WAL range, begin WAL to end WAL on its timeline. */
export function backupSegments(info: BackupInfo, segmentSize: number): string[] {
  const out: string[] = [];
  const last = segmentNumber(info.endWal, segmentSize);
  for (let n = segmentNumber(info.beginWal, segmentSize); n <= last; n++) out.push(segmentName(info.timeline, n, segmentSize));
  return out;
}

/**
 * The segments recovery from the DONE backups can need, from the oldest backup's begin WAL to the
 * last archived segment, timeline by timeline: a timeline is needed from its oldest backup's
 * begin WAL or from where it branched off (its history file), whichever is earlier (never before
 * the oldest backup), to its last archived segment or its newest backup's end WAL.
 * `firstSegmentOf` maps a timeline to its first segment (from its history). Returns the
 * needed segments that are archived and those that are missing, sorted.
 */
export function neededSegments(done: BackupInfo[], archived: string[], firstSegmentOf: Map<number, string>, segmentSize: number): { present: string[]; missing: string[] } {
  if (done.length === 0) return { present: [], missing: [] };
  const no = (name: string) => segmentNumber(name, segmentSize);
  const oldest = done.map((b) => no(b.beginWal)).reduce((a, b) => (b < a ? b : a));
  const have = new Set(archived);
  const lastOn = new Map<number, bigint>();
  const firstOn = new Map<number, bigint>();
  for (const s of archived) {
    const n = no(s);
    if (n < oldest) continue;
    const t = segmentTimeline(s);
    if (!(lastOn.get(t)! >= n)) lastOn.set(t, n);
    if (!(firstOn.get(t)! <= n)) firstOn.set(t, n);
  }
  const timelines = new Set([...lastOn.keys(), ...done.map((b) => b.timeline)]);
  const present: string[] = [];
  const missing: string[] = [];
  for (const t of [...timelines].sort((a, b) => a - b)) {
    const onIt = done.filter((b) => b.timeline === t);
    const starts = onIt.map((b) => no(b.beginWal));
    const branch = firstSegmentOf.get(t);
    if (branch !== undefined) starts.push(no(branch));
    let start = starts.length ? starts.reduce((a, b) => (b < a ? b : a)) : firstOn.get(t)!;
    if (start < oldest) start = oldest;
    const ends = onIt.map((b) => no(b.endWal));
    if (lastOn.has(t)) ends.push(lastOn.get(t)!);
    const end = ends.reduce((a, b) => (b > a ? b : a));
    for (let n = start; n <= end; n++) {
      const name = segmentName(t, n, segmentSize);
      (have.has(name) ? present : missing).push(name);
    }
  }
  return { present: present.sort(), missing: missing.sort() };
}

/**
 * A bounded share of `present` to read back this run: up to `budget` segments from the first one
 * after `cursor` (where the last run stopped), wrapping around, so that runs take turns and
 * every segment is read within ceil(present / budget) runs. All of them when they fit.
 */
export function shareToVerify(present: string[], cursor: string | undefined, budget: number): string[] {
  if (present.length <= budget) return present;
  const from = cursor === undefined ? 0 : present.findIndex((s) => s > cursor);
  const start = from < 0 ? 0 : from;
  return [...present.slice(start), ...present.slice(0, start)].slice(0, budget);
}

/** Each timeline's first segment, from the history files in the catalog (a damaged or unreadable history is a problem). */
export async function timelineStarts(catalog: ServerCatalog, segmentSize: number): Promise<{ firstSegmentOf: Map<number, string>; problems: string[] }> {
  const firstSegmentOf = new Map<number, string>();
  const problems: string[] = [];
  for (const [tli, stored] of await catalog.histories()) {
    try {
      const switches = parseHistory((await readSmallStoredWal(catalog, stored)).toString('utf8'), tli);
      const parent = switches[switches.length - 1];
      if (parent) firstSegmentOf.set(tli, segmentForLsn(tli, parent.switchLsn, segmentSize));
    } catch (err) {
      problems.push(`${stored.name}: ${(err as Error).message}`);
    }
  }
  return { firstSegmentOf, problems };
}

export interface WalVerification {
  /** files read back and found to match their recorded checksum */
  verified: number;
  /** files stored before checksums: readable, not verifiable */
  unchecked: string[];
  /** one line per missing or damaged file */
  problems: string[];
}

/** Reads each named WAL file back and compares it with the checksum recorded when it was stored. */
export async function verifyWalFiles(catalog: ServerCatalog, names: string[]): Promise<WalVerification> {
  const result: WalVerification = { verified: 0, unchecked: [], problems: [] };
  for (const name of names) {
    const stored = await catalog.findWal(name);
    if (!stored) {
      result.problems.push(`${name}: missing`);
      continue;
    }
    let check: Awaited<ReturnType<typeof verifyStoredWal>>;
    try {
      check = await verifyStoredWal(catalog, stored);
    } catch (err) {
      result.problems.push(`${name}: cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
      continue;
    }
    if (check.state === 'ok') result.verified++;
    else if (check.state === 'unchecked') result.unchecked.push(name);
    else result.problems.push(`${name}: damaged (${'sha256' in check.damage ? 'checksum mismatch' : `cannot be decompressed: ${check.damage.unreadable}`})`);
  }
  return result;
}
