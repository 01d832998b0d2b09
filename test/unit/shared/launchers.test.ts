// receiver/launcher.sh, the installed barman-receiver (and barman), and agent/launcher.sh, the
// installed barman-agent, for what it hands to Node: each runs the Node program beside it with
// glibc's malloc held to one arena that keeps what it frees (the agent's daemon excepted) unless
// the caller chose, its arguments and exit status passed through, also when reached through a
// link (npm's bin directory); V8's flags for the commands that get their own (the agent's daemon,
// the receiver's recover and drill). And the agent's `push` (archive_command) while a daemon works: it
// waits for the daemon's ack without Node, and gives up on a daemon that is not there; its `get-wal`
// (restore_command) serves a prefetched copy without Node: one the prefetcher recorded and that is
// still the file it recorded without reading it back, any other hashed by openssl where it is
// installed and by sha256sum where not (or where openssl does not answer as expected), and never a
// copy that does not hash to its checksum.

import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { formatAck, formatIdentity, identityOf, sysidHex } from '../../../agent/wal/spool';
import { SEGMENT_SYSID, segmentBytes } from '../../harness/segment-bytes';
import { writeNodeStandIn } from '../../harness/node-stand-in';

const root = mkdtempSync(join(tmpdir(), 'barman-launchers-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const programs = [
  // GLIBC_TUNABLES as each sets it: the agent's short commands grow their heap in huge pages, no receiver command does
  { program: 'barman-receiver', launcher: resolve(import.meta.dirname, '../../../receiver/launcher.sh'), link: 'barman', pages: 'undefined' },
  { program: 'barman-agent', launcher: resolve(import.meta.dirname, '../../../agent/launcher.sh'), link: 'barman-agent', pages: 'glibc.malloc.hugetlb=1' },
];

/** runs `file` with only PATH and `env` in its environment */
const run = (file: string, args: string[], env: Record<string, string> = {}) => spawnSync(file, args, { encoding: 'utf8', env: { PATH: process.env.PATH, ...env } });

/** dist/ as the build leaves it, with a stand-in for the Node program that says what reached it (its malloc settings, its arguments) and exits 7 */
function dist(program: string, launcher: string, name: string): string {
  const dir = join(root, program, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, program), readFileSync(launcher), { mode: 0o755 });
  writeFileSync(join(dir, `${program}.cjs`), 'const e = process.env; process.stdout.write(`${e.MALLOC_ARENA_MAX} ${e.MALLOC_TRIM_THRESHOLD_} ${e.MALLOC_MMAP_THRESHOLD_} ${e.GLIBC_TUNABLES} ${JSON.stringify(process.argv.slice(2))}`); process.exitCode = 7;\n');
  return dir;
}

/**
 * A folder to put on PATH with each of `names` standing in for the system's program of that name:
 * it records that it ran (`ran()`, in order), then runs the real one; and node. Only what is
 * here is found where PATH is this folder alone.
 */
function spyPrograms(dir: string, names: string[]): { path: string; ran: () => string[] } {
  mkdirSync(dir, { recursive: true });
  for (const name of names) {
    const real = spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' }).stdout.trim();
    expect(real, `${name} on this machine`).not.toBe('');
    writeFileSync(join(dir, name), `#!/bin/sh\necho ${name} >> ${join(dir, 'ran')}\nexec ${real} "$@"\n`, { mode: 0o755 });
  }
  symlinkSync(process.execPath, join(dir, 'node'));
  return { path: dir, ran: () => (existsSync(join(dir, 'ran')) ? readFileSync(join(dir, 'ran'), 'utf8').trim().split('\n') : []) };
}

