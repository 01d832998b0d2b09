// A recovery plan: everything needed to write a startable data directory, decided and validated
// on the receiver before any byte is written, then carried out by writeRecovery() on the backup
// host (recover) or on the PostgreSQL host (restore, over the wire).

import type { ManifestFile } from '../backup/manifest';
import type { BackupSymlink } from '../backup/paths';

export type TargetAction = 'pause' | 'promote' | 'shutdown';

export interface RecoveryOptions {
  targetTime?: string;
  targetXid?: string;
  targetLsn?: string;
  targetName?: string;
  targetImmediate?: boolean;
  /** 'current' | 'latest' | a timeline number */
  targetTli?: string;
  targetAction?: TargetAction;
  /** stop just before the target instead of just after it */
  exclusive?: boolean;
  /** tablespace name -> new location */
  tablespaces?: Record<string, string>;
  /** a standby that keeps following the catalog: standby.signal, restore_command = get-wal, timeline latest */
  standby?: boolean;
}

export interface PlannedTablespace {
  oid: string;
  name: string;
  /** where its files go on the destination host */
  location: string;
}

export interface RecoveryPlan {
  server: string;
  backupId: string;
  /** server_version_num of the backed-up cluster: binaries of its major version start the result */
  pgVersion: number;
  /** data files of the backup, as in its manifest (backup_label included) */
  files: ManifestFile[];
  /** every directory, relative, so empty ones exist */
  directories: string[];
  tablespaces: PlannedTablespace[];
  /** the data directory's symlinks, recreated as links once everything else is written */
  symlinks: BackupSymlink[];
  /** WAL files (segments and .history) to place in barman_wal/ */
  wals: string[];
  /** appended to postgresql.auto.conf */
  settings: string;
  /** the backup's backup_manifest, verbatim */
  manifest: string;
  /** human summary of the target, for messages */
  targetDescription: string;
  /** write standby.signal (a standby that keeps following the catalog) instead of recovery.signal */
  standby?: boolean;
}

/** The folder recovery adds beside pg_wal/ (pg_verifybackup -i barman_wal accepts the directory). */
export const RECOVERY_WAL_DIR = 'barman_wal';

/**
 * Present in a data directory while a restore writes it, removed only once global/pg_control (written
 * last) is durable: PostgreSQL cannot start a directory without pg_control, and `--delta` completes one
 * that still has this marker.
 */
export const RESTORE_MARKER = 'barman_restore.incomplete';

/** The restore_command of a standby: it keeps following the catalog through the agent. */
export const STANDBY_RESTORE_COMMAND = 'barman-agent get-wal %f %p';
