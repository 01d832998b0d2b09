// PostgreSQL major versions: which ones barman-ts supports, and how a version number reads. A
// server reports server_version_num (150018 for 15.18, 90624 for 9.6.24); backup.info keeps that
// number, the catalog's identity and the binaries' check compare majors.
//
// Where a version changes what we do, one place decides it: the backup start/stop calls and how
// a slot's position is read in agent/postgres.ts, the manifest version in shared/backup/manifest.ts.

import { BarmanError, ErrorCode } from '../errors';

/** The oldest major version barman-ts takes backups of (the community's oldest supported release). */
export const OLDEST_SUPPORTED_MAJOR = 13;

/** The major version of a server_version_num: 15 for 150018, 9.6 for 90624. */
export function majorOf(versionNum: number): number {
  return versionNum >= 100000 ? Math.floor(versionNum / 10000) : Number(`${Math.floor(versionNum / 10000)}.${Math.floor(versionNum / 100) % 100}`);
}

/** server_version_num as people write it: 15.18 for 150018, 9.6.24 for 90624. */
export function versionText(versionNum: number): string {
  if (versionNum >= 100000) return `${Math.floor(versionNum / 10000)}.${versionNum % 10000}`;
  return `${Math.floor(versionNum / 10000)}.${Math.floor(versionNum / 100) % 100}.${versionNum % 100}`;
}

/** The major version a `postgres --version` (or `pg_ctl --version`) line names: 15 for "postgres (PostgreSQL) 15.18 (Debian ...)". */
export function majorOfVersionLine(line: string): number | undefined {
  const m = /\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?/.exec(line);
  if (!m) return undefined;
  const first = Number(m[1]);
  return first >= 10 ? first : Number(`${first}.${m[2] ?? 0}`);
}

/** Refuses a server older than OLDEST_SUPPORTED_MAJOR, naming its version and what to do. */
export function requireSupportedVersion(versionNum: number): void {
  if (majorOf(versionNum) >= OLDEST_SUPPORTED_MAJOR) return;
  throw new BarmanError(
    ErrorCode.PG_VERSION_UNSUPPORTED,
    `PostgreSQL ${versionText(versionNum)} is not supported: barman-ts works with PostgreSQL ${OLDEST_SUPPORTED_MAJOR} and newer`,
    `Upgrade the cluster to PostgreSQL ${OLDEST_SUPPORTED_MAJOR} or newer (pg_upgrade), or keep backing it up with the tool you used so far.`,
  );
}
