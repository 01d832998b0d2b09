import { describe, expect, it } from 'vitest';
import { parseConninfo } from '../../../agent/postgres';
import { BarmanError, ErrorCode } from '../../../shared/errors';

function refusal(conninfo: string): BarmanError {
  try {
    parseConninfo(conninfo);
  } catch (err) {
    expect(err).toBeInstanceOf(BarmanError);
    expect((err as BarmanError).code).toBe(ErrorCode.CONFIG_INVALID);
    return err as BarmanError;
  }
  throw new Error(`accepted ${conninfo}`);
}

describe('parseConninfo', () => {
  it('reads libpq key=value pairs into pg options', () => {
    expect(parseConninfo('host=/var/run/postgresql user=postgres dbname=postgres')).toEqual({ host: '/var/run/postgresql', user: 'postgres', database: 'postgres' });
  });

  it('turns port into a number and connect_timeout into milliseconds', () => {
    expect(parseConninfo('host=db port=5433 connect_timeout=10')).toEqual({ host: 'db', port: 5433, connectionTimeoutMillis: 10_000 });
  });

  it('maps hostaddr, password and application_name', () => {
    expect(parseConninfo('hostaddr=10.0.0.5 password=pw application_name=barman_agent')).toEqual({ host: '10.0.0.5', password: 'pw', application_name: 'barman_agent' });
  });

  it('allows white space around "=" and between pairs', () => {
    expect(parseConninfo('  host = /tmp \t port =5432\n dbname= postgres  ')).toEqual({ host: '/tmp', port: 5432, database: 'postgres' });
  });

  it('reads quoted values with spaces, escaped quotes and backslashes', () => {
    expect(parseConninfo("application_name='my agent' password='it\\'s a \\\\ secret' dbname=''")).toEqual({ application_name: 'my agent', password: "it's a \\ secret", database: '' });
  });

  it('lets a later keyword win, as libpq does', () => {
    expect(parseConninfo('dbname=a dbname=b')).toEqual({ database: 'b' });
  });

  it('reads an empty conninfo as no options', () => {
    expect(parseConninfo('')).toEqual({});
    expect(parseConninfo('   ')).toEqual({});
  });

  it.each(['postgresql://postgres@localhost:5432/postgres', 'postgres://u:p@db.example/app?sslmode=require', 'postgresql:///postgres?host=/var/run/postgresql'])('passes a URL through as the connection string: %s', (url) => {
    expect(parseConninfo(`  ${url} `)).toEqual({ connectionString: url });
  });

  it.each(['sslmode', 'options', 'service', 'target_session_attrs'])('refuses the unsupported keyword %s and lists the supported ones', (key) => {
    const e = refusal(`host=/tmp ${key}=x`);
    expect(e.message).toBe(`conninfo: keyword "${key}" is not supported`);
    expect(e.hint).toContain('host, hostaddr, port, user, dbname, password');
  });

  it.each(['port=abc', 'port=54.32', "port=''", 'connect_timeout=soon', 'port=-1'])('refuses a non-numeric %s', (text) => {
    expect(refusal(text).message).toMatch(/is not a whole number/);
  });

  it.each([
    ['a word without "="', 'host=/tmp postgres'],
    ['a key without a value', 'host=/tmp dbname='],
    ['an unterminated quote', "host=/tmp dbname='postgres"],
    ['a stray "="', 'host=/tmp =x'],
  ])('refuses %s', (_what, text) => {
    expect(refusal(text).message).toMatch(/^conninfo: cannot parse/);
  });

  it('never shows a password it cannot parse', () => {
    for (const text of ["user=postgres password='unterminated s3cret", 'user=postgres password=s3cret extra-s3cret', "password='a b' c-s3cret", "password='s3cret"]) {
      const e = refusal(text);
      expect(e.toUserText(), text).not.toMatch(/s3cret/);
    }
  });
});