describe.each(programs)('the $program launcher', ({ program, launcher, link, pages }) => {
  it('runs the .cjs beside it with one malloc arena that keeps what it frees (32 MiB), the arguments and the exit status unchanged', () => {
    const r = run(join(dist(program, launcher, 'plain'), program), ['recover', '-c', '/etc/barman.conf', 'main', 'latest', '/srv/a dir with spaces']);
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe(`1 33554432 4194304 ${pages} ["recover","-c","/etc/barman.conf","main","latest","/srv/a dir with spaces"]`);
    expect(r.status).toBe(7);
  });

  it("keeps the caller's malloc settings and GLIBC_TUNABLES", () => {
    const r = run(join(dist(program, launcher, 'caller'), program), ['check'], { MALLOC_ARENA_MAX: '4', MALLOC_TRIM_THRESHOLD_: '131072', MALLOC_MMAP_THRESHOLD_: '65536', GLIBC_TUNABLES: 'glibc.malloc.tcache_count=0' });
    expect(r.stdout).toBe('4 131072 65536 glibc.malloc.tcache_count=0 ["check"]');
  });

  it('runs the .cjs beside it when started by name from its own folder, or by a relative path', () => {
    const dir = dist(program, launcher, 'by-name');
    for (const [file, args] of [['sh', [program]], [`./${program}`, []]] as const) {
      const r = spawnSync(file, [...args, 'check'], { cwd: dir, encoding: 'utf8', env: { PATH: process.env.PATH } });
      expect(r.stdout, `${file} ${args.join(' ')}`).toBe(`1 33554432 4194304 ${pages} ["check"]`);
      expect(r.status).toBe(7);
    }
  });

  it("finds the program beside the file a link points to (npm's bin directory)", () => {
    const dir = dist(program, launcher, 'linked');
    const bin = join(root, program, 'bin');
    mkdirSync(bin);
    symlinkSync(join(dir, program), join(bin, link));
    const r = run(join(bin, link), ['list-servers']);
    expect(r.stdout).toBe(`1 33554432 4194304 ${pages} ["list-servers"]`);
    expect(r.status).toBe(7);
  });
});

describe('the barman-agent launcher', () => {
  it('runs the daemon, which lives on, with one arena, its larger blocks mapped and given back as freed, small pages, and a V8 heap kept small; restore with small pages', () => {
    const dir = dist('barman-agent', programs[1]!.launcher, 'daemon');
    writeFileSync(join(dir, 'barman-agent.cjs'), 'const e = process.env; process.stdout.write(`${e.MALLOC_ARENA_MAX} ${e.MALLOC_TRIM_THRESHOLD_} ${e.MALLOC_MMAP_THRESHOLD_} ${e.GLIBC_TUNABLES} ${JSON.stringify(process.execArgv)} ${JSON.stringify(process.argv.slice(2))}`);\n');
    const agent = join(dir, 'barman-agent');
    expect(run(agent, ['daemon', '-c', '/etc/barman-agent.conf']).stdout).toBe('1 undefined 131072 undefined ["--max-semi-space-size=2","--optimize-for-size"] ["daemon","-c","/etc/barman-agent.conf"]');
    expect(run(agent, ['-c', '/etc/barman-agent.conf', 'daemon', '--takeover']).stdout).toBe('1 undefined 131072 undefined ["--max-semi-space-size=2","--optimize-for-size"] ["-c","/etc/barman-agent.conf","daemon","--takeover"]');
    // a caller's threshold wins
    expect(run(agent, ['daemon', '-c', '/etc/barman-agent.conf'], { MALLOC_MMAP_THRESHOLD_: '65536' }).stdout).toBe('1 undefined 65536 undefined ["--max-semi-space-size=2","--optimize-for-size"] ["daemon","-c","/etc/barman-agent.conf"]');
    // any other command: Node as it comes (its code cache is made for no flags), in huge pages but restore
    expect(run(agent, ['-c', '/etc/barman-agent.conf', 'restore', 'latest', '/srv/pgdata']).stdout).toBe('1 33554432 4194304 undefined [] ["-c","/etc/barman-agent.conf","restore","latest","/srv/pgdata"]');
    expect(run(agent, ['-c', '/etc/barman-agent.conf', 'backup']).stdout).toBe('1 33554432 4194304 glibc.malloc.hugetlb=1 [] ["-c","/etc/barman-agent.conf","backup"]');
    // a caller's GLIBC_TUNABLES reaches restore too
    expect(run(agent, ['restore', 'latest', '/srv/pgdata'], { GLIBC_TUNABLES: 'glibc.malloc.hugetlb=1' }).stdout).toBe('1 33554432 4194304 glibc.malloc.hugetlb=1 [] ["restore","latest","/srv/pgdata"]');
  });
});

