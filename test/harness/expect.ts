// What every command's outcome is checked against (docs/guarantees.md): exit code, and on failure
// one `ERROR [CODE]:` line saying what failed and a HINT line saying what to do.

import { expect } from 'vitest';
import type { Cluster } from './cluster';
import { sha256Of } from './fs';
import type { Receiver } from './receiver';
import { describeRun, type RunResult } from './run';

export function expectSuccess(r: RunResult): void {
  expect(r.code, describeRun(r)).toBe(0);
}

/** Exit `exitCode` (1 operation failed, 2 usage/configuration), `message` on stderr, an `ERROR [CODE]:` line and a HINT line. */
export function expectFailure(r: RunResult, exitCode: 1 | 2, message: RegExp): void {
  expect(r.code, describeRun(r)).toBe(exitCode);
  expect(r.stderr, describeRun(r)).toMatch(message);
  expect(r.stderr, describeRun(r)).toMatch(/^ERROR \[[A-Z][A-Z_]*\]: \S.*$/m);
  expect(r.stderr, describeRun(r)).toMatch(/^HINT: \S.*$/m);
}

/**
 * The catalog of `server` holds exactly the segments PostgreSQL counts as archived (its .done
 * files), each byte for byte the file in pg_wal: nothing missing, nothing extra, nothing
 * half-written under a final name. Needs the segments still in pg_wal (wal_keep_size).
 * Returns the catalog's segment names.
 */
export async function expectCatalogMatchesCluster(receiver: Receiver, server: string, cluster: Cluster): Promise<string[]> {
  const catalog = receiver.segments(server);
  const archived = cluster.archiveStatus().done.filter((name) => /^[0-9A-F]{24}$/.test(name));
  expect(catalog).toEqual(archived.sort());
  for (const name of catalog) {
    expect(receiver.walSha256(server, name), name).toBe(await sha256Of(cluster.walFile(name)));
  }
  return catalog;
}
