// SQL as a test runs it on a cluster: psql -X -q -A -t -v ON_ERROR_STOP=1 where the binaries have a
// psql (the machine's PostgreSQL), else the pg client printing what psql would (the packaged
// server binaries of other versions have no psql). Both return the rows as psql's unaligned,
// tuples-only output: one line per row, columns joined by |, NULL as an empty string, booleans
// t/f. With the pg client the statements of one call run as one implicit transaction (one simple
// query); call again where the moment of a commit matters.

import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { runOk } from './run';

export interface SqlTarget {
  binDir: string;
  socketDir: string;
  port: number;
  /** where psql runs (postgres must be able to enter it) */
  cwd: string;
}

export async function sqlText(target: SqlTarget, sql: string, database = 'postgres'): Promise<string> {
  const psql = join(target.binDir, 'psql');
  if (existsSync(psql)) {
    const args = ['-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-h', target.socketDir, '-p', String(target.port), '-U', 'postgres', '-d', database, '-f', '-'];
    return (await runOk(psql, args, { asPostgres: true, cwd: target.cwd, input: sql })).replace(/\n$/, '');
  }
  const pg = (await import('pg')).default;
  const client = new pg.Client({ host: target.socketDir, port: target.port, user: 'postgres', database });
  client.on('error', () => undefined);
  await client.connect();
  try {
    // every value as the server's text, as psql prints it
    const results = await client.query({ text: sql, rowMode: 'array', types: { getTypeParser: () => (value: string) => value } });
    const lines: string[] = [];
    for (const result of Array.isArray(results) ? results : [results]) {
      if (result.fields.length === 0) continue;
      for (const row of result.rows as Array<Array<string | null>>) lines.push(row.map((v) => v ?? '').join('|'));
    }
    return lines.join('\n');
  } catch (err) {
    throw new Error(`SQL failed on port ${target.port}: ${(err as Error).message}\n--- sql\n${sql}`);
  } finally {
    await client.end().catch(() => undefined);
  }
}
