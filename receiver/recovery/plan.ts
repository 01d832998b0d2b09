// Deciding a recovery: which backup, which target, which WAL, which settings. Every refusal
// happens here, before any byte is written, and names the backup or time that would serve.

import { join } from 'node:path';
import type { BackupInfo } from '../../shared/backup/info';
import { parseManifest } from '../../shared/backup/manifest';
import { BarmanError, ErrorCode } from '../../shared/errors';
import { type RecoveryOptions, type RecoveryPlan, RECOVERY_WAL_DIR, STANDBY_RESTORE_COMMAND } from '../../shared/recovery/plan';
import { parseHistory } from '../../shared/wal/history';
import { formatLsn, isLsn, type Lsn, parseLsn } from '../../shared/wal/lsn';
import { historyFileName, nextSegment, segmentNumber, segmentStartLsn, segmentTimeline } from '../../shared/wal/names';
import type { BackupCatalog } from '../catalog/backups';
import type { ServerCatalog } from '../catalog/catalog';
import { streamedPartials } from '../catalog/streaming';
import { readSmallStoredWal } from '../catalog/wal-archive';

function targetError(message: string, hint: string): BarmanError {
  return new BarmanError(ErrorCode.RECOVERY_TARGET, message, hint);
}

/**
 * The target time as PostgreSQL reads it, keeping every fractional digit the user gave (a Date
 * keeps milliseconds only, and a commit a few microseconds after the target must stay out).
 */
export function postgresTargetTime(text: string, at: Date): string {
  const t = text.trim().replace('T', ' ');
  if (/(Z|[+-]\d{2}(:?\d{2})?)$/.test(t)) return t.replace(/Z$/, '+00');
  const offset = -at.getTimezoneOffset();
  const sign = offset >= 0 ? '+' : '-';
  const abs = Math.abs(offset);
  return `${t}${sign}${String(Math.floor(abs / 60)).padStart(2, '0')}:${String(abs % 60).padStart(2, '0')}`;
}

/** ISO 8601 with an offset, or without one in this host's time zone. */
export function parseTargetTime(text: string): Date {
  const t = text.trim().replace(' ', 'T');
  if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}(:?\d{2})?)?$/.test(t)) {
    throw new BarmanError(ErrorCode.USAGE, `--target-time "${text}" is not an ISO 8601 time`, 'Write it as 2026-11-25T12:00:05+01:00 (or without the offset for this host\'s time zone).');
  }
  const withOffset = /[+-]\d{2}$/.test(t) ? `${t}:00` : t;
  const d = new Date(withOffset);
  if (Number.isNaN(d.getTime())) throw new BarmanError(ErrorCode.USAGE, `--target-time "${text}" is not a valid time`, 'Check the date and time fields.');
  return d;
}

const describe = (b: BackupInfo) => `${b.backupId} (ended ${new Date(b.endTime).toISOString()}, LSN ${b.endLsn})`;

