// Both programs start from a V8 code cache the build makes beside them (<program>.cache); a cache
// that is missing, made for another bundle, cut short or refused by V8 only costs the compile.

import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { agentBin, makeTempDir, receiverBin } from '../harness/env';

const version = (JSON.parse(readFileSync(join(__dirname, '../../package.json'), 'utf8')) as { version: string }).version;

function runVersion(program: string): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [program, '--version'], { encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe.each([
  ['barman-receiver', receiverBin],
  ['barman-agent', agentBin],
])('%s code cache', (name, bin) => {
  it('is built for exactly the bundle beside it', () => {
    const cache = readFileSync(`${bin()}.cache`);
    const loader = readFileSync(bin(), 'utf8');
    expect(cache.length).toBeGreaterThan(32);
    expect(loader).toContain(JSON.stringify(cache.subarray(0, 32).toString('hex')));
    expect(runVersion(bin())).toEqual({ status: 0, stdout: `${version}\n`, stderr: '' });
  });

  const cases: [string, (cache: Buffer) => Buffer | undefined][] = [
    ['missing', () => undefined],
    ['made for another bundle', (cache) => Buffer.concat([Buffer.alloc(32, 0xab), cache.subarray(32)])],
    ['cut short', (cache) => cache.subarray(0, 20)],
    ['refused by V8 (right bundle, garbage data)', (cache) => Buffer.concat([cache.subarray(0, 32), Buffer.alloc(4096, 0x5a)])],
    ['truncated V8 data', (cache) => cache.subarray(0, 32 + Math.floor((cache.length - 32) / 2))],
  ];
  it.each(cases)('runs when the cache is %s', (_what, make) => {
    const dir = makeTempDir(`${name}-cache`);
    const program = join(dir, `${name}.cjs`);
    copyFileSync(bin(), program);
    const cache = make(readFileSync(`${bin()}.cache`));
    if (cache) writeFileSync(`${program}.cache`, cache);
    expect(existsSync(`${program}.cache`)).toBe(cache !== undefined);
    expect(runVersion(program)).toEqual({ status: 0, stdout: `${version}\n`, stderr: '' });
  });
});
