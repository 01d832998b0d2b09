// Backup history files (<segment>.<offset>.backup), written by PostgreSQL's pg_backup_stop: the
// backup_label's lines plus where the backup stopped. The only parser of them. Only what every
// PostgreSQL version writes is required; other lines (BACKUP FROM, START TIMELINE, INCREMENTAL
// FROM ...) are allowed, so a valid file is never refused and PostgreSQL's archiver never stalls on one.

import { type Lsn, parseLsn } from './lsn';
import { backupFileOffset, isValidSegmentSize, parseWalFileName, segmentNumber, segmentTimeline } from './names';

export interface BackupHistory {
  startLsn: Lsn;
  stopLsn: Lsn;
  checkpointLsn: Lsn;
  label: string;
}

const REQUIRED = ['START WAL LOCATION', 'STOP WAL LOCATION', 'CHECKPOINT LOCATION', 'BACKUP METHOD', 'START TIME', 'LABEL'] as const;
const LOCATION = /^([0-9A-F]{1,8}\/[0-9A-F]{1,8}) \(file ([0-9A-F]{24})\)$/;

/** Every power-of-two segment size PostgreSQL allows, 1 MB to 1 GB. */
const SEGMENT_SIZES = Array.from({ length: 11 }, (_, i) => 2 ** (20 + i));

/**
 * Checks a backup history file against its name (`fileName`, e.g. 000000010000000000000002.00000028.backup):
 * START WAL LOCATION must be the segment and offset the name gives, STOP WAL LOCATION and
 * CHECKPOINT LOCATION must not be before it, and the other fields PostgreSQL always writes
 * must be there. `segmentSize` is the cluster's, when known (else any valid size that fits).
 * Throws a RangeError saying what is wrong.
 */
export function validateBackupHistory(text: string, fileName: string, segmentSize?: number): BackupHistory {
  const name = parseWalFileName(fileName);
  if (name?.kind !== 'backup') throw new RangeError(`${fileName} is not a backup history file name`);
  const offset = backupFileOffset(fileName)!;
  const fields = new Map<string, string>();
  for (const raw of text.split('\n')) {
    const m = /^([A-Z][A-Z ]*[A-Z]): (.*)$/.exec(raw.replace(/\r$/, ''));
    if (m && !fields.has(m[1]!)) fields.set(m[1]!, m[2]!);
  }
  const missing = REQUIRED.filter((k) => !fields.has(k));
  if (missing.length) throw new RangeError(`no ${missing.join(', ')} line${missing.length > 1 ? 's' : ''}`);
  const location = (key: string): { lsn: Lsn; file: string } => {
    const m = LOCATION.exec(fields.get(key)!.trim());
    if (!m) throw new RangeError(`${key} is not "<LSN> (file <segment>)": "${fields.get(key)!.slice(0, 80)}"`);
    return { lsn: parseLsn(m[1]!), file: m[2]! };
  };
  const start = location('START WAL LOCATION');
  const stop = location('STOP WAL LOCATION');
  let checkpointLsn: Lsn;
  try {
    checkpointLsn = parseLsn(fields.get('CHECKPOINT LOCATION')!);
  } catch {
    throw new RangeError(`CHECKPOINT LOCATION is not an LSN: "${fields.get('CHECKPOINT LOCATION')!.slice(0, 80)}"`);
  }
  // the name is the stop timeline's, with the start segment and offset (BackupHistoryFileName)
  if (segmentTimeline(stop.file) !== name.timeline) throw new RangeError(`STOP WAL LOCATION is in ${stop.file}, not on the file name's timeline ${name.timeline}`);
  const sizes = segmentSize !== undefined ? [segmentSize] : SEGMENT_SIZES;
  const fits = sizes.some((size) => {
    if (!isValidSegmentSize(size) || start.lsn % BigInt(size) !== offset) return false;
    try {
      const startSeg = segmentNumber(start.file, size);
      if (startSeg !== start.lsn / BigInt(size) || startSeg !== segmentNumber(name.segment!, size)) return false;
      // PostgreSQL 15 names the segment holding the stop LSN's previous byte, 16 and later the stop LSN's
      const stopSeg = segmentNumber(stop.file, size);
      return stopSeg === stop.lsn / BigInt(size) || (stop.lsn > 0n && stopSeg === (stop.lsn - 1n) / BigInt(size));
    } catch {
      return false;
    }
  });
  if (!fits) throw new RangeError(`START WAL LOCATION ${fields.get('START WAL LOCATION')} or STOP WAL LOCATION ${fields.get('STOP WAL LOCATION')} does not match the segment and offset the file name gives`);
  if (stop.lsn < start.lsn) throw new RangeError('STOP WAL LOCATION is before START WAL LOCATION');
  if (checkpointLsn < start.lsn) throw new RangeError('CHECKPOINT LOCATION is before START WAL LOCATION');
  return { startLsn: start.lsn, stopLsn: stop.lsn, checkpointLsn, label: fields.get('LABEL')! };
}