export async function planRecovery(catalog: ServerCatalog, backups: BackupCatalog, backupRef: string, opts: RecoveryOptions, now = new Date()): Promise<RecoveryPlan> {
  const server = catalog.server;
  const targets = [opts.targetTime, opts.targetXid, opts.targetLsn, opts.targetName, opts.targetImmediate ? 'immediate' : undefined].filter((t) => t !== undefined);
  if (targets.length > 1) throw new BarmanError(ErrorCode.USAGE, 'more than one recovery target given', 'Give one of --target-time, --target-xid, --target-lsn, --target-name, --target-immediate.');
  const targetTime = opts.targetTime !== undefined ? parseTargetTime(opts.targetTime) : undefined;
  if (opts.targetLsn !== undefined && !isLsn(opts.targetLsn)) throw new BarmanError(ErrorCode.USAGE, `--target-lsn "${opts.targetLsn}" is not an LSN`, 'Write it as PostgreSQL prints it, e.g. 0/3000060.');
  if (opts.targetXid !== undefined && !/^\d+$/.test(opts.targetXid)) throw new BarmanError(ErrorCode.USAGE, `--target-xid "${opts.targetXid}" is not a transaction ID`, 'Give the number txid_current() returned.');
  const targetLsn = opts.targetLsn !== undefined ? parseLsn(opts.targetLsn) : undefined;
  if (opts.standby && targets.length > 0) throw new BarmanError(ErrorCode.USAGE, '--standby takes no recovery target: a standby replays everything and keeps following', 'Leave out the --target-* option, or recover without --standby to stop at a target.');
  if (opts.standby && (opts.targetTli ?? 'latest') !== 'latest') throw new BarmanError(ErrorCode.USAGE, `--standby follows the latest timeline; --target-tli ${opts.targetTli} does not apply`, 'Leave out --target-tli with --standby.');

  const done = (await backups.list()).filter((b) => b.status === 'DONE');
  let backup: BackupInfo;
  if ((backupRef === 'latest' || backupRef === 'last') && (targetTime || targetLsn !== undefined)) {
    const fits = done.filter((b) => (targetTime ? Date.parse(b.endTime) <= targetTime.getTime() : parseLsn(b.endLsn) <= targetLsn!));
    const pick = fits[fits.length - 1];
    if (!pick) {
      const first = done[0];
      throw targetError(`no DONE backup of ${server} ends before the target ${opts.targetTime ?? opts.targetLsn}`, first ? `The oldest backup, ${describe(first)}, ends after it; a point before that cannot be recovered.` : `Take a backup first: barman-receiver backup ${server} --wait`);
    }
    backup = pick;
  } else {
    backup = await backups.resolve(backupRef);
  }
  if (backup.status !== 'DONE') {
    throw targetError(`backup ${backup.backupId} is ${backup.status}${backup.error ? ` (${backup.error})` : ''}, not DONE`, backup.status === 'WAITING_FOR_WALS' ? 'Wait until its WAL is archived (SELECT pg_switch_wal() on the primary helps), then retry.' : 'Choose a DONE backup from barman-receiver list-backups.');
  }
  const older = done.filter((b) => b.backupId < backup.backupId);
  const suggestOlder = (fits: (b: BackupInfo) => boolean) => {
    const b = older.filter(fits).pop();
    return b ? `Backup ${describe(b)} would serve: recover ${server} ${b.backupId} ... (or use latest).` : 'No older backup ends before it either; that point cannot be recovered.';
  };

  const archivedLast = await catalog.lastSegment();
  // streamed WAL this host holds (a partial segment is local state: another receiver host has none)
  const streamed = (await streamedPartials(catalog)).filter((p) => p.size > 0);
  const newestPartial = streamed[streamed.length - 1];
  // the newest WAL here: the last archived segment, or a streamed partial written after it
  const last = newestPartial && (!archivedLast || newestPartial.modifiedAt > archivedLast.receivedAt) ? { name: `${newestPartial.segment}.partial`, receivedAt: newestPartial.modifiedAt } : archivedLast;
  if (targetTime) {
    if (targetTime.getTime() > now.getTime()) throw targetError(`target time ${targetTime.toISOString()} is in the future`, 'Give a time in the past, or recover without a target to replay all archived WAL.');
    if (targetTime.getTime() < Date.parse(backup.endTime)) {
      throw targetError(`target time ${targetTime.toISOString()} is before backup ${describe(backup)} ended`, suggestOlder((b) => Date.parse(b.endTime) <= targetTime.getTime()));
    }
    if (!last || targetTime.getTime() > last.receivedAt.getTime()) {
      throw targetError(`target time ${targetTime.toISOString()} is after the last WAL archived${last ? ` (${last.name}, received ${last.receivedAt.toISOString()})` : ''}`, 'Recover without a target to replay all archived WAL, or run SELECT pg_switch_wal() on the primary so the WAL of that time is archived, then retry.');
    }
  }
  if (targetLsn !== undefined) {
    if (targetLsn < parseLsn(backup.endLsn)) throw targetError(`target LSN ${opts.targetLsn} is before backup ${describe(backup)} ended`, suggestOlder((b) => parseLsn(b.endLsn) <= targetLsn));
  }

  // timelines: which one recovery follows, and that the backup can reach it
  const histories = new Map<number, Array<{ timeline: number; switchLsn: Lsn }>>();
  for (const [tli, stored] of await catalog.histories()) {
    const text = (await readSmallStoredWal(catalog, stored)).toString('utf8');
    try {
      histories.set(tli, parseHistory(text, tli));
    } catch (err) {
      throw new BarmanError(ErrorCode.WAL_INVALID, `${stored.name} in the catalog of ${server} cannot be read: ${(err as Error).message}`, `It was stored by a version that did not check history files. On the backup host, move it from the catalog's wals/ into errors/ (show-server ${server} prints both), then push the real file from the cluster that created timeline ${tli} (barman-agent push <pg_wal>/${stored.name}).`);
    }
  }
  const reaches = (tli: number): boolean => {
    if (tli === backup.timeline) return true;
    const h = histories.get(tli);
    const fork = h?.find((s) => s.timeline === backup.timeline);
    return fork !== undefined && fork.switchLsn >= parseLsn(backup.endLsn);
  };
  let targetTli: number;
  const tliText = opts.targetTli ?? 'latest';
  if (tliText === 'current') targetTli = backup.timeline;
  else if (tliText === 'latest') targetTli = Math.max(backup.timeline, ...[...histories.keys()].filter(reaches));
  else if (/^\d+$/.test(tliText)) targetTli = Number(tliText);
  else throw new BarmanError(ErrorCode.USAGE, `--target-tli "${tliText}" is not current, latest or a number`, 'Use current, latest or a timeline number.');
  if (!reaches(targetTli)) {
    const onIt = done.filter((b) => b.timeline === targetTli).pop();
    throw targetError(`timeline ${targetTli} cannot be reached from backup ${backup.backupId} (timeline ${backup.timeline})`, onIt ? `Backup ${describe(onIt)} is on timeline ${targetTli}.` : `No history in the catalog leads from timeline ${backup.timeline} to ${targetTli} after the backup; check the timeline with list-backups / show-backup.`);
  }
  const chain = new Set<number>([targetTli, ...(histories.get(targetTli)?.map((s) => s.timeline) ?? [])]);

  // WAL from the backup's first segment on, on the timelines recovery follows
  const segSize = await catalog.segmentSize();
  const firstSeg = segmentNumber(backup.beginWal, segSize);
  const onChain = (s: string) => chain.has(segmentTimeline(s)) && segmentNumber(s, segSize) >= firstSeg;
  const archived = (await catalog.listSegments()).filter(onChain);
  // streamed WAL not yet in a complete segment: recovery replays it too (the last commits before a crash)
  const partials = streamed.filter((p) => onChain(p.segment) && !archived.includes(p.segment));
  const segments = [...archived, ...partials.map((p) => p.segment)].sort();
  if (targetLsn !== undefined) {
    const lastOnChain = segments.filter((s) => segmentTimeline(s) === targetTli).pop() ?? segments[segments.length - 1];
    const partial = partials.find((p) => p.segment === lastOnChain);
    const endOfWal = lastOnChain ? segmentStartLsn(lastOnChain, segSize) + BigInt(partial ? partial.size : segSize) : 0n;
    // endOfWal is where the first record NOT archived starts: PostgreSQL could never reach a target there
    if (targetLsn >= endOfWal) throw targetError(`target LSN ${opts.targetLsn} is past the last WAL archived (${lastOnChain ?? 'none'} ends at ${formatLsn(endOfWal)})`, 'Run SELECT pg_switch_wal() on the primary so that WAL is archived, or give an earlier LSN.');
  }
  // the backup's own WAL must all be here, and recovery replays up to the first hole: refuse
  // rather than stop short without a word
  const present = new Set(segments);
  const firstMissing = (from: string, to: string): string | undefined => {
    for (let seg = from; segmentNumber(seg, segSize) <= segmentNumber(to, segSize); seg = nextSegment(seg, segSize)) {
      if (!present.has(seg)) return seg;
    }
    return undefined;
  };
  const missingInBackup = firstMissing(backup.beginWal, backup.endWal);
  if (missingInBackup) {
    throw targetError(`backup ${backup.backupId} cannot be recovered: its WAL segment ${missingInBackup} is missing from the catalog`, `Recover from another backup (list-backups), and check why ${missingInBackup} is gone (errors/ of the catalog, the archiver's log).`);
  }
  const lastOnBackupTli = segments.filter((seg) => segmentTimeline(seg) === backup.timeline).pop();
  const gap = lastOnBackupTli ? firstMissing(backup.endWal, lastOnBackupTli) : undefined;
  // a standby is not stopped by a hole: it streams what the archive lacks from its primary (primary_conninfo)
  if (gap && (targetLsn === undefined || targetLsn >= segmentStartLsn(gap, segSize)) && !opts.targetImmediate && !opts.standby) {
    throw targetError(`WAL segment ${gap} is missing from the catalog: recovery from backup ${backup.backupId} would stop there, before the target (${opts.targetTime ?? opts.targetXid ?? opts.targetLsn ?? opts.targetName ?? 'end of WAL'})`, `Recover to a point before ${formatLsn(segmentStartLsn(gap, segSize))} (--target-lsn), or find the missing segment (the catalog's errors/, the primary's pg_wal) and archive it with barman-agent push.`);
  }
  // a standby fetches its WAL through restore_command (get-wal) as it goes: nothing is copied ahead
  const wals = opts.standby ? [] : [...[...chain].filter((t) => t > 1 && histories.has(t)).map(historyFileName), ...segments];

  const manifest = await backups.manifest(backup.backupId);
  if (manifest === undefined) throw new BarmanError(ErrorCode.BACKUP_NOT_FOUND, `backup ${backup.backupId} of ${server} has no backup_manifest`, `Run barman-receiver verify-backup ${server} ${backup.backupId}, and recover from another backup.`);
  const { files } = parseManifest(manifest);
  const { directories } = await backups.contents(backup.backupId);

  const tablespaces = backup.tablespaces.map((t) => ({ ...t, location: opts.tablespaces?.[t.name] ?? t.location }));
  for (const name of Object.keys(opts.tablespaces ?? {})) {
    if (!backup.tablespaces.some((t) => t.name === name)) throw new BarmanError(ErrorCode.USAGE, `backup ${backup.backupId} has no tablespace "${name}"`, `Its tablespaces: ${backup.tablespaces.map((t) => t.name).join(', ') || 'none'}.`);
  }

  const hasTarget = targets.length > 0;
  const q = (v: string) => `'${v.replace(/'/g, "''")}'`;
  if (opts.standby) {
    // archive_mode/archive_command stay as the cluster had them: a standby archives nothing until it
    // is promoted, and then archives its new timeline into the catalog
    const settings = [
      `# barman-ts: standby from backup ${backup.backupId} of ${server}, written ${now.toISOString()}`,
      `restore_command = ${q(STANDBY_RESTORE_COMMAND)}`,
      `recovery_target_timeline = 'latest'`,
    ];
    return { server, backupId: backup.backupId, pgVersion: backup.pgVersion, files, directories, tablespaces, symlinks: backup.symlinks, wals, settings: settings.join('\n') + '\n', manifest, targetDescription: 'standby (follows the catalog, latest timeline)', standby: true };
  }
  const lines = [
    `# barman-ts: recovery of backup ${backup.backupId} of ${server}, written ${now.toISOString()}`,
    `restore_command = ${q(`cp ${RECOVERY_WAL_DIR}/%f %p`)}`,
    `recovery_target_timeline = ${q(tliText === 'current' ? 'current' : String(tliText === 'latest' ? 'latest' : targetTli))}`,
  ];
  if (targetTime) lines.push(`recovery_target_time = ${q(postgresTargetTime(opts.targetTime!, targetTime))}`);
  if (opts.targetXid !== undefined) lines.push(`recovery_target_xid = ${q(opts.targetXid)}`);
  if (opts.targetLsn !== undefined) lines.push(`recovery_target_lsn = ${q(opts.targetLsn)}`);
  if (opts.targetName !== undefined) lines.push(`recovery_target_name = ${q(opts.targetName)}`);
  if (opts.targetImmediate) lines.push(`recovery_target = 'immediate'`);
  if (hasTarget) {
    lines.push(`recovery_target_action = ${q(opts.targetAction ?? 'promote')}`);
    if (opts.exclusive) lines.push(`recovery_target_inclusive = off`);
  }
  lines.push(`# a recovered copy must never archive into the production catalog`, `archive_mode = 'off'`, `archive_command = 'false'`);
  const targetDescription = targetTime ? `time ${targetTime.toISOString()}` : opts.targetXid ? `xid ${opts.targetXid}` : opts.targetLsn ? `LSN ${opts.targetLsn}` : opts.targetName ? `restore point "${opts.targetName}"` : opts.targetImmediate ? 'end of the backup (immediate)' : 'end of WAL (archived and streamed)';
  return { server, backupId: backup.backupId, pgVersion: backup.pgVersion, files, directories, tablespaces, symlinks: backup.symlinks, wals, settings: lines.join('\n') + '\n', manifest, targetDescription };
}

