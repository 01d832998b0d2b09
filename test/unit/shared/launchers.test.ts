// receiver/launcher.sh, the installed barman-receiver (and barman), and agent/launcher.sh, the
// installed barman-agent, for what it hands to Node: each runs the Node program beside it with
// glibc's malloc held to one arena that keeps what it frees (the agent's daemon excepted) unless
// the caller chose, its arguments and exit status passed through, also when reached through a
// link (npm's bin directory).

import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const root = mkdtempSync(join(tmpdir(), 'barman-launchers-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const programs = [
  { program: 'barman-receiver', launcher: resolve(import.meta.dirname, '../../../receiver/launcher.sh'), link: 'barman' },
  { program: 'barman-agent', launcher: resolve(import.meta.dirname, '../../../agent/launcher.sh'), link: 'barman-agent' },
];

/** runs `file` with only PATH and `env` in its environment */
const run = (file: string, args: string[], env: Record<string, string> = {}) => spawnSync(file, args, { encoding: 'utf8', env: { PATH: process.env.PATH, ...env } });

/** dist/ as the build leaves it, with a stand-in for the Node program that says what reached it (its malloc settings, its arguments) and exits 7 */
function dist(program: string, launcher: string, name: string): string {
  const dir = join(root, program, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, program), readFileSync(launcher), { mode: 0o755 });
  writeFileSync(join(dir, `${program}.cjs`), 'const e = process.env; process.stdout.write(`${e.MALLOC_ARENA_MAX} ${e.MALLOC_TRIM_THRESHOLD_} ${e.MALLOC_MMAP_THRESHOLD_} ${JSON.stringify(process.argv.slice(2))}`); process.exitCode = 7;\n');
  return dir;
}

describe.each(programs)('the $program launcher', ({ program, launcher, link }) => {
  it('runs the .cjs beside it with one malloc arena that keeps what it frees (32 MiB), the arguments and the exit status unchanged', () => {
    const r = run(join(dist(program, launcher, 'plain'), program), ['recover', '-c', '/etc/barman.conf', 'main', 'latest', '/srv/a dir with spaces']);
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('1 33554432 4194304 ["recover","-c","/etc/barman.conf","main","latest","/srv/a dir with spaces"]');
    expect(r.status).toBe(7);
  });

  it("keeps the caller's malloc settings", () => {
    const r = run(join(dist(program, launcher, 'caller'), program), ['serve'], { MALLOC_ARENA_MAX: '4', MALLOC_TRIM_THRESHOLD_: '131072', MALLOC_MMAP_THRESHOLD_: '65536' });
    expect(r.stdout).toBe('4 131072 65536 ["serve"]');
  });

  it("finds the program beside the file a link points to (npm's bin directory)", () => {
    const dir = dist(program, launcher, 'linked');
    const bin = join(root, program, 'bin');
    mkdirSync(bin);
    symlinkSync(join(dir, program), join(bin, link));
    const r = run(join(bin, link), ['list-servers']);
    expect(r.stdout).toBe('1 33554432 4194304 ["list-servers"]');
    expect(r.status).toBe(7);
  });
});

describe('the barman-agent launcher', () => {
  it('leaves the daemon, which lives on, to give freed memory back (the default), with one arena and a small young generation', () => {
    const dir = dist('barman-agent', programs[1]!.launcher, 'daemon');
    writeFileSync(join(dir, 'barman-agent.cjs'), 'const e = process.env; process.stdout.write(`${e.MALLOC_ARENA_MAX} ${e.MALLOC_TRIM_THRESHOLD_} ${e.MALLOC_MMAP_THRESHOLD_} ${JSON.stringify(process.execArgv)} ${JSON.stringify(process.argv.slice(2))}`);\n');
    const agent = join(dir, 'barman-agent');
    expect(run(agent, ['daemon', '-c', '/etc/barman-agent.conf']).stdout).toBe('1 undefined undefined ["--max-semi-space-size=2"] ["daemon","-c","/etc/barman-agent.conf"]');
    expect(run(agent, ['-c', '/etc/barman-agent.conf', 'daemon', '--takeover']).stdout).toBe('1 undefined undefined ["--max-semi-space-size=2"] ["-c","/etc/barman-agent.conf","daemon","--takeover"]');
    // any other command: Node as it comes (its code cache is made for no flags)
    expect(run(agent, ['-c', '/etc/barman-agent.conf', 'restore', 'latest', '/srv/pgdata']).stdout).toBe('1 33554432 4194304 [] ["-c","/etc/barman-agent.conf","restore","latest","/srv/pgdata"]');
  });
});
