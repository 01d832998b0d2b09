// backup.info: what the catalog knows about one backup, as `key=value` lines like Barman's.
// Also the backup ID: the start time as YYYYMMDDTHHMMSS in the receiver's local time.

import type { BackupSymlink } from './paths';
import { snakeCase } from '../snake-case';

export const BACKUP_STATUSES = ['STARTED', 'WAITING_FOR_WALS', 'DONE', 'FAILED'] as const;
export type BackupStatus = (typeof BACKUP_STATUSES)[number];

export interface BackupInfo {
  backupId: string;
  status: BackupStatus;
  /** why it FAILED */
  error: string;
  beginTime: string;
  endTime: string;
  beginLsn: string;
  endLsn: string;
  beginWal: string;
  endWal: string;
  timeline: number;
  pgVersion: number;
  systemIdentifier: string;
  pgdata: string;
  /** bytes of data files (plain) */
  size: number;
  fileCount: number;
  /** JSON: [{oid, name, location}] */
  tablespaces: Array<{ oid: string; name: string; location: string }>;
  keep: boolean;
  /** JSON: [{path, target}], the data directory's symlinks (backup_manifest lists files only); recovery recreates them as links */
  symlinks: BackupSymlink[];
  /** taken from a hot standby (backup_label: BACKUP FROM: standby); its WAL came from the primary's archiving */
  fromStandby: boolean;
}

const NUMERIC: ReadonlySet<keyof BackupInfo> = new Set(['timeline', 'pgVersion', 'size', 'fileCount']);
const JSON_KEYS: ReadonlySet<keyof BackupInfo> = new Set(['tablespaces', 'symlinks']);

export function formatBackupInfo(info: BackupInfo): string {
  const lines: string[] = [];
  for (const [key, value] of Object.entries(info)) {
    const text = JSON_KEYS.has(key as keyof BackupInfo) ? JSON.stringify(value) : String(value);
    lines.push(`${snakeCase(key)}=${text.replace(/\n/g, ' ')}`);
  }
  return lines.join('\n') + '\n';
}

export function parseBackupInfo(text: string): BackupInfo {
  const raw = new Map<string, string>();
  for (const line of text.split('\n')) {
    const i = line.indexOf('=');
    if (i > 0) raw.set(line.slice(0, i), line.slice(i + 1));
  }
  const info: Record<string, unknown> = {};
  const template: BackupInfo = emptyInfo('');
  for (const key of Object.keys(template) as Array<keyof BackupInfo>) {
    const value = raw.get(snakeCase(key));
    if (value === undefined) {
      info[key] = template[key];
    } else if (JSON_KEYS.has(key)) {
      info[key] = JSON.parse(value || '[]');
    } else if (key === 'keep' || key === 'fromStandby') {
      info[key] = value === 'true';
    } else {
      info[key] = NUMERIC.has(key) ? Number(value) : value;
    }
  }
  return info as unknown as BackupInfo;
}

export function emptyInfo(backupId: string): BackupInfo {
  return {
    backupId, status: 'STARTED', error: '', beginTime: '', endTime: '', beginLsn: '', endLsn: '', beginWal: '', endWal: '',
    timeline: 0, pgVersion: 0, systemIdentifier: '', pgdata: '', size: 0, fileCount: 0, tablespaces: [], keep: false, symlinks: [], fromStandby: false,
  };
}

const pad = (n: number, w = 2) => String(n).padStart(w, '0');

/** YYYYMMDDTHHMMSS in local time. */
export function backupIdFor(date: Date): string {
  return `${date.getFullYear()}${pad(date.getMonth() + 1)}${pad(date.getDate())}T${pad(date.getHours())}${pad(date.getMinutes())}${pad(date.getSeconds())}`;
}

/** Barman's display form: 2011-09-19 17:24:39.769161 (local time). */
export function displayTime(iso: string): string {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const micro = pad(d.getMilliseconds(), 3) + '000';
  return `${localDate(d)} ${localClock(d)}.${micro}`;
}

/**
 * ISO 8601 in local time with the offset, 2011-09-19T17:24:39.769+02:00: the clock a backup ID
 * is spelled in, so `--json` shows begin_time and backup_id alike. Not a time: returned as it is.
 */
export function localIsoTime(iso: string): string {
  const d = new Date(iso);
  if (!iso || Number.isNaN(d.getTime())) return iso;
  const offset = -d.getTimezoneOffset();
  const abs = Math.abs(offset);
  return `${localDate(d)}T${localClock(d)}.${pad(d.getMilliseconds(), 3)}${offset < 0 ? '-' : '+'}${pad(Math.floor(abs / 60))}:${pad(abs % 60)}`;
}

const localDate = (d: Date) => `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
const localClock = (d: Date) => `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;

export function isBackupId(text: string): boolean {
  return /^\d{8}T\d{6}$/.test(text);
}