describe('the barman-receiver launcher', () => {
  it('runs recover and drill, which write a whole backup, and serve, which checks every MiB sent, with a larger initial old generation; every other command as it comes; all with small pages', () => {
    const dir = dist('barman-receiver', programs[0]!.launcher, 'old-space');
    writeFileSync(join(dir, 'barman-receiver.cjs'), 'process.stdout.write(`${JSON.stringify(process.execArgv)} ${JSON.stringify(process.argv.slice(2))} ${process.env.GLIBC_TUNABLES}`);\n');
    const receiver = join(dir, 'barman-receiver');
    expect(run(receiver, ['recover', '-c', '/etc/barman.conf', 'main', 'latest', '/srv/pgdata']).stdout).toBe('["--initial-old-space-size=128"] ["recover","-c","/etc/barman.conf","main","latest","/srv/pgdata"] undefined');
    expect(run(receiver, ['-c', '/etc/barman.conf', 'drill', 'main']).stdout).toBe('["--initial-old-space-size=128"] ["-c","/etc/barman.conf","drill","main"] undefined');
    expect(run(receiver, ['serve', '-c', '/etc/barman.conf']).stdout).toBe('["--initial-old-space-size=32"] ["serve","-c","/etc/barman.conf"] undefined');
    expect(run(receiver, ['-c', '/etc/barman.conf', 'serve']).stdout).toBe('["--initial-old-space-size=32"] ["-c","/etc/barman.conf","serve"] undefined');
    expect(run(receiver, ['get-wal', 'main', '000000010000000000000001']).stdout).toBe('[] ["get-wal","main","000000010000000000000001"] undefined');
  });
});

describe('the barman-agent launcher, push (archive_command) while the daemon works', () => {
  const NAME = '000000010000000200000005';
  let n = 0;
  /** a host: agent.conf, pg_wal/NAME, the spool's acked/ with `.daemon` holding `pid`; and dist/ with a stand-in for Node that says it was reached */
  function host(pid: number) {
    const dir = join(root, 'push', String(++n));
    const acked = join(dir, 'spool', 'acked');
    mkdirSync(acked, { recursive: true });
    mkdirSync(join(dir, 'pg_wal'));
    writeFileSync(join(dir, 'agent.conf'), `[agent]\nreceiver = ws://127.0.0.1:1\nserver = main\nspool_dir = ${join(dir, 'spool')}\n`);
    const path = join(dir, 'pg_wal', NAME);
    writeFileSync(path, segmentBytes(NAME));
    writeFileSync(join(acked, '.daemon'), `${pid}\n`);
    const bin = dist('barman-agent', programs[1]!.launcher, `push-${n}`);
    writeNodeStandIn(bin);
    const ack = (sysid = sysidHex(String(SEGMENT_SYSID))) =>
      formatAck({ server: 'main', receiver: 'ws://127.0.0.1:1/', name: NAME, size: 1 << 20, identity: identityOf(statSync(path, { bigint: true })), sysid, sha256: 'ab'.repeat(32) });
    /** records `line` as the daemon does: written beside, renamed in */
    const record = (line: string) => {
      writeFileSync(join(acked, `.${NAME}.tmp`), line);
      renameSync(join(acked, `.${NAME}.tmp`), join(acked, NAME));
    };
    const push = (PATH = process.env.PATH) =>
      new Promise<{ code: number | null; out: string }>((res) => {
        const child = spawn(join(bin, 'barman-agent'), ['-c', join(dir, 'agent.conf'), 'push', path], { env: { PATH } });
        let out = '';
        child.stdout.on('data', (d: Buffer) => (out += d.toString()));
        child.on('close', (code) => res({ code, out }));
      });
    return { acked, ack, record, push, path };
  }

  it('answers from the ack the daemon records while it waits, without Node', async () => {
    const h = host(process.pid);
    const pushing = h.push();
    const later = setTimeout(() => h.record(h.ack()), 300);
    const r = await pushing;
    clearTimeout(later);
    expect(r).toEqual({ code: 0, out: '' });
  });

  it.each([
    ['the high half', (hex: string) => `${((parseInt(hex.slice(0, 8), 16) ^ 1) >>> 0).toString(16).padStart(8, '0')}${hex.slice(8)}`],
    ['the low half', (hex: string) => `${hex.slice(0, 8)}${((parseInt(hex.slice(8), 16) ^ 1) >>> 0).toString(16).padStart(8, '0')}`],
  ])('does not take an ack whose system identifier differs from the page header\'s in %s: Node pushes', async (_half, alter) => {
    const h = host(process.pid);
    h.record(h.ack(alter(sysidHex(String(SEGMENT_SYSID)))));
    // the daemon would never ack it: it says so, as it does for a segment it gave up on
    writeFileSync(join(h.acked, `${NAME}.failed`), 'given up\n');
    expect(await h.push()).toEqual({ code: 9, out: `node -c ${join(h.acked, '..', '..', 'agent.conf')} push ${h.path}` });
  });

  it('does not wait on a daemon whose pid is gone: Node pushes', async () => {
    const gone = spawnSync('true').pid;
    const h = host(gone);
    expect(await h.push()).toMatchObject({ code: 9, out: expect.stringMatching(/^node -c .* push /) });
  });

  it('hands a push to Node without starting any program first where there is neither an ack nor a daemon (archive_command alone)', async () => {
    const h = host(spawnSync('true').pid);
    // every program the launcher may start, each recording that it ran before running the real one
    const spy = spyPrograms(join(root, 'push', `spy-${n}`), ['stat', 'od', 'readlink', 'date', 'sleep', 'sha256sum', 'openssl', 'mv']);
    expect(await h.push(`${spy.path}:${process.env.PATH}`)).toMatchObject({ code: 9, out: expect.stringMatching(/^node -c .* push /) });
    expect(spy.ran(), 'programs the launcher started').toEqual([]);
    // with an ack to check, it reads the file's identity and page header (stat, od), then Node pushes (the ack names other bytes)
    h.record(h.ack().replace(/sha256=\w+/, `sha256=${'cd'.repeat(32)}`).replace(/ size=\d+/, ' size=1'));
    expect(await h.push(`${spy.path}:${process.env.PATH}`)).toMatchObject({ code: 9, out: expect.stringMatching(/^node -c .* push /) });
    expect(spy.ran()).toEqual(['stat', 'od']);
  });

  it('does not wait on a live pid whose .daemon was not refreshed for a minute (a pid reused after a crash): Node pushes', async () => {
    const h = host(process.pid);
    const minuteAgo = new Date(Date.now() - 60_000);
    utimesSync(join(h.acked, '.daemon'), minuteAgo, minuteAgo);
    // without the freshness check this waits for the ack for 60 s, past the test's time limit
    expect(await h.push()).toMatchObject({ code: 9, out: expect.stringMatching(/^node -c .* push /) });
  });
});

