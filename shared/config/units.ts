// Durations and sizes as the configuration spells them. Durations as Barman writes its
// `last_backup_maximum_age` (`1 WEEK`, `3 DAYS`) or short (`90s`, `15min`, `1h`); sizes as
// PostgreSQL writes memory settings (`512MB`, `10GB`, 1024-based), or a share of the filesystem (`5%`).

const SECOND_UNITS: Array<[RegExp, number]> = [
  [/^(s|sec|secs|second|seconds)$/, 1],
  [/^(m|min|mins|minute|minutes)$/, 60],
  [/^(h|hour|hours)$/, 3600],
  [/^(d|day|days)$/, 86_400],
  [/^(w|week|weeks)$/, 7 * 86_400],
  // a month is 30 days: the thresholds are "this old at most", not calendar dates
  [/^(month|months)$/, 30 * 86_400],
];

/** `<n> <unit>` or `<n><unit>` → seconds (n ≥ 1); undefined when it is not a duration. */
export function parseDuration(text: string): number | undefined {
  const m = /^(\d+)\s*([a-z]+)$/i.exec(text.trim());
  if (!m) return undefined;
  const n = Number(m[1]);
  const unit = m[2]!.toLowerCase();
  const factor = SECOND_UNITS.find(([re]) => re.test(unit))?.[1];
  if (factor === undefined || n < 1 || !Number.isSafeInteger(n * factor)) return undefined;
  return n * factor;
}

/** A duration as a person reads it: `90 s`, `15 min`, `2 h`, `3 days`. */
export function formatDuration(seconds: number): string {
  if (seconds % 86_400 === 0) return `${seconds / 86_400} day${seconds === 86_400 ? '' : 's'}`;
  if (seconds % 3600 === 0) return `${seconds / 3600} h`;
  if (seconds % 60 === 0) return `${seconds / 60} min`;
  return `${seconds} s`;
}

export type SpaceThreshold = { kind: 'bytes'; bytes: number } | { kind: 'percent'; percent: number };

const SIZE_UNITS: Record<string, number> = { b: 1, kb: 1024, mb: 1024 ** 2, gb: 1024 ** 3, tb: 1024 ** 4 };

/** `10GB`, `512 MB`, `1TB` (1024-based, as PostgreSQL) or `5%` (of the filesystem); undefined otherwise. */
export function parseSpaceThreshold(text: string): SpaceThreshold | undefined {
  const t = text.trim();
  const pct = /^(\d+(?:\.\d+)?)\s*%$/.exec(t);
  if (pct) {
    const percent = Number(pct[1]);
    return percent > 0 && percent < 100 ? { kind: 'percent', percent } : undefined;
  }
  const m = /^(\d+)\s*([a-z]+)$/i.exec(t);
  const factor = m ? SIZE_UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || factor === undefined) return undefined;
  const bytes = Number(m[1]) * factor;
  return bytes > 0 && Number.isSafeInteger(bytes) ? { kind: 'bytes', bytes } : undefined;
}
