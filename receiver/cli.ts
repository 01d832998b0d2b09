// barman-receiver (also installed as barman): the service and the catalog commands on the backup
// host. Thin: parse, call a command module, print. Barman's `barman server <verb> <srv>` forms
// are rewritten to the flat commands before parsing.

import { Command } from 'commander';
import { configureProgram, parseArgv, printJson, runAction } from '../shared/cli';
import { snakeKeys } from '../shared/snake-case';
import { addRecoveryOptions } from '../shared/recovery/cli-options';
import { BarmanError, ErrorCode, ExitCode } from '../shared/errors';

const program = configureProgram(new Command('barman-receiver'))
  .description('barman-ts receiver: stores WAL and backups of PostgreSQL servers and serves them back')
  .version('0.1.0');

type Opts = { config?: string; json?: boolean };
program.option('-c, --config <file>', 'receiver configuration file (also accepted after the command)');
const loadConfig = async (opts: Opts) => (await import('../shared/config/receiver')).loadReceiverConfig(opts.config ?? program.opts<{ config?: string }>().config);

function command(name: string, description: string): Command {
  return program.command(name).description(description).option('-c, --config <file>', 'receiver configuration file');
}

command('serve', 'run the receiver service in the foreground').action((opts: Opts) =>
  runAction(async () => {
    const { serve } = await import('./commands/serve');
    await serve(await loadConfig(opts));
  }),
);

command('list-servers', 'one line per configured server')
  .alias('list')
  .option('--json', 'one JSON document on stdout')
  .action((opts: Opts) =>
    runAction(async () => {
      const { listServers } = await import('./commands/servers');
      const servers = listServers(await loadConfig(opts));
      if (opts.json) printJson(servers);
      else for (const s of servers) process.stdout.write(`${s.name} - ${s.description}\n`);
    }),
  );

command('show-server', 'configuration and paths of a server')
  .argument('<server>')
  .option('--json', 'one JSON document on stdout')
  .action((server: string, opts: Opts) =>
    runAction(async () => {
      const { showServer } = await import('./commands/servers');
      const info = showServer(await loadConfig(opts), server);
      if (opts.json) printJson(info);
      else process.stdout.write(`Server ${server}:\n` + Object.entries(info).map(([k, v]) => `\t${k}: ${v}`).join('\n') + '\n');
    }),
  );

command('check', 'check a server: storage, agent and PostgreSQL, WAL arriving and intact, backups, drills')
  .argument('<server>')
  .option('--json', 'one JSON document on stdout')
  .option('--nagios', 'one line in the Nagios plugin format (BARMAN OK|WARNING|CRITICAL - ...), exit 0, 1 or 2')
  .option('--verify-wal', 'read back every WAL file the backups need now (else a bounded share per run)')
  .action((server: string, opts: Opts & { verifyWal?: boolean; nagios?: boolean }) =>
    runAction(async () => {
      const [{ checkServer }, { formatChecks, formatNagios }] = await Promise.all([import('./commands/check'), import('../shared/check')]);
      const results = await checkServer(await loadConfig(opts), server, new Date(), { verifyWal: Boolean(opts.verifyWal) });
      if (opts.nagios) {
        const { line, exitCode } = formatNagios(server, results);
        process.stdout.write(line);
        return exitCode;
      }
      if (opts.json) printJson({ server, ok: results.every((r) => r.ok), checks: results.map((r) => ({ ...r, severity: r.severity ?? 'critical' })) });
      else process.stdout.write(formatChecks(`Server ${server}:`, results));
      return results.every((r) => r.ok) ? ExitCode.OK : ExitCode.FAILED;
    }),
  );

command('get-wal', "write a WAL file's plain bytes to stdout (or --output-dir)")
  .argument('<server>')
  .argument('<name>', 'segment, .history or .backup file name')
  .option('--output-dir <dir>', 'write <dir>/<name> instead of stdout')
  .action((server: string, name: string, opts: Opts & { outputDir?: string }) =>
    runAction(async () => {
      const { getWalCommand } = await import('./commands/get-wal');
      await getWalCommand(await loadConfig(opts), server, name, opts.outputDir, (w) => process.stderr.write(`WARNING: ${w}\n`));
    }),
  );

command('status', 'agent, WAL, streaming, backups and RPO of a server')
  .argument('<server>')
  .option('--json', 'one JSON document on stdout')
  .action((server: string, opts: Opts) =>
    runAction(async () => {
      const { serverStatus, formatStatus } = await import('./commands/status');
      const status = await serverStatus(await loadConfig(opts), server);
      if (opts.json) printJson(status);
      else process.stdout.write(formatStatus(status));
    }),
  );

