// The two programs as a user runs them: the agent as postgres (as PostgreSQL runs archive_command),
// the receiver as root (its service user in tests). Both from the copied bundles.

import { agentBin, receiverBin } from './env';
import { run, type RunOptions, type RunResult } from './run';

/** `barman-agent ...args`; as the postgres OS user unless `asPostgres: false`. */
export function runAgent(args: string[], options: RunOptions = {}): Promise<RunResult> {
  return run(process.execPath, [agentBin(), ...args], { asPostgres: true, ...options });
}

/** `barman-receiver ...args` (the same bundle is installed as `barman` for Barman's forms). */
export function runReceiverCli(args: string[], options: RunOptions = {}): Promise<RunResult> {
  return run(process.execPath, [receiverBin(), ...args], options);
}

/** The shell command line that runs the agent, for archive_command / restore_command. */
export function agentCommandLine(configPath: string, args: string): string {
  return `${process.execPath} ${agentBin()} -c ${configPath} ${args}`;
}
