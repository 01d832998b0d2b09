// receiver/launcher.sh, the installed barman-receiver (and barman): runs the Node program beside it
// with glibc's malloc held to one arena unless the caller chose, its arguments and exit status
// passed through, also when reached through a link (npm's bin directory).

import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const root = mkdtempSync(join(tmpdir(), 'barman-receiver-launcher-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const launcher = resolve(import.meta.dirname, '../../../receiver/launcher.sh');

/** dist/ as the build leaves it, with a stand-in for the Node program that says what reached it */
function dist(name: string): string {
  const dir = join(root, name);
  mkdirSync(dir);
  writeFileSync(join(dir, 'barman-receiver'), readFileSync(launcher), { mode: 0o755 });
  writeFileSync(join(dir, 'barman-receiver.cjs'), 'process.stdout.write(`${process.env.MALLOC_ARENA_MAX} ${JSON.stringify(process.argv.slice(2))}`); process.exitCode = 7;\n');
  return dir;
}

const run = (program: string, args: string[], env: Record<string, string> = {}) => spawnSync(program, args, { encoding: 'utf8', env: { PATH: process.env.PATH, ...env } });

describe('receiver/launcher.sh', () => {
  it('runs barman-receiver.cjs beside it with one malloc arena, the arguments and the exit status unchanged', () => {
    const r = run(join(dist('plain'), 'barman-receiver'), ['recover', '-c', '/etc/barman.conf', 'main', 'latest', '/srv/a dir with spaces']);
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('1 ["recover","-c","/etc/barman.conf","main","latest","/srv/a dir with spaces"]');
    expect(r.status).toBe(7);
  });

  it("keeps the caller's MALLOC_ARENA_MAX", () => {
    const r = run(join(dist('caller'), 'barman-receiver'), ['serve'], { MALLOC_ARENA_MAX: '4' });
    expect(r.stdout).toBe('4 ["serve"]');
  });

  it('finds the program beside the file a link points to (the `barman` and `barman-receiver` of npm\'s bin directory)', () => {
    const dir = dist('linked');
    const bin = join(root, 'bin');
    mkdirSync(bin);
    symlinkSync(join(dir, 'barman-receiver'), join(bin, 'barman'));
    const r = run(join(bin, 'barman'), ['list-servers']);
    expect(r.stdout).toBe('1 ["list-servers"]');
    expect(r.status).toBe(7);
  });
});
