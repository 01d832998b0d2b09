import { homedir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { configError, locateConfig, readIni, SectionReader, SERVER_NAME } from '../../../../shared/config/ini';
import { configErrorOf, tempFiles } from './files';

const files = tempFiles();

describe('locateConfig', () => {
  afterEach(() => vi.unstubAllEnvs());
  const none = () => false;

  it('takes the -c file first, even when the environment names another', () => {
    vi.stubEnv('BARMAN_CONFIG', '/from/env.conf');
    expect(locateConfig('/explicit.conf', 'BARMAN_CONFIG', 'barman.conf', none)).toBe('/explicit.conf');
  });

  it('then the environment variable, without checking that it exists', () => {
    vi.stubEnv('BARMAN_CONFIG', '/from/env.conf');
    expect(locateConfig(undefined, 'BARMAN_CONFIG', 'barman.conf', none)).toBe('/from/env.conf');
  });

  it('then ~/.<name>, then /etc/<name>', () => {
    vi.stubEnv('BARMAN_CONFIG', '');
    const home = join(homedir(), '.barman.conf');
    expect(locateConfig(undefined, 'BARMAN_CONFIG', 'barman.conf', (p) => p === home || p === '/etc/barman.conf')).toBe(home);
    expect(locateConfig(undefined, 'BARMAN_CONFIG', 'barman.conf', (p) => p === '/etc/barman.conf')).toBe('/etc/barman.conf');
  });

  it('says where it looked and how to point at a file when there is none', () => {
    vi.stubEnv('BARMAN_AGENT_CONFIG', '');
    const e = configErrorOf(() => locateConfig(undefined, 'BARMAN_AGENT_CONFIG', 'barman-agent.conf', none));
    expect(e.message).toContain(join(homedir(), '.barman-agent.conf'));
    expect(e.message).toContain('/etc/barman-agent.conf');
    expect(e.hint).toContain('$BARMAN_AGENT_CONFIG');
  });
});

describe('readIni', () => {
  it('reads sections into string maps, trimmed, with comments dropped', () => {
    const file = files.write('; comment\n[a]\nx = 1   \ny = on\n# another\n[b]\nz = some text ; trailing comment\n');
    const { doc } = readIni(file);
    expect([...doc.keys()]).toEqual(['a', 'b']);
    expect(doc.get('a')).toEqual({ x: '1', y: 'on' });
    expect(doc.get('b')).toEqual({ z: 'some text' });
  });

  it('keeps booleans ini turns into true/false as strings', () => {
    expect(readIni(files.write('[a]\nflag = true\n')).doc.get('a')).toEqual({ flag: 'true' });
  });
});

describe('SectionReader', () => {
  const reader = (values: Record<string, string>) => new SectionReader('/etc/x.conf', 'sect', values);

  it('treats an empty value as unset', () => {
    const r = reader({ a: '' });
    expect(r.has('a')).toBe(false);
    expect(r.string('a', 'fallback')).toBe('fallback');
  });

  it('reads booleans PostgreSQL-style', () => {
    for (const t of ['on', 'true', 'yes', '1', 'ON', 'True']) expect(reader({ b: t }).bool('b', false)).toBe(true);
    for (const f of ['off', 'false', 'no', '0', 'OFF']) expect(reader({ b: f }).bool('b', true)).toBe(false);
    expect(reader({}).bool('b', true)).toBe(true);
    expect(configErrorOf(() => reader({ b: 'maybe' }).bool('b', true)).message).toBe('/etc/x.conf [sect] b: "maybe" is not a boolean');
  });

  it('reads whole numbers with a minimum', () => {
    expect(reader({ n: '42' }).integer('n', 0)).toBe(42);
    expect(reader({}).integer('n', 7)).toBe(7);
    for (const bad of ['-1', '1.5', '1e3', 'ten', ' 1 2']) {
      expect(configErrorOf(() => reader({ n: bad }).integer('n', 0)).message).toMatch(/\[sect\] n: .* is not a whole number >= 0/);
    }
    expect(configErrorOf(() => reader({ n: '0' }).integer('n', 5, 1)).message).toMatch(/is not a whole number >= 1/);
  });

  it('names a missing required key and what it is for', () => {
    const e = configErrorOf(() => reader({}).required('receiver', 'the receiver URL'));
    expect(e.message).toBe('/etc/x.conf [sect] receiver: missing required key (the receiver URL)');
    expect(e.hint).toContain('receiver = ...');
  });

  it('finds every key that was never read', () => {
    const r = reader({ known: '1', other: '2' });
    r.string('known');
    expect(configErrorOf(() => r.finish()).message).toBe('/etc/x.conf [sect] other: unknown key');
    const ok = reader({ known: '1' });
    ok.string('known');
    expect(() => ok.finish()).not.toThrow();
  });
});

describe('configError', () => {
  it('names file, section and key, leaving out what is not known', () => {
    expect(configError('/f', 's', 'k', 'bad', 'fix').message).toBe('/f [s] k: bad');
    expect(configError('/f', 's', undefined, 'bad', 'fix').message).toBe('/f [s]: bad');
    expect(configError('/f', undefined, 'k', 'bad', 'fix').message).toBe('/f k: bad');
  });
});

describe('SERVER_NAME', () => {
  it.each(['main', 'pg-15', 'db_1', 'A', 'x'.repeat(63)])('accepts %s', (name) => expect(SERVER_NAME.test(name)).toBe(true));
  it.each(['', '-main', '_main', 'a b', 'a.b', 'a/b', '..', 'x'.repeat(64), 'main\n'])('refuses %j', (name) => expect(SERVER_NAME.test(name)).toBe(false));
});
