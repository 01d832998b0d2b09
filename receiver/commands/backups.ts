// The backup catalog commands: list-backups, show-backup, delete, keep, verify-backup, and
// `backup`, which asks the server's connected agent daemon through the running service.

import type { ReceiverConfig } from '../../shared/config/receiver';
import { type BackupInfo, displayTime, localIsoTime } from '../../shared/backup/info';
import { parseManifest } from '../../shared/backup/manifest';
import { versionText } from '../../shared/postgres/version';
import type { BackupProgressFrame } from '../../shared/protocol/frames';
import { humanSize } from '../../shared/progress';
import { type SnakeKeys, snakeKeys } from '../../shared/snake-case';
import type { DrillRecord, ServerCatalog } from '../catalog/catalog';
import { type OpenServer, withServer } from '../catalog/open';
import { applyRetention } from '../catalog/retention';
import { backupSegments, verifyWalFiles } from '../catalog/wal-integrity';
import { openAdmin } from './admin';
import { changeCatalog } from './catalog-change';
import { requireServer } from './servers';

/** Runs `fn` with the catalog of a configured server. */
export function withBackups<T>(config: ReceiverConfig, server: string, fn: (open: OpenServer) => Promise<T>): Promise<T> {
  return withServer(config, requireServer(config, server), fn);
}

/** What the catalog says of a backup beyond its backup.info: whether the retention policy will delete it, and its last restore drill. */
export interface BackupMarks {
  /** the retention policy no longer needs it: the next housekeeping (or cron) deletes it */
  obsolete: boolean;
  drill: DrillRecord | undefined;
}

export type MarkedBackup = BackupInfo & BackupMarks;

/** Each backup with its marks: OBSOLETE by the same decision retention makes (receiver/catalog/retention.ts), and its newest drill. */
async function markBackups(catalog: ServerCatalog, s: OpenServer['config'], all: BackupInfo[], now: Date): Promise<Map<string, BackupMarks>> {
  const doomed = new Set(applyRetention(all, s.retentionPolicy, s.minimumRedundancy, now).remove.map((b) => b.backupId));
  const drills = await catalog.drills();
  const marks = new Map<string, BackupMarks>();
  for (const b of all) marks.set(b.backupId, { obsolete: doomed.has(b.backupId), drill: drills.filter((d) => d.backupId === b.backupId).pop() });
  return marks;
}

/** Newest first, in Barman's format plus size and status, and what retention and drills say of each. */
export async function listBackups(config: ReceiverConfig, server: string, now = new Date()): Promise<MarkedBackup[]> {
  return withBackups(config, server, async ({ config: s, catalog, backups }) => {
    const all = await backups.list();
    const marks = await markBackups(catalog, s, all, now);
    return all.reverse().map((b) => ({ ...b, ...marks.get(b.backupId)! }));
  });
}

/**
 * What `list-backups --json` and `show-backup --json` print for one backup: backup.info's keys
 * (snake_case), times in local ISO 8601, `obsolete`, and its last drill (`drill`, null when none).
 */
export type BackupJson = SnakeKeys<BackupInfo> & { obsolete: boolean; drill: { at: string; passed: boolean; rto_seconds: number | null } | null };

export function backupJson(b: MarkedBackup): BackupJson {
  const { obsolete, drill, ...info } = b;
  return {
    ...snakeKeys({ ...info, beginTime: localIsoTime(info.beginTime), endTime: localIsoTime(info.endTime) }),
    obsolete,
    drill: drill ? { at: drill.at, passed: drill.passed, rto_seconds: drill.rtoSeconds } : null,
  };
}

export function formatBackupLine(server: string, b: MarkedBackup): string {
  const drill = b.drill ? (b.drill.passed ? ` - DRILLED (${displayTime(b.drill.at).slice(0, 19)}${b.drill.rtoSeconds === null ? '' : `, RTO ${b.drill.rtoSeconds} s`})` : ` - DRILL FAILED (${displayTime(b.drill.at).slice(0, 19)})`) : '';
  return `${server} - ${b.backupId} - ${displayTime(b.beginTime)} - Size: ${humanSize(b.size)} - ${b.status}${b.keep ? ' - KEEP' : ''}${b.obsolete ? ' - OBSOLETE' : ''}${drill}${b.error ? ` (${b.error})` : ''}`;
}

export function formatBackupDetails(server: string, b: MarkedBackup): string {
  const rows: Array<[string, string | number]> = [
    ['Backup', b.backupId], ['Server', server], ['Status', b.status + (b.error ? ` (${b.error})` : '')], ['PostgreSQL version', b.pgVersion ? `${versionText(b.pgVersion)} (${b.pgVersion})` : ''],
    ['System identifier', b.systemIdentifier], ['PGDATA directory', b.pgdata], ['Taken from', b.fromStandby ? 'a standby' : 'the primary'], ['Timeline', b.timeline],
    ['Begin time', displayTime(b.beginTime)], ['End time', displayTime(b.endTime)], ['Begin LSN', b.beginLsn], ['End LSN', b.endLsn],
    ['Begin WAL', b.beginWal], ['End WAL', b.endWal], ['Size', `${humanSize(b.size)} (${b.size} bytes, ${b.fileCount} files)`],
    ['Tablespaces', b.tablespaces.map((t) => `${t.name} (oid ${t.oid}) ${t.location}`).join(', ') || 'none'], ['Keep', b.keep ? 'yes' : 'no'],
    ['Symlinks', b.symlinks.map((l) => `${l.path} -> ${l.target}`).join(', ') || 'none'],
    ['Retention policy', b.obsolete ? 'OBSOLETE (the next housekeeping deletes it)' : b.keep ? 'KEEP' : 'VALID'],
    ['Last drill', b.drill ? `${b.drill.passed ? 'passed' : `FAILED: ${b.drill.error}`} ${displayTime(b.drill.at)}${b.drill.rtoSeconds === null ? '' : `, RTO ${b.drill.rtoSeconds} s`}` : 'none'],
  ];
  return `Backup ${b.backupId}:\n` + rows.map(([k, v]) => `  ${k.padEnd(20)}: ${v}`).join('\n') + '\n';
}

