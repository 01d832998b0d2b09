// The recovery target options as both command lines spell them (recover on the receiver, restore
// on the agent), turned into RecoveryOptions once.

import type { Command } from 'commander';
import { usageError } from '../cli';
import type { RecoveryOptions, RecoveryPlan, TargetAction } from './plan';
import type { WriteSummary } from './writer';

export function recoveryOptionsFromCli(opts: Record<string, string | boolean | string[] | undefined>): RecoveryOptions {
  const action = opts.targetAction as string | undefined;
  if (action !== undefined && !['pause', 'promote', 'shutdown'].includes(action)) {
    throw usageError(`--target-action "${action}" is not pause, promote or shutdown`, 'Use --target-action pause|promote|shutdown.');
  }
  const tablespaces: Record<string, string> = {};
  for (const spec of (opts.tablespace as string[] | undefined) ?? []) {
    const i = spec.indexOf(':');
    if (i <= 0) throw usageError(`--tablespace "${spec}" is not name:location`, 'Write --tablespace tbs1:/new/location.');
    tablespaces[spec.slice(0, i)] = spec.slice(i + 1);
  }
  const text = (k: string) => opts[k] as string | undefined;
  return {
    targetTime: text('targetTime'),
    targetXid: text('targetXid'),
    targetLsn: text('targetLsn'),
    targetName: text('targetName'),
    targetImmediate: Boolean(opts.targetImmediate),
    targetTli: text('targetTli'),
    targetAction: action as TargetAction | undefined,
    exclusive: Boolean(opts.exclusive),
    tablespaces,
    ...(opts.standby ? { standby: true } : {}),
  };
}

/** How the recovery is written on this host (never sent to the receiver: primary_conninfo may hold a password). */
export function writeOptionsFromCli(opts: Record<string, string | boolean | string[] | undefined>): { delta: boolean; primaryConninfo?: string } {
  const primaryConninfo = opts.primaryConninfo as string | undefined;
  if (primaryConninfo !== undefined && !opts.standby) throw usageError('--primary-conninfo is for a standby', 'Add --standby, or leave out --primary-conninfo.');
  return { delta: Boolean(opts.delta), ...(primaryConninfo !== undefined ? { primaryConninfo } : {}) };
}

/** The target options, defined once for recover and restore. */
export function addRecoveryOptions(command: Command): Command {
  return command
    .option('--target-time <time>', 'ISO 8601, with an offset or in the receiver host\'s time zone')
    .option('--target-xid <xid>', 'transaction ID')
    .option('--target-lsn <lsn>', 'WAL location, e.g. 0/3000060')
    .option('--target-name <name>', 'restore point made with pg_create_restore_point()')
    .option('--target-immediate', 'stop as soon as the backup is consistent')
    .option('--target-tli <tli>', 'current, latest or a timeline number', 'latest')
    .option('--target-action <action>', 'pause, promote or shutdown (default promote when a target is given)')
    .option('--exclusive', 'stop just before the target instead of just after it')
    .option('--tablespace <name:location...>', 'where a tablespace goes, an absolute path (repeatable; recover on the backup host needs one for each tablespace)')
    .option('--standby', 'a standby that keeps following the catalog: standby.signal, restore_command = barman-agent get-wal, the latest timeline')
    .option('--primary-conninfo <conninfo>', "with --standby: primary_conninfo, to stream from the primary too (stored in postgresql.auto.conf, never printed; keep a password in the postgres user's ~/.pgpass)")
    .option('--delta', 'into an existing data directory: write only the files that differ from the backup, remove what it does not have (also completes an interrupted restore)')
    .option('--pg-bindir <dir>', "PostgreSQL binaries that will start the result: refused unless they are the backup's major version (default $PG_BINDIR, else this host's own are checked)");
}

/** What recover and restore print on stdout once the directory is written. */
export function recoverySummary(verb: 'Recovered' | 'Restored', plan: RecoveryPlan & { summary: WriteSummary }, dest: string, seconds: number, delta: boolean): string {
  const s = plan.summary;
  const what = delta
    ? `${plan.files.length} files: ${s.written} written, ${s.unchanged} unchanged, ${s.removed} removed that the backup does not have`
    : `${plan.files.length} files`;
  const lines = [`${verb} backup ${plan.backupId} of ${plan.server} into ${dest}${delta ? ' (delta)' : ''} (target: ${plan.targetDescription}; ${what}, ${plan.wals.length} WAL files) in ${seconds.toFixed(1)} s`];
  if (plan.standby) lines.push("A standby: standby.signal, restore_command = 'barman-agent get-wal %f %p' (the agent configuration must be where barman-agent finds it for the postgres user: $BARMAN_AGENT_CONFIG, ~/.barman-agent.conf or /etc/barman-agent.conf).");
  lines.push(`Start it with: pg_ctl -D ${dest} start`);
  return lines.join('\n') + '\n';
}
