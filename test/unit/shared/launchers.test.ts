// receiver/launcher.sh, the installed barman-receiver (and barman), and agent/launcher.sh, the
// installed barman-agent, for what it hands to Node: each runs the Node program beside it with
// glibc's malloc held to one arena that keeps what it frees unless the caller chose, its arguments
// and exit status passed through, also when reached through a link (npm's bin directory).

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

describe.each(programs)('the $program launcher', ({ program, launcher, link }) => {
  /** dist/ as the build leaves it, with a stand-in for the Node program that says what reached it */
  function dist(name: string): string {
    const dir = join(root, program, name);
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, program), readFileSync(launcher), { mode: 0o755 });
    writeFileSync(join(dir, `${program}.cjs`), 'const e = process.env; process.stdout.write(`${e.MALLOC_ARENA_MAX} ${e.MALLOC_TRIM_THRESHOLD_} ${e.MALLOC_MMAP_THRESHOLD_} ${JSON.stringify(process.argv.slice(2))}`); process.exitCode = 7;\n');
    return dir;
  }

  it('runs the .cjs beside it with one malloc arena that keeps what it frees (32 MiB), the arguments and the exit status unchanged', () => {
    const r = run(join(dist('plain'), program), ['recover', '-c', '/etc/barman.conf', 'main', 'latest', '/srv/a dir with spaces']);
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('1 33554432 4194304 ["recover","-c","/etc/barman.conf","main","latest","/srv/a dir with spaces"]');
    expect(r.status).toBe(7);
  });

  it("keeps the caller's malloc settings", () => {
    const r = run(join(dist('caller'), program), ['serve'], { MALLOC_ARENA_MAX: '4', MALLOC_TRIM_THRESHOLD_: '131072', MALLOC_MMAP_THRESHOLD_: '65536' });
    expect(r.stdout).toBe('4 131072 65536 ["serve"]');
  });

  it('finds the program beside the file a link points to (npm\'s bin directory)', () => {
    const dir = dist('linked');
    const bin = join(root, program, 'bin');
    mkdirSync(bin);
    symlinkSync(join(dir, program), join(bin, link));
    const r = run(join(bin, link), ['list-servers']);
    expect(r.stdout).toBe('1 33554432 4194304 ["list-servers"]');
    expect(r.status).toBe(7);
  });
});