describe('the barman-agent launcher, get-wal (restore_command) from the prefetch spool', () => {
  const NAME = '000000010000000200000007';
  const bytes = segmentBytes(NAME);
  const sum = createHash('sha256').update(bytes).digest('hex');
  let n = 0;
  /** a host: agent.conf, the spool's prefetch/ holding `spooled` as NAME's copy under its real checksum, pg_wal/, and dist/ with a stand-in for Node */
  function host(spooled: Buffer = bytes) {
    const dir = join(root, 'get-wal', String(++n));
    const prefetch = join(dir, 'spool', 'prefetch');
    mkdirSync(prefetch, { recursive: true });
    mkdirSync(join(dir, 'pg_wal'));
    writeFileSync(join(dir, 'agent.conf'), `[agent]\nreceiver = ws://127.0.0.1:1\nserver = main\nspool_dir = ${join(dir, 'spool')}\n`);
    const copy = join(prefetch, `${NAME}-${sum}`);
    writeFileSync(copy, spooled);
    const bin = dist('barman-agent', programs[1]!.launcher, `get-wal-${n}`);
    writeNodeStandIn(bin);
    const dest = join(dir, 'pg_wal', 'RECOVERYXLOG');
    const getWal = (PATH: string) => spawnSync(join(bin, 'barman-agent'), ['-c', join(dir, 'agent.conf'), 'get-wal', NAME, dest], { encoding: 'utf8', env: { PATH } });
    return { dir, prefetch, copy, dest, getWal };
  }
  /** PATH for the launcher: `programs` and node, nothing else */
  const pathWith = (programs: string[]) => spyPrograms(join(root, 'get-wal', `path-${++n}`), programs);
  const COREUTILS = ['od', 'stat', 'mv', 'rm', 'sha256sum', 'date', 'sleep', 'readlink'];
  /** the segment with one byte changed: its size kept, its checksum not */
  const damaged = () => {
    const b = Buffer.from(bytes);
    b.writeUInt8(b.readUInt8(5000) ^ 0xff, 5000);
    return b;
  };

  it.each([
    ['with openssl installed, which hashes it', [...COREUTILS, 'openssl'], 'openssl', 'sha256sum'],
    ['without openssl, sha256sum hashing it', COREUTILS, 'sha256sum', 'openssl'],
  ])('serves a spooled copy without Node %s', (_how, programs, hasher, unused) => {
    const h = host();
    const p = pathWith(programs);
    const r = h.getWal(p.path);
    expect({ code: r.status, out: r.stdout }).toEqual({ code: 0, out: '' });
    expect(readFileSync(h.dest).equals(bytes)).toBe(true);
    expect(p.ran()).toContain(hasher);
    expect(p.ran()).not.toContain(unused);
    expect(existsSync(h.copy)).toBe(false);
  });

  it.each([
    ['with openssl installed: sha256sum confirms before it is refused', [...COREUTILS, 'openssl'], ['openssl', 'sha256sum']],
    ['without openssl', COREUTILS, ['sha256sum']],
  ])('never serves a damaged copy, %s: removed, and Node asks the receiver', (_how, programs, hashers) => {
    const h = host(damaged());
    const p = pathWith(programs);
    const r = h.getWal(p.path);
    expect({ code: r.status, out: r.stdout }).toEqual({ code: 9, out: `node -c ${join(h.dir, 'agent.conf')} get-wal ${NAME} ${h.dest}` });
    expect(existsSync(h.dest)).toBe(false);
    expect(readdirSync(h.prefetch)).toEqual([]);
    expect(readdirSync(join(h.dir, 'pg_wal'))).toEqual([]);
    for (const hasher of hashers) expect(p.ran()).toContain(hasher);
  });

  /** what the prefetcher records beside its copy once it is in place */
  const record = (h: ReturnType<typeof host>, identity = identityOf(statSync(h.copy, { bigint: true }))) =>
    writeFileSync(join(h.prefetch, `.${NAME}-${sum}.id`), `${formatIdentity(identity)}\n`);

  it('serves a copy the prefetcher recorded, unchanged since, without reading it back: no hasher runs', () => {
    const h = host();
    record(h);
    const p = pathWith([...COREUTILS, 'openssl']);
    const r = h.getWal(p.path);
    expect({ code: r.status, out: r.stdout }).toEqual({ code: 0, out: '' });
    expect(readFileSync(h.dest).equals(bytes)).toBe(true);
    expect(p.ran()).toContain('stat');
    expect(p.ran()).not.toContain('openssl');
    expect(p.ran()).not.toContain('sha256sum');
  });

  it.each([
    ['rewritten in place since (a byte changed, its mtime set back)', (h: ReturnType<typeof host>) => {
      const before = identityOf(statSync(h.copy, { bigint: true }));
      // a later tick of the kernel's clock than the record's
      spawnSync('sleep', ['0.05']);
      writeFileSync(h.copy, damaged());
      // to the nanosecond: only the ctime tells
      expect(spawnSync('touch', ['-m', '-d', `@${before.mtime}`, h.copy]).status).toBe(0);
      expect(identityOf(statSync(h.copy, { bigint: true }))).toMatchObject({ ino: before.ino, size: before.size, mtime: before.mtime });
    }],
    ['replaced by another file of the same size', (h: ReturnType<typeof host>) => {
      writeFileSync(`${h.copy}.new`, damaged());
      renameSync(`${h.copy}.new`, h.copy);
    }],
  ])('hashes a recorded copy %s, and refuses it', (_how, change) => {
    const h = host();
    record(h);
    change(h);
    const p = pathWith([...COREUTILS, 'openssl']);
    const r = h.getWal(p.path);
    expect({ code: r.status, out: r.stdout }).toEqual({ code: 9, out: `node -c ${join(h.dir, 'agent.conf')} get-wal ${NAME} ${h.dest}` });
    expect(existsSync(h.dest)).toBe(false);
    expect(p.ran()).toContain('openssl');
    expect(p.ran()).toContain('sha256sum');
  });

  it('hashes a whole copy whose record names another file (inode), and serves it', () => {
    const h = host();
    const identity = identityOf(statSync(h.copy, { bigint: true }));
    record(h, { ...identity, ino: String(BigInt(identity.ino) + 1n) });
    const p = pathWith([...COREUTILS, 'openssl']);
    const r = h.getWal(p.path);
    expect({ code: r.status, out: r.stdout }).toEqual({ code: 0, out: '' });
    expect(readFileSync(h.dest).equals(bytes)).toBe(true);
    expect(p.ran()).toContain('openssl');
  });

  it.each([
    ['prints its digest in another format', `echo "SHA2-256(stdin)= ${sum}"`],
    ['fails', 'echo "openssl: unsupported" >&2; exit 1'],
    ['prints another digest', `echo "${'0'.repeat(64)} *stdin"`],
  ])('serves a whole copy through sha256sum where openssl %s', (_what, script) => {
    const h = host();
    const p = pathWith(COREUTILS);
    // an openssl of another version or build
    writeFileSync(join(p.path, 'openssl'), `#!/bin/sh\n${script}\n`, { mode: 0o755 });
    const r = h.getWal(p.path);
    expect({ code: r.status, out: r.stdout }).toEqual({ code: 0, out: '' });
    expect(readFileSync(h.dest).equals(bytes)).toBe(true);
    expect(p.ran()).toContain('sha256sum');
  });
});