/** Text from a backup.info (the database host's words) made safe to print: no control characters, bounded. */
const printable = (text: string): string => text.replace(/[\x00-\x1f\x7f]/g, '?').slice(0, 200);
/** A command-line word as a shell reads it back. */
const shellWord = (word: string): string => (/^[\w./:=@%+-]+$/.test(word) ? word : `'${word.replace(/'/g, "'\\''")}'`);

/**
 * On the backup host, the tablespace locations a backup recorded came from the database host,
 * which may be compromised (a location of ~/.ssh would have recovery write there): `recover`
 * writes a tablespace only where the DBA names it, `--tablespace name:location` for each. The
 * refusal names every flag to add, with locations beside the destination.
 */
export function requireTablespaceLocations(plan: RecoveryPlan, given: Record<string, string> | undefined, dest: string): void {
  const missing = plan.tablespaces.filter((t) => given?.[t.name] === undefined);
  if (missing.length === 0) return;
  const suggestion = (t: RecoveryPlan['tablespaces'][number]) => shellWord(`${t.name}:${join(`${dest}_tablespaces`, /^[\w.-]+$/.test(t.name) ? t.name : t.oid)}`);
  throw new BarmanError(
    ErrorCode.USAGE,
    `backup ${plan.backupId} has tablespaces with no location given on this host: ${missing.map((t) => `${printable(t.name)} (OID ${t.oid}, recorded by the database host as ${printable(t.location)})`).join(', ')}; recover does not write where a database host recorded`,
    `Add a new or empty directory outside the destination and the catalog for each: ${missing.map((t) => `--tablespace ${suggestion(t)}`).join(' ')}`,
  );
}

