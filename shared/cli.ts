// What both command-line programs share: running an action, turning a failure into one
// `ERROR [CODE]: ...` line and one HINT line on stderr and the right exit code (docs/errors.md),
// and printing --json.

import { Command, CommanderError } from 'commander';
import { BarmanError, ErrorCode, ExitCode, asBarmanError } from './errors';

// `barman list-backups main | head`: a reader that goes away is not an error of ours
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw err;
});

/** Runs a command's action; a command never calls process.exit itself. */
export async function runAction(action: () => Promise<number | void>): Promise<void> {
  try {
    const code = await action();
    process.exitCode = code ?? ExitCode.OK;
  } catch (err) {
    const e = asBarmanError(err);
    process.stderr.write(e.toUserText() + '\n');
    if (process.env.BARMAN_DEBUG && e.stack) process.stderr.write(`${e.stack}\n${e.cause instanceof Error ? e.cause.stack : ''}\n`);
    process.exitCode = e.exitCode;
  }
}

export function configureProgram(program: Command): Command {
  program
    .exitOverride()
    // commander's own complaints (unknown option, missing argument) get the same ERROR [CODE] form
    .configureOutput({ writeErr: (s) => process.stderr.write(s), outputError: (s, write) => write(s.replace(/^error: /, `ERROR [${ErrorCode.USAGE}]: `)) })
    .showHelpAfterError(false);
  return program;
}

/** Parses argv; usage errors exit 2 with a HINT, --help and --version exit 0. */
export async function parseArgv(program: Command, argv: string[]): Promise<void> {
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') {
        process.exitCode = ExitCode.OK;
        return;
      }
      process.stderr.write(`HINT: run \`${program.name()} --help\` (or \`${program.name()} <command> --help\`) for usage.\n`);
      process.exitCode = ExitCode.USAGE;
      return;
    }
    process.stderr.write(asBarmanError(err).toUserText() + '\n');
    process.exitCode = ExitCode.FAILED;
  }
}

export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, null, 2) + '\n');
}

export function usageError(message: string, hint: string): BarmanError {
  return new BarmanError(ErrorCode.USAGE, message, hint);
}
