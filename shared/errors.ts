// The one error family of barman-ts. Every failure a user can see is a BarmanError with a stable
// `code` (scripts switch on it), an exit code (docs/guarantees.md: 1 operation failed, 2 usage/config) and a
// hint that says what to do next. Stack traces belong in the debug log, never on the user's screen.

/**
 * ABORT_RECOVERY is the restore_command's answer for WAL that exists but cannot be trusted: PostgreSQL
 * reads exit codes 1-125 as "no such file" and ends recovery there (losing what follows), and
 * stops recovery with FATAL on anything above 125 (src/backend/access/transam/xlogarchive.c).
 */
export const ExitCode = { OK: 0, FAILED: 1, USAGE: 2, ABORT_RECOVERY: 128 } as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

/**
 * Stable codes; never rename, reorder or reuse one: new codes go at the end. docs/errors.md
 * describes each (test/unit/shared/errors.test.ts holds the list and the docs to this).
 */
export const ErrorCode = {
  CONFIG_INVALID: 'CONFIG_INVALID',
  USAGE: 'USAGE',
  AUTH_FAILED: 'AUTH_FAILED',
  UNKNOWN_SERVER: 'UNKNOWN_SERVER',
  PROTOCOL: 'PROTOCOL',
  FRAME_TOO_LARGE: 'FRAME_TOO_LARGE',
  RECEIVER_UNREACHABLE: 'RECEIVER_UNREACHABLE',
  CONNECTION_LOST: 'CONNECTION_LOST',
  TIMEOUT: 'TIMEOUT',
  INVALID_NAME: 'INVALID_NAME',
  WAL_INVALID: 'WAL_INVALID',
  WAL_FOREIGN: 'WAL_FOREIGN',
  WAL_CONFLICT: 'WAL_CONFLICT',
  WAL_NOT_FOUND: 'WAL_NOT_FOUND',
  CHECKSUM_MISMATCH: 'CHECKSUM_MISMATCH',
  STORAGE: 'STORAGE',
  LOCAL_FILE: 'LOCAL_FILE',
  BACKUP_NOT_FOUND: 'BACKUP_NOT_FOUND',
  BACKUP_FAILED: 'BACKUP_FAILED',
  BACKUP_IN_PROGRESS: 'BACKUP_IN_PROGRESS',
  AGENT_NOT_CONNECTED: 'AGENT_NOT_CONNECTED',
  RECOVERY_TARGET: 'RECOVERY_TARGET',
  DESTINATION: 'DESTINATION',
  RETENTION: 'RETENTION',
  POSTGRES: 'POSTGRES',
  INTERNAL: 'INTERNAL',
  CLOCK_SKEW: 'CLOCK_SKEW',
  TOO_MANY_SESSIONS: 'TOO_MANY_SESSIONS',
  TOO_MANY_UPLOADS: 'TOO_MANY_UPLOADS',
  /** a second agent daemon for a server whose live daemon is connected (barman-agent daemon --takeover replaces it) */
  DAEMON_ALREADY_CONNECTED: 'DAEMON_ALREADY_CONNECTED',
  CATALOG_LOCKED: 'CATALOG_LOCKED',
  PG_VERSION_UNSUPPORTED: 'PG_VERSION_UNSUPPORTED',
  PG_VERSION_MISMATCH: 'PG_VERSION_MISMATCH',
  STORAGE_NOT_FOUND: 'STORAGE_NOT_FOUND',
  STORAGE_PERMISSION: 'STORAGE_PERMISSION',
  STORAGE_CREDENTIALS: 'STORAGE_CREDENTIALS',
  STORAGE_BUCKET_MISSING: 'STORAGE_BUCKET_MISSING',
  STORAGE_UNREACHABLE: 'STORAGE_UNREACHABLE',
  STORAGE_NO_SPACE: 'STORAGE_NO_SPACE',
  STORAGE_CORRUPT: 'STORAGE_CORRUPT',
  LEASE_HELD: 'LEASE_HELD',
  LEASE_LOST: 'LEASE_LOST',
  /** a restore drill did not pass: the backup did not restore, start, recover or pass its checks on the backup host */
  DRILL_FAILED: 'DRILL_FAILED',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

const USAGE_CODES: ReadonlySet<ErrorCode> = new Set([ErrorCode.CONFIG_INVALID, ErrorCode.USAGE]);

export class BarmanError extends Error {
  readonly code: ErrorCode;
  readonly hint: string;
  readonly exitCode: ExitCode;

  constructor(code: ErrorCode, message: string, hint: string, options?: { cause?: unknown; exitCode?: ExitCode }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'BarmanError';
    this.code = code;
    this.hint = hint;
    this.exitCode = options?.exitCode ?? (USAGE_CODES.has(code) ? ExitCode.USAGE : ExitCode.FAILED);
  }

  /** What a user sees: one line of what failed, with its stable code, and one HINT line of what to do. */
  toUserText(prefix = 'ERROR'): string {
    return `${prefix} [${this.code}]: ${this.message}\nHINT: ${this.hint}`;
  }
}

/** Wraps anything thrown into a BarmanError, keeping an existing one as it is. */
export function asBarmanError(err: unknown, fallbackHint = 'Run again with log_level = debug to see the full trace.'): BarmanError {
  if (err instanceof BarmanError) return err;
  const e = err as NodeJS.ErrnoException;
  if (e && typeof e === 'object' && e.code === 'ENOSPC') {
    return new BarmanError(ErrorCode.STORAGE, `no space left on device${e.path ? ` writing ${e.path}` : ''}`, 'Free disk space on that filesystem (or run `barman-receiver cron` to apply retention), then retry.', { cause: err });
  }
  const message = e instanceof Error ? e.message : String(err);
  return new BarmanError(ErrorCode.INTERNAL, message, fallbackHint, { cause: err });
}

/** What to do about a backup whose stored copy of a file is damaged, on whichever host the error is read. */
export function damagedBackupHint(server: string, id: string): string {
  return `Run barman-receiver verify-backup ${server} ${id} on the backup host; recover or restore from another backup (list-backups).`;
}

/** What to do about a file the agent refused as it arrived while the receiver reads its stored copy back intact. */
export const CHANGED_ON_THE_WAY_HINT = 'Nothing in the catalog is damaged: the bytes changed on the way or on this host. Retry; if it repeats, check this host\'s memory and the network path to the receiver.';

/** What to do about WAL file `name` of `server` whose catalog copy no longer matches the checksum recorded when it was stored. */
export function damagedWalHint(name: string, server: string): string {
  return `Do not replay past it. If a PostgreSQL host still has ${name} in pg_wal, push it again (barman-agent push <pg_wal>/${name}): an identical copy replaces the damaged one. Otherwise recover to a point before it, and check the backup host's disk (barman-receiver check ${server} --verify-wal).`;
}
