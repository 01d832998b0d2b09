// The fetch-ahead spool on a real filesystem: a spooled segment answers a request only when its
// bytes match its checksum and its page header names the segment asked for; the spool keeps only
// what PostgreSQL may still ask for. The launcher (POSIX sh) applies the same checks without Node.

import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { checkSpooled, segmentsAfter, WalPrefetch } from '../../../../agent/wal/prefetch';
import { inArchiveRecovery } from '../../../../agent/commands/get-wal';
import { segmentBytes as segment } from '../../../harness/segment-bytes';
import { writeNodeStandIn } from '../../../harness/node-stand-in';

const MB = 1 << 20;
const root = mkdtempSync(join(tmpdir(), 'barman-unit-prefetch-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
const fresh = (label: string) => {
  const dir = join(root, `${label}-${++n}`);
  mkdirSync(dir, { recursive: true });
  return dir;
};
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

const NAME = '000000010000000200000005';
/** the spool's segment files (its dot files are the prefetcher's bookkeeping) */
const entries = (dir: string) => readdirSync(dir).filter((f) => !f.startsWith('.'));

describe('checkSpooled', () => {
  const spooled = (bytes: Buffer) => {
    const path = join(fresh('check'), 'f');
    writeFileSync(path, bytes);
    return path;
  };

  it('accepts the segment its name and checksum promise', async () => {
    const b = segment(NAME);
    expect(await checkSpooled(spooled(b), NAME, sha(b))).toBeUndefined();
  });

  it.each<[string, () => { bytes: Buffer; sum: string }, RegExp]>([
    ['damaged bytes', () => {
      const b = segment(NAME);
      const sum = sha(b);
      b[100] = 1;
      return { bytes: b, sum };
    }, /checksum/],
    ['another timeline\'s pages', () => {
      const b = segment(NAME, { timeline: 2 });
      return { bytes: b, sum: sha(b) };
    }, /timeline 2/],
    ['another segment\'s pages', () => {
      const b = segment('000000010000000200000006');
      return { bytes: b, sum: sha(b) };
    }, /another segment/],
    ['a cut segment', () => {
      const b = segment(NAME).subarray(0, MB / 2);
      return { bytes: b, sum: sha(b) };
    }, /not a whole segment/],
    ['no WAL at all', () => {
      const b = Buffer.alloc(MB, 7);
      return { bytes: b, sum: sha(b) };
    }, /magic/],
  ])('refuses %s', async (_what, make, why) => {
    const { bytes, sum } = make();
    expect(await checkSpooled(spooled(bytes), NAME, sum)).toMatch(why);
  });
});

describe('WalPrefetch', () => {
  it('serves a good copy into place, and removes a bad one instead of serving it', async () => {
    const spoolDir = fresh('spool');
    const spool = new WalPrefetch(spoolDir);
    mkdirSync(spool.dir);
    const good = segment(NAME);
    writeFileSync(join(spool.dir, `${NAME}-${sha(good)}`), good);
    const dest = join(fresh('pg_wal'), 'RECOVERYXLOG');
    expect(await spool.take(NAME, dest)).toBe(true);
    expect(readFileSync(dest).equals(good)).toBe(true);
    expect(readdirSync(spool.dir)).toEqual([]);

    const next = '000000010000000200000006';
    const bad = segment(next, { timeline: 3 });
    writeFileSync(join(spool.dir, `${next}-${sha(bad)}`), bad);
    const warnings: string[] = [];
    const dest2 = join(fresh('pg_wal'), 'RECOVERYXLOG');
    expect(await spool.take(next, dest2, (t) => warnings.push(t))).toBe(false);
    expect(existsSync(dest2)).toBe(false);
    expect(readdirSync(spool.dir)).toEqual([]);
    expect(warnings.join('\n')).toMatch(/not served \(its pages are of timeline 3\)/);
  });

  it('keeps only what PostgreSQL may still ask for: later segments of its timeline, at most `keep` of them, and their records', async () => {
    const spool = new WalPrefetch(fresh('spool'));
    mkdirSync(spool.dir);
    const names = ['000000010000000200000003', NAME, ...segmentsAfter(NAME, MB, 5), '000000020000000200000007'];
    // each copy with the record of what it is on disk, and a record whose copy get-wal took
    for (const name of names) {
      writeFileSync(join(spool.dir, `${name}-${'0'.repeat(64)}`), 'x');
      writeFileSync(join(spool.dir, `.${name}-${'0'.repeat(64)}.id`), 'size=1\n');
    }
    writeFileSync(join(spool.dir, `.000000010000000200000004-${'0'.repeat(64)}.id`), 'size=1\n');
    writeFileSync(join(spool.dir, `.${NAME}.1.tmp`), 'a fresh download');
    await spool.clean(NAME, 3);
    expect((await spool.entries()).map((e) => e.name).sort()).toEqual(segmentsAfter(NAME, MB, 3));
    expect(readdirSync(spool.dir).filter((f) => f.endsWith('.id')).sort()).toEqual(segmentsAfter(NAME, MB, 3).map((n) => `.${n}-${'0'.repeat(64)}.id`));
    expect(existsSync(join(spool.dir, `.${NAME}.1.tmp`))).toBe(true);
  });

  it('records what a spooled copy is on disk, as the launcher compares it; nothing for a copy get-wal took already', async () => {
    const spool = new WalPrefetch(fresh('spool'));
    mkdirSync(spool.dir);
    const entry = `${NAME}-${'0'.repeat(64)}`;
    writeFileSync(join(spool.dir, entry), 'x');
    await spool.record(entry);
    const st = statSync(join(spool.dir, entry), { bigint: true });
    const stat = spawnSync('stat', ['-L', '-c', 'size=%s dev=%d ino=%i mtime=%.9Y ctime=%.9Z', join(spool.dir, entry)], { encoding: 'utf8' }).stdout;
    expect(readFileSync(join(spool.dir, `.${entry}.id`), 'utf8')).toBe(stat);
    expect(stat).toContain(`ino=${st.ino} `);
    const taken = `${'000000010000000200000006'}-${'0'.repeat(64)}`;
    await spool.record(taken);
    expect(existsSync(join(spool.dir, `.${taken}.id`))).toBe(false);
  });

  it('names the next segments across a log boundary', () => {
    expect(segmentsAfter('0000000100000002000000FE', 16 * MB, 1)).toEqual(['0000000100000002000000FF']);
    expect(segmentsAfter('0000000100000002000000FF', 16 * MB, 2)).toEqual(['000000010000000300000000', '000000010000000300000001']);
    expect(segmentsAfter('000000010000000200000FFF', MB, 1)).toEqual(['000000010000000300000000']);
  });
});

describe('get-wal exit codes by what the data directory is doing', () => {
  it('is one-shot archive recovery with recovery.signal alone, not on a standby', () => {
    const dir = fresh('pgdata');
    expect(inArchiveRecovery(dir)).toBe(false);
    writeFileSync(join(dir, 'recovery.signal'), '');
    expect(inArchiveRecovery(dir)).toBe(true);
    writeFileSync(join(dir, 'standby.signal'), '');
    expect(inArchiveRecovery(dir)).toBe(false);
  });
});

describe('agent/launcher.sh, get-wal from the spool without Node', () => {
  const launcher = resolve(import.meta.dirname, '../../../../agent/launcher.sh');
  /** runs the launcher beside a stand-in for the Node program that says it was reached */
  const runLauncher = (args: string[], cwd: string) => {
    const bin = fresh('bin');
    writeFileSync(join(bin, 'barman-agent'), readFileSync(launcher), { mode: 0o755 });
    writeNodeStandIn(bin);
    return spawnSync('sh', [join(bin, 'barman-agent'), ...args], { cwd, encoding: 'utf8', env: { PATH: process.env.PATH, HOME: cwd } });
  };
  const setup = (configLines: string) => {
    const dir = fresh('host');
    const spool = join(dir, 'spool');
    mkdirSync(join(spool, 'prefetch'), { recursive: true });
    writeFileSync(join(dir, 'agent.conf'), `[agent]\nreceiver = ws://127.0.0.1:1\nserver = main\ntoken = ${'t'.repeat(20)}\n${configLines.replace('SPOOL', spool)}\n`);
    mkdirSync(join(dir, 'pg_wal'));
    return { dir, spool: join(spool, 'prefetch'), conf: join(dir, 'agent.conf') };
  };

  it('serves a verified spooled segment and starts no Node', () => {
    const { dir, spool, conf } = setup('spool_dir = SPOOL   ; where fetched-ahead WAL waits');
    const b = segment(NAME);
    writeFileSync(join(spool, `${NAME}-${sha(b)}`), b);
    const r = runLauncher(['get-wal', '-c', conf, NAME, 'pg_wal/RECOVERYXLOG'], dir);
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toBe('');
    expect(readFileSync(join(dir, 'pg_wal/RECOVERYXLOG')).equals(b)).toBe(true);
    expect(entries(spool)).toEqual([]);
    // what PostgreSQL asked for, for the prefetcher
    expect(readFileSync(join(spool, '.requested'), 'utf8')).toBe(`${NAME}\n`);
  });

  it.each<[string, (name: string) => Buffer, string]>([
    ['another timeline', (name) => segment(name, { timeline: 2 }), NAME],
    ['another segment', () => segment('000000010000000200000006'), NAME],
    ['a cut segment', (name) => segment(name).subarray(0, 4096), NAME],
  ])('never serves %s: removes it and hands the request to Node', (_what, make, name) => {
    const { dir, spool, conf } = setup('spool_dir = SPOOL');
    const b = make(name);
    writeFileSync(join(spool, `${name}-${sha(b)}`), b);
    const r = runLauncher(['get-wal', '-c', conf, name, 'pg_wal/RECOVERYXLOG'], dir);
    expect(r.stdout).toBe(`node get-wal -c ${conf} ${name} pg_wal/RECOVERYXLOG`);
    expect(existsSync(join(dir, 'pg_wal/RECOVERYXLOG'))).toBe(false);
    expect(entries(spool)).toEqual([]);
    expect(readdirSync(join(dir, 'pg_wal'))).toEqual([]);
  });

  it('waits for a segment the prefetcher is downloading, then serves it without Node', async () => {
    const { dir, spool, conf } = setup('spool_dir = SPOOL');
    writeFileSync(join(spool, '.prefetcher'), `${process.pid}\n`);
    writeFileSync(join(spool, `.${NAME}.${process.pid}.tmp`), 'half a segment');
    const b = segment(NAME);
    const finish = setTimeout(() => {
      writeFileSync(join(spool, `${NAME}-${sha(b)}`), b);
      rmSync(join(spool, `.${NAME}.${process.pid}.tmp`));
    }, 300);
    const bin = fresh('bin');
    writeFileSync(join(bin, 'barman-agent'), readFileSync(launcher), { mode: 0o755 });
    writeNodeStandIn(bin);
    const { spawn } = await import('node:child_process');
    const child = spawn('sh', [join(bin, 'barman-agent'), 'get-wal', '-c', conf, NAME, 'pg_wal/RECOVERYXLOG'], { cwd: dir });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const code = await new Promise<number | null>((res) => child.on('close', res));
    clearTimeout(finish);
    expect({ code, out }).toEqual({ code: 0, out: '' });
    expect(readFileSync(join(dir, 'pg_wal/RECOVERYXLOG')).equals(b)).toBe(true);
  });

  it('never serves damaged bytes', () => {
    const { dir, spool, conf } = setup('spool_dir = SPOOL');
    const b = segment(NAME);
    const sum = sha(b);
    b.writeUInt8(b.readUInt8(2000) ^ 1, 2000);
    writeFileSync(join(spool, `${NAME}-${sum}`), b);
    const r = runLauncher(['get-wal', '-c', conf, NAME, 'pg_wal/RECOVERYXLOG'], dir);
    expect(r.stdout).toMatch(/^node get-wal/);
    expect(existsSync(join(dir, 'pg_wal/RECOVERYXLOG'))).toBe(false);
  });

  it.each([
    ['a history file', ['get-wal', '-c', 'CONF', '00000002.history', 'pg_wal/RECOVERYHISTORY']],
    ['another command', ['push', '-c', 'CONF', 'pg_wal/' + NAME]],
    ['an option it does not know', ['get-wal', '--verbose', '-c', 'CONF', NAME, 'pg_wal/RECOVERYXLOG']],
  ])('hands %s to Node as it came', (_what, args) => {
    const { dir, spool, conf } = setup('spool_dir = SPOOL');
    const b = segment(NAME);
    writeFileSync(join(spool, `${NAME}-${sha(b)}`), b);
    const argv = args.map((a) => (a === 'CONF' ? conf : a));
    expect(runLauncher(argv, dir).stdout).toBe(`node ${argv.join(' ')}`);
  });

  it('hands over a configuration it cannot read as Node would (a quoted spool_dir)', () => {
    const { dir, spool, conf } = setup('spool_dir = "SPOOL"');
    const b = segment(NAME);
    writeFileSync(join(spool, `${NAME}-${sha(b)}`), b);
    expect(runLauncher(['get-wal', '-c', conf, NAME, 'pg_wal/RECOVERYXLOG'], dir).stdout).toMatch(/^node get-wal/);
  });
});