command('list-backups', 'one line per backup, newest first')
  .argument('<server>')
  .option('--json', 'one JSON document on stdout')
  .action((server: string, opts: Opts) =>
    runAction(async () => {
      const { listBackups, formatBackupLine, backupJson } = await import('./commands/backups');
      // (obsolete: what the retention policy deletes at the next housekeeping; drilled: the last restore drill)
      const backups = await listBackups(await loadConfig(opts), server);
      if (opts.json) printJson(backups.map(backupJson));
      else for (const b of backups) process.stdout.write(formatBackupLine(server, b) + '\n');
    }),
  );

command('show-backup', 'everything the catalog knows about one backup')
  .argument('<server>')
  .argument('<id>', 'backup ID, latest or oldest')
  .option('--json', 'one JSON document on stdout')
  .action((server: string, id: string, opts: Opts) =>
    runAction(async () => {
      const { showBackup, formatBackupDetails, backupJson } = await import('./commands/backups');
      const info = await showBackup(await loadConfig(opts), server, id);
      if (opts.json) printJson(backupJson(info));
      else process.stdout.write(formatBackupDetails(server, info));
    }),
  );

command('backup', "ask the server's agent daemon to take a base backup; prints its ID")
  .argument('<server>')
  .option('--wait', 'return only when the backup is DONE (exit 0) or FAILED (exit 1), showing its progress on stderr')
  .action((server: string, opts: Opts & { wait?: boolean }) =>
    runAction(async () => {
      const [{ requestBackup }, { BackupReport }] = await Promise.all([import('./commands/backups'), import('../shared/progress')]);
      const report = new BackupReport();
      let printed = false;
      try {
        const result = await requestBackup(await loadConfig(opts), server, Boolean(opts.wait), (s) => {
          if (!printed) {
            process.stdout.write(`${s.backupId}\n`);
            printed = true;
          }
          report.status(s.backupId, s.status, s.reason);
        }, (p) => report.files(p.backupId, { files: p.files, bytes: p.bytes, seconds: p.elapsedMs / 1000, totalFiles: p.totalFiles, totalBytes: p.totalBytes }));
        if (result.status === 'FAILED') {
          throw new BarmanError(ErrorCode.BACKUP_FAILED, `backup ${result.backupId} FAILED${result.reason ? `: ${result.reason}` : ''}`, `See the agent's log on the PostgreSQL host and barman-receiver show-backup ${server} ${result.backupId}.`);
        }
      } finally {
        report.end();
      }
    }),
  );

command('delete', 'remove one backup (respects minimum_redundancy and keep)')
  .argument('<server>')
  .argument('<id>', 'backup ID, latest or oldest')
  .action((server: string, id: string, opts: Opts) =>
    runAction(async () => {
      const { deleteBackup } = await import('./commands/backups');
      const info = await deleteBackup(await loadConfig(opts), server, id);
      process.stdout.write(`Deleted backup ${info.backupId} of ${server}\n`);
    }),
  );

command('keep', 'exempt a backup from retention (--release to undo)')
  .argument('<server>')
  .argument('<id>', 'backup ID, latest or oldest')
  .option('--release', 'make the backup subject to retention again')
  .action((server: string, id: string, opts: Opts & { release?: boolean }) =>
    runAction(async () => {
      const { keepBackup } = await import('./commands/backups');
      const info = await keepBackup(await loadConfig(opts), server, id, Boolean(opts.release));
      process.stdout.write(`Backup ${info.backupId} of ${server}: keep ${info.keep ? 'on' : 'released'}\n`);
    }),
  );

command('verify-backup', 'read every file of a backup back and check it against its manifest')
  .alias('verify')
  .argument('<server>')
  .argument('<id>', 'backup ID, latest or oldest')
  .option('--json', 'one JSON document on stdout')
  .action((server: string, id: string, opts: Opts) =>
    runAction(async () => {
      const { verifyBackup } = await import('./commands/backups');
      const result = await verifyBackup(await loadConfig(opts), server, id);
      if (opts.json) printJson(snakeKeys(result));
      else {
        for (const p of result.problems) process.stdout.write(`FAILED: ${p}\n`);
        process.stdout.write(`backup ${result.backupId}: ${result.checked} files and ${result.walChecked} WAL files checked, ${result.ok ? 'all match the manifest and their checksums' : `${result.problems.length} problem(s)`}\n`);
      }
      if (!result.ok) {
        throw new BarmanError(ErrorCode.CHECKSUM_MISMATCH, `backup ${result.backupId} does not match its manifest${result.problems.some((p) => p.startsWith('WAL ')) ? ' or its WAL is missing or damaged' : ''}`, "Do not recover from it; take a new backup and check the backup host's storage.");
      }
    }),
  );

