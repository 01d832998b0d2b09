// Retention: which backups a policy no longer needs, and which WAL no remaining backup needs.
// Pure decisions here (unit-tested); receiver/commands/cron.ts carries them out.

import type { BackupInfo } from '../../shared/backup/info';
import type { RetentionPolicy } from '../../shared/config/retention';
import { segmentPosition } from '../../shared/wal/names';

export interface RetentionDecision {
  keep: BackupInfo[];
  /** obsolete under the policy, oldest first */
  remove: BackupInfo[];
  /** why each kept-but-would-be-obsolete backup stays (keep flag, minimum_redundancy) */
  notes: string[];
}

function windowStart(policy: Extract<RetentionPolicy, { kind: 'window' }>, now: Date): Date {
  const d = new Date(now);
  if (policy.unit === 'days') d.setDate(d.getDate() - policy.amount);
  else if (policy.unit === 'weeks') d.setDate(d.getDate() - 7 * policy.amount);
  else d.setMonth(d.getMonth() - policy.amount);
  return d;
}

/**
 * Applies a policy to a server's backups. Only DONE backups count and only DONE backups are
 * removed; a backup marked keep is never removed; at least `minimumRedundancy` DONE backups stay.
 * REDUNDANCY N keeps the newest N. RECOVERY WINDOW OF N keeps every backup that ends inside the
 * window plus the newest one before it (needed to reach the window's first moment).
 */
export function applyRetention(backups: BackupInfo[], policy: RetentionPolicy | undefined, minimumRedundancy: number, now: Date): RetentionDecision {
  const done = backups.filter((b) => b.status === 'DONE').sort((a, b) => a.backupId.localeCompare(b.backupId));
  const notes: string[] = [];
  if (!policy) return { keep: done, remove: [], notes };
  let obsolete: BackupInfo[];
  if (policy.kind === 'redundancy') {
    obsolete = done.slice(0, Math.max(0, done.length - policy.count));
  } else {
    const start = windowStart(policy, now).getTime();
    const before = done.filter((b) => Date.parse(b.endTime) < start);
    obsolete = before.slice(0, Math.max(0, before.length - 1)); // the newest one before the window stays
  }
  const remove: BackupInfo[] = [];
  let remaining = done.length;
  for (const b of obsolete) {
    if (b.keep) {
      notes.push(`${b.backupId} is obsolete under the policy but marked keep`);
      continue;
    }
    if (remaining - 1 < minimumRedundancy) {
      notes.push(`${b.backupId} is obsolete under the policy but minimum_redundancy = ${minimumRedundancy} keeps it`);
      continue;
    }
    remove.push(b);
    remaining--;
  }
  return { keep: done.filter((b) => !remove.includes(b)), remove, notes };
}

/**
 * The oldest WAL segment (by segment number, any timeline) that a remaining backup needs.
 * Everything before it can go. Undefined when no backup remains: then no WAL is removed.
 */
export function oldestNeededSegment(remaining: BackupInfo[]): string | undefined {
  const begins = remaining.filter((b) => b.status === 'DONE' || b.status === 'WAITING_FOR_WALS' || b.status === 'STARTED').map((b) => b.beginWal).filter(Boolean);
  // compare by log/segment (the last 16 hex digits): a new timeline's segments continue the numbering
  const position = (name: string) => segmentPosition(name) ?? '';
  return begins.sort((a, b) => position(a).localeCompare(position(b)))[0];
}
