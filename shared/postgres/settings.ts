// The PostgreSQL settings archiving through the agent depends on, judged the same way on both
// hosts: `barman-agent check` reads them from the database host, `barman-receiver check` through
// the agent daemon (pg-probe).

import type { CheckResult } from '../check';

export interface ArchiveSettings {
  walLevel: string;
  archiveMode: string;
  archiveCommand: string;
}

/** archive_command runs `barman-agent ... push`. */
export function archivesThroughAgent(archiveCommand: string): boolean {
  return /barman-agent\b.*\bpush\b/.test(archiveCommand);
}

/** wal_level, archive_mode and archive_command, one check each. */
export function archiveSettingChecks(s: ArchiveSettings): CheckResult[] {
  return [
    setting('wal_level', ['replica', 'logical'].includes(s.walLevel), s.walLevel, 'Set wal_level = replica in postgresql.conf and restart PostgreSQL.'),
    setting('archive_mode', ['on', 'always'].includes(s.archiveMode), s.archiveMode, 'Set archive_mode = on in postgresql.conf and restart PostgreSQL.'),
    setting('archive_command', archivesThroughAgent(s.archiveCommand), s.archiveCommand || 'not set', "Set archive_command = 'barman-agent push %p' and reload PostgreSQL."),
  ];
}

/**
 * The daemon's replication slot, when it streams: there, and not lost (wal_status, PostgreSQL 13+).
 * `streaming`: the daemon is connected and should be streaming through it now (the receiver's
 * check), so the slot must be in use; on the database host (barman-agent check) the daemon may
 * not run yet, and a slot it will create itself (`createdByDaemon`, create_slot = auto) may not
 * exist yet.
 */
export function slotCheck(slot: { name: string; exists: boolean; active: boolean; restartLsn: string; walStatus: string }, expect: { streaming: boolean; createdByDaemon: boolean }): CheckResult {
  const name = 'replication slot';
  if (!slot.exists) {
    if (expect.createdByDaemon && !expect.streaming) return { name, ok: true, detail: `${slot.name} not there yet: the daemon creates it (create_slot = auto)` };
    return { name, ok: false, detail: `${slot.name} does not exist`, hint: `Start barman-agent daemon with create_slot = auto, or create it: SELECT pg_create_physical_replication_slot('${slot.name}');` };
  }
  if (slot.walStatus === 'lost') return { name, ok: false, detail: `${slot.name} has lost WAL it needed (wal_status lost)`, hint: `The stream cannot resume from it: drop and recreate the slot (SELECT pg_drop_replication_slot('${slot.name}')), restart the daemon, and take a new backup.` };
  const state = `restart_lsn ${slot.restartLsn || '-'}${slot.walStatus ? `, wal_status ${slot.walStatus}` : ''}`;
  if (!slot.active) {
    if (!expect.streaming) return { name, ok: true, detail: `${slot.name} not in use now (no daemon streaming), ${state}` };
    return { name, ok: false, detail: `${slot.name} is not in use by a stream`, hint: 'The agent daemon is not streaming: look at its log on the PostgreSQL host.' };
  }
  return { name, ok: true, detail: `${slot.name} active, ${state}` };
}

function setting(name: string, ok: boolean, value: string, hint: string): CheckResult {
  return ok ? { name, ok, detail: value } : { name, ok, detail: `is ${value}`, hint };
}
