// Both programs start from a V8 code cache the build makes beside them (<program>.cache); a cache
// that is missing, made for another bundle, cut short or refused by V8 only costs the compile.
// Each program is one file: the loader, then its bundle in a comment, the body of the function
// that ends the file (ASCII); one without its bundle says so and what to do, one cut short inside it
// runs nothing.

import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { agentBin, makeTempDir, receiverBin } from '../harness/env';
import { commandsOnlyConfig } from '../harness/receiver';

const version = (JSON.parse(readFileSync(join(__dirname, '../../package.json'), 'utf8')) as { version: string }).version;

function runVersion(program: string, nodeArgs: string[] = []): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [...nodeArgs, program, '--version'], { encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A preload that reports, on exit, whether V8 took the cached data a vm.Script was given. */
function cacheReporter(dir: string): string {
  const hook = join(dir, 'report-cache.cjs');
  writeFileSync(
    hook,
    `const vm = require('node:vm');
const Script = vm.Script;
vm.Script = class extends Script {
  constructor(code, options) {
    super(code, options);
    if (options && options.cachedData) process.on('exit', () => process.stderr.write(this.cachedDataRejected ? 'cache rejected\\n' : 'cache accepted\\n'));
  }
};
`,
  );
  return hook;
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

  it('is compiled from that cache: V8 accepts it', () => {
    const hook = cacheReporter(makeTempDir(`${name}-hook`));
    expect(runVersion(bin(), ['--require', hook])).toEqual({ status: 0, stdout: `${version}\n`, stderr: 'cache accepted\n' });
  });

  it('holds its bundle as ASCII text in the comment that ends the file', () => {
    const file = readFileSync(bin());
    expect(file.findIndex((b) => b > 0x7f)).toBe(-1);
    const text = file.toString('latin1');
    expect(text.indexOf('\nfunction bundle() {/*barman-bundle\n')).toBeGreaterThan(0);
    expect(text.endsWith('*/}\n')).toBe(true);
  });

  it('refuses to run without its bundle, and says how to get it back', () => {
    const dir = makeTempDir(`${name}-cut`);
    const program = join(dir, `${name}.cjs`);
    const whole = readFileSync(bin(), 'latin1');
    writeFileSync(program, whole.slice(0, whole.indexOf('function bundle() {/*barman-bundle\n')), 'latin1');
    const r = runVersion(program);
    expect(r.status).not.toBe(0);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain(`${program} is damaged: the program's bundle is missing or cut short. Run npm run build (or npm ci) again`);
  });

  it('runs nothing when the file is cut short inside its bundle', () => {
    const dir = makeTempDir(`${name}-cut`);
    const program = join(dir, `${name}.cjs`);
    const whole = readFileSync(bin());
    writeFileSync(program, whole.subarray(0, whole.length - 1000));
    const r = runVersion(program);
    expect(r.status).not.toBe(0);
    expect(r.stdout).toBe('');
    // (an unterminated comment: Node refuses the file before the loader runs)
    expect(r.stderr).toContain('SyntaxError');
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

/**
 * The receiver's program and code cache alone in a fresh folder (no node_modules beside them),
 * and a configuration for it: a catalog on disk in that folder, plus `extra` keys.
 */
function receiverAlone(what: string): { dir: string; program: string; config: (name: string, extra?: Record<string, string>) => string } {
  const dir = makeTempDir(what);
  const program = join(dir, 'barman-receiver.cjs');
  copyFileSync(receiverBin(), program);
  copyFileSync(`${receiverBin()}.cache`, `${program}.cache`);
  const config = (name: string, extra: Record<string, string> = {}) => commandsOnlyConfig(dir, name, extra);
  return { dir, program, config };
}

// The AWS SDK, half the receiver's code, is a bundle of its own in node_modules beside the
// receiver's, loaded only when a catalog on S3 is opened (s3-catalog.test.ts uses it against a
// real gateway): no other command reads it at each start.
describe("barman-receiver's AWS SDK bundle", () => {
  const sdkBundle = () => join(receiverBin(), '..', 'node_modules', 'barman-aws-sdk.cjs');

  it('is apart from the receiver bundle', () => {
    expect(readFileSync(receiverBin(), 'latin1')).not.toContain('@smithy/');
    expect(readFileSync(sdkBundle(), 'latin1')).toContain('@smithy/');
    expect(readFileSync(receiverBin(), 'latin1')).toContain('require("barman-aws-sdk.cjs")');
  });

  it('is not needed by a catalog on disk; storage = s3 without it is refused with what to copy', () => {
    const { dir, program, config } = receiverAlone('receiver-without-sdk');
    const credentials = join(dir, 's3.credentials');
    writeFileSync(credentials, '[default]\naws_access_key_id = k\naws_secret_access_key = s\n', { mode: 0o600 });
    const list = (conf: string) => spawnSync(process.execPath, [program, 'list-backups', '-c', conf, 'main'], { encoding: 'utf8' });

    const onDisk = list(config('disk.conf'));
    expect(onDisk.stderr).toBe('');
    expect(onDisk.status).toBe(0);

    const onS3 = list(config('s3.conf', { storage: 's3', s3_endpoint: 'http://127.0.0.1:1', s3_bucket: 'barman', s3_credentials_file: credentials }));
    expect(onS3.status).not.toBe(0);
    expect(onS3.stderr).toContain("storage = s3 needs the AWS SDK, which this receiver cannot load (Cannot find module 'barman-aws-sdk.cjs'");
    expect(onS3.stderr).toMatch(/^HINT: Copy dist\/node_modules \(it holds barman-aws-sdk\.cjs\) beside barman-receiver\.cjs/m);
  });
});

// msgpackr loads msgpackr-extract (a native string extractor) whenever a node_modules above the
// program has it, as a checkout after npm ci does: 23 ms more for require('msgpackr') here, for
// frame headers whose strings it never extracts. The build sets msgpackr's own switch in the bundles.
describe('msgpackr-extract', () => {
  it('is not loaded by a bundle that could find it', () => {
    const { dir, program, config } = receiverAlone('receiver-extract');
    mkdirSync(join(dir, 'node_modules', 'msgpackr-extract'), { recursive: true });
    writeFileSync(join(dir, 'node_modules', 'msgpackr-extract', 'index.js'), "process.stderr.write('msgpackr-extract loaded\\n');\nmodule.exports = {};\n");
    // (asks the service for a backup: the protocol's codec, and so msgpackr, is loaded first)
    const r = spawnSync(process.execPath, [program, 'backup', '-c', config('barman.conf'), 'main'], { encoding: 'utf8' });
    expect(r.stderr).toContain('ERROR [RECEIVER_UNREACHABLE]');
    expect(r.stderr).not.toContain('msgpackr-extract loaded');
  });
});
