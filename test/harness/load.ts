// Write load on a cluster without pgbench (the packaged server binaries of other versions have
// none): one session inserting batches of rows into a table, one transaction per batch, with a
// short pause between batches (a steady stream of commits and a few MB of WAL a second, not a
// flood that starves the two cores everything else shares), until stopped. With track_commit_timestamp = on, the rows committed
// up to a moment can be counted exactly afterwards, which is what a point-in-time recovery to
// that moment must hold.

import type { Client } from 'pg';
import { track, untrack } from './resources';

export interface LoadTarget {
  socketDir: string;
  port: number;
}

export class SqlLoad {
  private stopping = false;
  private batches = 0;
  private readonly done: Promise<void>;
  private readonly resource;

  private constructor(private readonly client: Client, readonly table: string, rowsPerBatch: number, pauseMs: number) {
    this.done = (async () => {
      while (!this.stopping) {
        await client.query(`insert into ${table} (payload) select repeat(md5(g::text), 4) from generate_series(1, ${rowsPerBatch}) g`);
        this.batches++;
        await new Promise((resolve) => setTimeout(resolve, pauseMs));
      }
    })();
    this.done.catch(() => undefined);
    this.resource = track({ what: `SQL load on ${table}`, dispose: () => this.stop().then(() => undefined, () => undefined) });
  }

  /** Creates `table` (id, payload) if needed and starts inserting `rowsPerBatch` rows per transaction, `pauseMs` apart. */
  static async start(target: LoadTarget, table = 'load', rowsPerBatch = 200, pauseMs = 20): Promise<SqlLoad> {
    const pg = (await import('pg')).default;
    const client = new pg.Client({ host: target.socketDir, port: target.port, user: 'postgres', database: 'postgres', application_name: 'barman-test load' });
    client.on('error', () => undefined);
    await client.connect();
    await client.query(`create table if not exists ${table} (id bigserial primary key, payload text not null)`);
    return new SqlLoad(client, table, rowsPerBatch, pauseMs);
  }

  /** Stops after the batch in flight; resolves with how many batches were committed (rejects if the load failed). */
  async stop(): Promise<number> {
    this.stopping = true;
    untrack(this.resource);
    try {
      await this.done;
    } finally {
      await this.client.end().catch(() => undefined);
    }
    return this.batches;
  }
}

export function startSqlLoad(target: LoadTarget, table?: string, rowsPerBatch?: number, pauseMs?: number): Promise<SqlLoad> {
  return SqlLoad.start(target, table, rowsPerBatch, pauseMs);
}
