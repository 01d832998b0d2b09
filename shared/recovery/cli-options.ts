// The recovery target options as both command lines spell them (recover on the receiver, restore
// on the agent), turned into RecoveryOptions once.

import type { Command } from 'commander';
import { usageError } from '../cli';
import type { RecoveryOptions, TargetAction } from './plan';

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
  };
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
    .option('--pg-bindir <dir>', "PostgreSQL binaries that will start the result: refused unless they are the backup's major version (default $PG_BINDIR, else this host's own are checked)");
}
