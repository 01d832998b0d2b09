// The two programs as a user runs them: the agent as postgres (as PostgreSQL runs archive_command),
// the receiver as root (its service user in tests). Both from the copied bundles.

import { agentBin, agentLauncher, receiverBin } from './env';
import { run, type RunOptions, type RunResult } from './run';

/** `barman-agent ...args`; as the postgres OS user unless `asPostgres: false`. */
export function runAgent(args: string[], options: RunOptions = {}): Promise<RunResult> {
  return run(process.execPath, [agentBin(), ...args], { asPostgres: true, ...options });
}

/** `barman-receiver ...args` (the same bundle is installed as `barman` for Barman's forms). */
export function runReceiverCli(args: string[], options: RunOptions = {}): Promise<RunResult> {
  return run(process.execPath, [receiverBin(), ...args], options);
}

/**
 * archive_command as installed: the sh launcher (`dist/barman-agent`), which answers from the
 * daemon's ack without Node and runs `node barman-agent.cjs` (node from PATH) for everything else.
 */
export function archiveCommandLine(configPath: string): string {
  return `${agentLauncher()} -c ${configPath} push %p`;
}

/** The shell command line that runs the agent, for archive_command / restore_command. */
export function agentCommandLine(configPath: string, args: string): string {
  return `${process.execPath} ${agentBin()} -c ${configPath} ${args}`;
}