export async function showBackup(config: ReceiverConfig, server: string, id: string, now = new Date()): Promise<MarkedBackup> {
  return withBackups(config, server, async ({ config: s, catalog, backups }) => {
    const info = await backups.resolve(id);
    const marks = await markBackups(catalog, s, await backups.list(), now);
    return { ...info, ...(marks.get(info.backupId) ?? { obsolete: false, drill: undefined }) };
  });
}

/** Exempts a backup from retention (or releases it), as the catalog's one writer. */
export async function keepBackup(config: ReceiverConfig, server: string, id: string, release: boolean): Promise<BackupInfo> {
  return (await changeCatalog(config, server, { action: release ? 'release' : 'keep', backup: id })) as BackupInfo;
}

/** Removes a backup (never one marked keep, nor below minimum_redundancy), as the catalog's one writer. */
export async function deleteBackup(config: ReceiverConfig, server: string, id: string): Promise<BackupInfo> {
  return (await changeCatalog(config, server, { action: 'delete', backup: id })) as BackupInfo;
}

export interface VerifyResult {
  backupId: string;
  ok: boolean;
  checked: number;
  /** WAL files of the backup's own range (begin WAL to end WAL) read back against their recorded checksums */
  walChecked: number;
  problems: string[];
}

/**
 * Re-reads every file of a backup and compares size and SHA-256 with its manifest, and every WAL
 * file of its range (begin WAL to end WAL, without which it cannot be recovered) with the
 * checksum recorded when it was stored.
 */
export async function verifyBackup(config: ReceiverConfig, server: string, id: string): Promise<VerifyResult> {
  return withBackups(config, server, async ({ catalog, backups }) => {
    const info = await backups.resolve(id);
    const problems: string[] = [];
    const manifestText = await backups.manifest(info.backupId);
    if (manifestText === undefined) return { backupId: info.backupId, ok: false, checked: 0, walChecked: 0, problems: ['backup_manifest is missing'] };
    let files;
    try {
      const manifest = parseManifest(manifestText);
      files = manifest.files;
      if (manifest.systemIdentifier !== undefined && manifest.systemIdentifier !== info.systemIdentifier) {
        problems.push(`backup_manifest names system identifier ${manifest.systemIdentifier}, the backup was taken of ${info.systemIdentifier}`);
      }
    } catch (err) {
      return { backupId: info.backupId, ok: false, checked: 0, walChecked: 0, problems: [`backup_manifest is damaged: ${(err as Error).message}`] };
    }
    const contents = await backups.contents(info.backupId);
    // each with the algorithm the manifest records for it (CRC-32C, or SHA-256 in older backups)
    for (const f of files) {
      const problem = await backups.fileProblem(info.backupId, contents, f);
      if (problem) problems.push(`${f.path}: ${problem}`);
    }
    let walChecked = 0;
    // a backup still WAITING_FOR_WALS has its WAL on the way; a FAILED one never will
    if (info.status === 'DONE') {
      const segmentSize = await catalog.segmentSize();
      const wal = await verifyWalFiles(catalog, backupSegments(info, segmentSize));
      walChecked = wal.verified + wal.unchecked.length;
      problems.push(...wal.problems.map((p) => `WAL ${p}`));
    }
    return { backupId: info.backupId, ok: problems.length === 0, checked: files.length, walChecked, problems };
  });
}

export interface BackupStatusUpdate { backupId: string; status: string; reason?: string }

/**
 * Asks the running service to have the server's agent daemon take a backup. The CLI proves
 * itself with the server's own token, like an agent would. Waiting, it hears every status
 * change and, while the files arrive, how far they are.
 */
export async function requestBackup(
  config: ReceiverConfig,
  server: string,
  wait: boolean,
  onUpdate: (status: BackupStatusUpdate) => void,
  onProgress: (progress: Omit<BackupProgressFrame, 'type' | 'id'>) => void = () => undefined,
): Promise<BackupStatusUpdate> {
  const conn = await openAdmin(config, server);
  try {
    return await conn.stream(
      (id) => ({ type: 'backup-start', id, wait }),
      (frame) => {
        if (frame.type === 'backup-progress') {
          const { type: _type, id: _id, ...progress } = frame;
          onProgress(progress);
          return 'more';
        }
        if (frame.type !== 'backup-status') return undefined;
        const status = { backupId: frame.backupId, status: frame.status, ...(frame.reason ? { reason: frame.reason } : {}) };
        onUpdate(status);
        return !wait || status.status === 'DONE' || status.status === 'FAILED' ? status : 'more';
      },
    );
  } finally {
    conn.close();
  }
}