addRecoveryOptions(command('recover', 'write a startable PostgreSQL data directory from a backup and its WAL'))
  .argument('<server>')
  .argument('<id>', 'backup ID, latest or oldest')
  .argument('<dest>', 'destination directory (new or empty; with --delta an existing data directory)')
  .option('--owner <user>', 'owner of the recovered files (default: the destination parent\'s owner, or postgres when run as root)')
  .action((server: string, id: string, dest: string, opts: Opts & Record<string, string | boolean | string[] | undefined>) =>
    runAction(async () => {
      const [{ recover }, { recoveryOptionsFromCli, recoverySummary, writeOptionsFromCli }, { Progress, recoveryProgress }] = await Promise.all([import('./commands/recover'), import('../shared/recovery/cli-options'), import('../shared/progress')]);
      const started = Date.now();
      const progress = new Progress();
      const write = writeOptionsFromCli(opts);
      const plan = await recover(await loadConfig(opts), server, id, dest, {
        ...recoveryOptionsFromCli(opts),
        ...write,
        owner: opts.owner as string | undefined,
        pgBindir: opts.pgBindir as string | undefined,
      }, recoveryProgress(progress)).finally(() => progress.end());
      process.stdout.write(recoverySummary('Recovered', plan, dest, (Date.now() - started) / 1000, write.delta));
    }),
  );

command('drill', 'restore a backup into a scratch directory, start it, check it, record the result and the RTO, clean up')
  .argument('<server>')
  .argument('[id]', 'backup ID, latest or oldest (default latest)')
  .option('--target-time <time>', 'recover to this time (ISO 8601) instead of the end of WAL')
  .option('--json', 'one JSON document on stdout')
  .action((server: string, id: string | undefined, opts: Opts & { targetTime?: string }) =>
    runAction(async () => {
      const [{ drillCommand }, { formatChecks }] = await Promise.all([import('./commands/drill'), import('../shared/check')]);
      const config = await loadConfig(opts);
      if (!opts.json) process.stderr.write(`restore drill of ${server} ${id ?? 'latest'}: restoring, starting and checking a copy on this host...\n`);
      const r = await drillCommand(config, server, { backup: id, targetTime: opts.targetTime });
      if (opts.json) printJson({ server, backup_id: r.backupId, passed: r.passed, rto_seconds: r.rtoSeconds, checks: r.checks, error: r.error, at: r.at });
      else {
        process.stdout.write(formatChecks(`Drill of backup ${r.backupId} of ${server}:`, r.checks));
        process.stdout.write(r.passed ? `Drill passed: RTO ${r.rtoSeconds} s\n` : `Drill FAILED: ${r.error}\n`);
      }
      if (!r.passed) throw new BarmanError(ErrorCode.DRILL_FAILED, `the restore drill of backup ${r.backupId} of ${server} failed: ${r.error}`, `Fix what the failed check names and run the drill again (barman-receiver drill ${server}${id ? ` ${id}` : ''}); until then this backup is not proven recoverable.`);
    }),
  );

command('cron', 'apply retention policies, remove WAL no backup needs, tidy up')
  .option('--json', 'one JSON document on stdout')
  .action((opts: Opts) =>
    runAction(async () => {
      const { runCron } = await import('./commands/cron');
      const reports = await runCron(await loadConfig(opts));
      if (opts.json) printJson(reports.map(snakeKeys));
      else {
        for (const r of reports) {
          process.stdout.write(`${r.server}: ${r.promoted.length ? `DONE now: ${r.promoted.join(', ')}; ` : ''}removed ${r.removedBackups.length} backup(s)${r.removedBackups.length ? ` (${r.removedBackups.join(', ')})` : ''}, ${r.removedWals} WAL file(s), ${r.removedTemp} stale temporary file(s)${r.checksumsRecorded ? `; checksums recorded for ${r.checksumsRecorded} WAL file(s) stored by an older version` : ''}\n`);
          for (const n of r.notes) process.stdout.write(`\t${n}\n`);
        }
      }
    }),
  );

/**
 * `barman server show main` → `show-server main` (Barman's forms). Barman's `server backup`
 * runs the whole backup, so it waits (`--wait`) and shows its progress.
 */
const BARMAN_VERBS: Record<string, string[]> = {
  show: ['show-server'], check: ['check'], backup: ['backup', '--wait'], list: ['list-backups'], recover: ['recover'], status: ['status'],
};
const argv = [...process.argv];
const barmanForm = argv[2] === 'server' && argv[3] ? BARMAN_VERBS[argv[3]] : undefined;
if (barmanForm) argv.splice(2, 2, ...barmanForm);

void parseArgv(program, argv);
