// barman-receiver (also installed as barman): the service and the catalog commands on the backup
// host. Thin: parse, call a command module, print. The seed's `barman server <verb> <srv>` forms
// are rewritten to the flat commands before parsing.

import { Command } from 'commander';
import { configureProgram, parseArgv, printJson, runAction } from '../shared/cli';
import { ExitCode } from '../shared/errors';

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

command('check', 'check a server: configuration, storage, WAL arriving')
  .argument('<server>')
  .option('--json', 'one JSON document on stdout')
  .action((server: string, opts: Opts) =>
    runAction(async () => {
      const [{ checkServer }, { formatChecks }] = await Promise.all([import('./commands/check'), import('../shared/check')]);
      const results = await checkServer(await loadConfig(opts), server);
      if (opts.json) printJson({ server, ok: results.every((r) => r.ok), checks: results });
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
      await getWalCommand(await loadConfig(opts), server, name, opts.outputDir);
    }),
  );

/** `barman server show main` → `show-server main` (the seed's forms). */
const SEED_VERBS: Record<string, string> = { show: 'show-server', check: 'check', backup: 'backup', list: 'list-backups', recover: 'recover', status: 'status' };
const argv = [...process.argv];
if (argv[2] === 'server' && argv[3] && SEED_VERBS[argv[3]]) argv.splice(2, 2, SEED_VERBS[argv[3]]!);

void parseArgv(program, argv);
