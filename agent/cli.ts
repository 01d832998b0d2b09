// barman-agent: the commands that run on the PostgreSQL host. Thin: parse, call a command
// module, print. Command modules are imported lazily so `push` (run once per WAL segment) loads
// only what it uses.

import { Command } from 'commander';
import { configureProgram, parseArgv, runAction } from '../shared/cli';
import { addRecoveryOptions } from '../shared/recovery/cli-options';
import { ExitCode } from '../shared/errors';

const program = configureProgram(new Command('barman-agent'))
  .description('barman-ts agent: archives WAL and takes backups of the local PostgreSQL for barman-receiver')
  .version('0.1.0');

program.option('-c, --config <file>', 'agent configuration file (also accepted after the command)');
const loadConfig = async (opts: { config?: string }) => (await import('../shared/config/agent')).loadAgentConfig(opts.config ?? program.opts<{ config?: string }>().config);

program
  .command('push')
  .description("archive one WAL file (archive_command = 'barman-agent push %p')")
  .argument('<path>', 'the file PostgreSQL hands over (%p)')
  .option('-c, --config <file>', 'agent configuration file')
  .action((path: string, opts: { config?: string }) =>
    runAction(async () => {
      const { pushWal } = await import('./commands/push');
      await pushWal(await loadConfig(opts), path);
    }),
  );

program
  .command('get-wal')
  .description("fetch one WAL file from the receiver (restore_command = 'barman-agent get-wal %f %p')")
  .argument('<name>', 'file name (%f)')
  .argument('<dest>', 'where to write it (%p)')
  .option('-c, --config <file>', 'agent configuration file')
  .action((name: string, dest: string, opts: { config?: string }) =>
    runAction(async () => {
      const { getWal, restoreCommandError } = await import('./commands/get-wal');
      const config = await loadConfig(opts).catch((err: unknown) => Promise.reject(restoreCommandError(err)));
      return (await getWal(config, name, dest, (text) => process.stderr.write(`WARNING: ${text}\n`))) ? ExitCode.OK : ExitCode.FAILED;
    }),
  );

// started by get-wal in the background, never by a user: not in --help
program
  .command('prefetch-wal', { hidden: true })
  .argument('<segment-size>')
  .option('-c, --config <file>', 'agent configuration file')
  .action((segmentSize: string, opts: { config?: string }) =>
    runAction(async () => {
      const { prefetchWal } = await import('./commands/get-wal');
      await prefetchWal(await loadConfig(opts), Number(segmentSize));
    }),
  );

program
  .command('check')
  .description('check the configuration, the receiver and the PostgreSQL settings')
  .option('-c, --config <file>', 'agent configuration file')
  .action((opts: { config?: string }) =>
    runAction(async () => {
      const [{ checkAgent }, { formatChecks }] = await Promise.all([import('./commands/check'), import('../shared/check')]);
      const config = await loadConfig(opts);
      const results = await checkAgent(config);
      process.stdout.write(formatChecks(`Agent for server ${config.server}:`, results));
      return results.every((r) => r.ok) ? ExitCode.OK : ExitCode.FAILED;
    }),
  );

program
  .command('backup')
  .description('take a base backup of the local cluster now and stream it to the receiver')
  .option('-c, --config <file>', 'agent configuration file')
  .action((opts: { config?: string }) =>
    runAction(async () => {
      const [{ backupNow }, { BackupReport }] = await Promise.all([import('./commands/backup'), import('../shared/progress')]);
      const report = new BackupReport();
      let backupId = '';
      let started = Date.now();
      const result = await backupNow(await loadConfig(opts), (p) => {
        if (p.phase === 'started') {
          backupId = p.backupId;
          started = Date.now();
          report.status(backupId, 'STARTED');
        } else if (p.phase === 'files') {
          report.files(backupId, { files: p.done, totalFiles: p.total, bytes: p.bytes, totalBytes: p.totalBytes, seconds: (Date.now() - started) / 1000 });
        } else {
          report.filesDone();
          report.line(`backup stopped at ${p.stopLsn}`);
        }
      }).finally(() => report.end());
      process.stdout.write(`${result.backupId}\n`);
      report.status(result.backupId, result.status);
      return result.status === 'FAILED' ? ExitCode.FAILED : ExitCode.OK;
    }),
  );

addRecoveryOptions(program
  .command('restore')
  .description('pull a backup and its WAL from the receiver and write a startable data directory here')
  .argument('<id>', 'backup ID, latest or oldest')
  .argument('<pgdata>', 'destination directory (new or empty; with --delta an existing data directory)')
  .option('-c, --config <file>', 'agent configuration file'))
  .action((id: string, pgdata: string, opts: Record<string, string | boolean | string[] | undefined> & { config?: string }) => {
    // libuv's thread pool (read when it first starts: before anything here uses it) decompresses the
    // files as they arrive and runs their writes and fsyncs: 4 threads, the default, held by fsyncs, kept the decompression waiting
    process.env.UV_THREADPOOL_SIZE ??= '8';
    return runAction(async () => {
      const [{ restore }, { recoveryOptionsFromCli, recoverySummary, writeOptionsFromCli }, { Progress, recoveryProgress }] = await Promise.all([import('./commands/restore'), import('../shared/recovery/cli-options'), import('../shared/progress')]);
      const started = Date.now();
      const progress = new Progress();
      const write = writeOptionsFromCli(opts);
      const plan = await restore(await loadConfig(opts), id, pgdata, recoveryOptionsFromCli(opts), recoveryProgress(progress), opts.pgBindir as string | undefined, write).finally(() => progress.end());
      process.stdout.write(recoverySummary('Restored', plan, pgdata, (Date.now() - started) / 1000, write.delta));
    });
  });

program
  .command('daemon')
  .description('stay connected to the receiver: archive ahead, stream WAL, take backups when it asks')
  .option('-c, --config <file>', 'agent configuration file')
  .option('--takeover', 'replace the daemon of this server that is connected now (it exits 0); without it, this one is refused')
  .action((opts: { config?: string; takeover?: boolean }) =>
    runAction(async () => {
      const { runDaemon } = await import('./commands/daemon');
      const config = await loadConfig(opts);
      const stop = new AbortController();
      process.once('SIGTERM', () => stop.abort('SIGTERM'));
      process.once('SIGINT', () => stop.abort('SIGINT'));
      await runDaemon(config, stop.signal, { takeover: Boolean(opts.takeover) });
    }),
  );

void parseArgv(program, process.argv);
