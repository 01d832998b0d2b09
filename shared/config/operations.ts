// The receiver's keys for running it over the years (docs/configuration.md): how often `serve`
// does its housekeeping, the thresholds `check` holds a server to, and the restore drills. The
// thresholds may be set in [barman] for every server and overridden in a server's section;
// a threshold that is not set is a check that is not run.

import { configError, type SectionReader } from './ini';
import { parseDuration, parseSpaceThreshold, type SpaceThreshold } from './units';

export const DRILL_SCHEDULES = ['daily', 'weekly'] as const;
export type DrillSchedule = (typeof DRILL_SCHEDULES)[number];

/** seconds between two housekeeping runs of `serve` when housekeeping_interval is not set */
export const DEFAULT_HOUSEKEEPING_SECONDS = 3600;

export interface Thresholds {
  /** check fails while the catalog's filesystem has less free space */
  minFreeSpace?: SpaceThreshold;
  /** check fails when no WAL arrived for this long (after asking an idle server to switch WAL) */
  maxWalAgeSeconds?: number;
  /** Barman's last_backup_maximum_age: the newest DONE backup must be younger */
  lastBackupMaximumAgeSeconds?: number;
  /** the last restore drill must be younger (and have passed) */
  drillMaxAgeSeconds?: number;
}

export interface ServerOperations extends Thresholds {
  /** PostgreSQL binaries for drills on this host (else the usual search) */
  pgBindir?: string;
  /** serve runs a restore drill this often */
  drillSchedule?: DrillSchedule;
  /** SQL a drill runs on the restored copy; it passes when the query does */
  drillQuery?: string;
  /** the database drill_query runs in (default postgres) */
  drillDatabase?: string;
}

const DURATION_HINT = 'Write a number and a unit: 30 min, 6 hours, 2 days, 1 week (or 90s, 15min, 1h, 1d).';

function duration(r: SectionReader, key: string, fallback?: number): number | undefined {
  const text = r.string(key);
  if (text === undefined) return fallback;
  const seconds = parseDuration(text);
  if (seconds === undefined) throw configError(r.file, r.section, key, `"${text}" is not a duration`, DURATION_HINT);
  return seconds;
}

/** The thresholds of one section, each falling back to `defaults` (what [barman] set). */
export function readThresholds(r: SectionReader, defaults: Thresholds = {}): Thresholds {
  const spaceText = r.string('min_free_space');
  const minFreeSpace = spaceText === undefined ? defaults.minFreeSpace : parseSpaceThreshold(spaceText);
  if (spaceText !== undefined && !minFreeSpace) {
    throw configError(r.file, r.section, 'min_free_space', `"${spaceText}" is not a size or a percentage`, 'Write a size such as 10GB or 500MB (1024-based), or a share of the filesystem such as 5%.');
  }
  return {
    minFreeSpace,
    maxWalAgeSeconds: duration(r, 'max_wal_age', defaults.maxWalAgeSeconds),
    lastBackupMaximumAgeSeconds: duration(r, 'last_backup_maximum_age', defaults.lastBackupMaximumAgeSeconds),
    drillMaxAgeSeconds: duration(r, 'drill_max_age', defaults.drillMaxAgeSeconds),
  };
}

/** housekeeping_interval of [barman], in seconds. */
export function readHousekeepingInterval(r: SectionReader): number {
  return duration(r, 'housekeeping_interval', DEFAULT_HOUSEKEEPING_SECONDS)!;
}

/** A server section's drill keys and thresholds. */
export function readServerOperations(s: SectionReader, defaults: Thresholds): ServerOperations {
  const pgBindir = s.string('pg_bindir');
  if (pgBindir !== undefined && !pgBindir.startsWith('/')) {
    throw configError(s.file, s.section, 'pg_bindir', `"${pgBindir}" is not an absolute path`, 'Name the folder of the PostgreSQL programs, e.g. pg_bindir = /usr/lib/postgresql/17/bin.');
  }
  const schedule = s.oneOf('drill_schedule', ['off', ...DRILL_SCHEDULES] as const, 'off');
  const drillQuery = s.string('drill_query');
  const drillDatabase = s.string('drill_database');
  return {
    ...readThresholds(s, defaults),
    pgBindir,
    drillSchedule: schedule === 'off' ? undefined : schedule,
    drillQuery,
    drillDatabase,
  };
}
