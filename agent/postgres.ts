// Connecting to the local PostgreSQL from the agent's conninfo (libpq keyword = value form or a
// postgresql:// URL), as a normal or a replication session.

import type { ClientConfig } from 'pg';
import { BarmanError, ErrorCode } from '../shared/errors';

const KEYWORDS: Record<string, keyof ClientConfig> = {
  host: 'host', hostaddr: 'host', port: 'port', user: 'user', dbname: 'database', password: 'password',
  application_name: 'application_name', connect_timeout: 'connectionTimeoutMillis',
};

/** Parses libpq's `key=value key='quoted value'` form into pg's client options. */
export function parseConninfo(conninfo: string): ClientConfig {
  const text = conninfo.trim();
  if (/^postgres(ql)?:\/\//.test(text)) return { connectionString: text };
  const out: Record<string, unknown> = {};
  // an unquoted value may not open with a quote: an unterminated 'value is an error, as in libpq
  const re = /\s*(\w+)\s*=\s*(?:'((?:[^'\\]|\\.)*)'|([^'\s]\S*))/gy;
  let m: RegExpExecArray | null;
  let last = 0;
  while ((m = re.exec(text))) {
    const key = m[1]!;
    const value = m[2] !== undefined ? m[2].replace(/\\(.)/g, '$1') : m[3]!;
    const option = KEYWORDS[key];
    if (!option) throw new BarmanError(ErrorCode.CONFIG_INVALID, `conninfo: keyword "${key}" is not supported`, `Use ${Object.keys(KEYWORDS).join(', ')}.`);
    const numeric = option === 'port' || option === 'connectionTimeoutMillis';
    if (numeric && !/^\d+$/.test(value)) throw new BarmanError(ErrorCode.CONFIG_INVALID, `conninfo: ${key} "${value.slice(0, 40)}" is not a whole number`, `Set ${key} to a number, e.g. ${key === 'port' ? 'port=5432' : 'connect_timeout=10'}.`);
    out[option] = option === 'port' ? Number(value) : option === 'connectionTimeoutMillis' ? Number(value) * 1000 : value;
    last = re.lastIndex;
  }
  const rest = text.slice(last).trim();
  if (rest !== '') {
    // name the keyword at most: the unparsed text may be (part of) a password
    const keyword = /^(\w+)\s*=/.exec(rest)?.[1];
    const where = keyword ? `the value of "${keyword}"` : `the text at character ${text.indexOf(rest, last) + 1}`;
    throw new BarmanError(ErrorCode.CONFIG_INVALID, `conninfo: cannot parse ${where}`, "Write conninfo as key=value pairs (quote values with spaces: key='a b'), e.g. host=/var/run/postgresql user=postgres dbname=postgres.");
  }
  return out as ClientConfig;
}

export async function connectPostgres(conninfo: string, extra: Partial<ClientConfig> & { replication?: 'database' | boolean } = {}) {
  const pg = (await import('pg')).default;
  const client = new pg.Client({ ...parseConninfo(conninfo), ...extra } as ClientConfig);
  // a server that goes away (stopped, crashed) is an 'error' event: without a listener it would
  // end the process; the query in flight fails with it anyway, and callers handle that
  client.on('error', () => undefined);
  try {
    await client.connect();
  } catch (err) {
    throw new BarmanError(ErrorCode.POSTGRES, `cannot connect to PostgreSQL (${(err as Error).message})`, 'Check conninfo = in the agent configuration and that PostgreSQL is running.', { cause: err });
  }
  return client;
}
