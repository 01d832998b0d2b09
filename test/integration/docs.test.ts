// The repository stands alone: what README and docs/ point at exists in it, and docs/commands.md
// describes every command and option the two programs' --help offers (so a new option cannot
// ship undocumented).

import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { describeRun, runAgent, runReceiverCli, type RunResult } from '../harness';

const REPO = resolve(import.meta.dirname, '../..');
const read = (path: string) => readFileSync(join(REPO, path), 'utf8');

/** The subcommands a program's --help lists, with the long options each one's --help lists. */
async function commandsOf(run: (args: string[]) => Promise<RunResult>): Promise<Map<string, string[]>> {
  const help = await run(['--help']);
  const names = [...help.stdout.matchAll(/^ {2}([a-z][a-z-]*)[| ]/gm)].map((m) => m[1]!).filter((n) => n !== 'help');
  expect(names.length, describeRun(help)).toBeGreaterThan(3);
  const out = new Map<string, string[]>();
  for (const name of names) {
    const r = await run([name, '--help']);
    const options = [...r.stdout.matchAll(/^ {2}(?:-\w, )?(--[a-z][a-z-]*)/gm)].map((m) => m[1]!).filter((o) => o !== '--help' && o !== '--config');
    out.set(name, options);
  }
  return out;
}

describe('the documentation', () => {
  it('links only to files inside the repository, and they exist', () => {
    const documents = ['README.md', ...readdirSync(join(REPO, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];
    const broken: string[] = [];
    for (const doc of documents) {
      for (const [, target] of read(doc).matchAll(/\]\(([^)\s]+)\)/g)) {
        if (/^[a-z]+:/.test(target!) || target!.startsWith('#')) continue;
        const path = resolve(dirname(join(REPO, doc)), target!.replace(/#.*$/, ''));
        if (!path.startsWith(REPO + '/') || !existsSync(path)) broken.push(`${doc}: ${target}`);
      }
    }
    expect(broken).toEqual([]);
  });

  it('describes every command and option of barman-receiver and barman-agent in docs/commands.md', async () => {
    const text = read('docs/commands.md');
    const [receiver, agent] = text.split(/^## barman-agent$/m) as [string, string];
    expect(agent, 'docs/commands.md has a "## barman-agent" part').toBeDefined();
    const receiverCommands = await commandsOf((args) => runReceiverCli(args));
    const agentCommands = await commandsOf((args) => runAgent(args));
    // the help was read: commands and their options are there to check
    expect(receiverCommands.get('recover')).toEqual(expect.arrayContaining(['--target-time', '--tablespace', '--owner']));
    expect([...agentCommands.keys()]).toEqual(expect.arrayContaining(['push', 'get-wal', 'daemon']));
    const missing: string[] = [];
    for (const [program, part, commands] of [
      ['barman-receiver', receiver, receiverCommands],
      ['barman-agent', agent, agentCommands],
    ] as const) {
      for (const [name, options] of commands) {
        if (!part.includes(`| \`${name}\``)) missing.push(`${program} ${name}`);
        for (const option of options) if (!part.includes(option) && !(program === 'barman-agent' && receiver.includes(option))) missing.push(`${program} ${name} ${option}`);
      }
    }
    expect(missing).toEqual([]);
  });
});
