// `barman-receiver recover <srv> <id> <dest>`: a startable data directory from the catalog, on
// this host. Plan (every refusal, binaries of another major version included) first, then write.

import { promises as fs, readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { ReceiverConfig } from '../../shared/config/receiver';
import { BarmanError, ErrorCode } from '../../shared/errors';
import { checkProbedBinaries, probeRecoveryBinaries } from '../../shared/postgres/binaries';
import type { RecoveryOptions, RecoveryPlan } from '../../shared/recovery/plan';
import { checkDestination, type WriteOptions, type WriteSummary, writeRecovery } from '../../shared/recovery/writer';
import { withServer } from '../catalog/open';
import { planRecovery, requireTablespaceLocations } from '../recovery/plan';
import { recoveryWal } from '../recovery/wal-source';
import { requireServer } from './servers';

/** uid/gid of a user name or number, from /etc/passwd. */
export function lookupOwner(spec: string): { uid: number; gid: number } {
  if (/^\d+(:\d+)?$/.test(spec)) {
    const [u, g] = spec.split(':');
    return { uid: Number(u), gid: Number(g ?? u) };
  }
  const line = readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.split(':')[0] === spec);
  if (!line) throw new BarmanError(ErrorCode.USAGE, `no user named "${spec}" on this host`, 'Give --owner an existing user (the one PostgreSQL runs as).');
  const f = line.split(':');
  return { uid: Number(f[2]), gid: Number(f[3]) };
}

/**
 * Whom the recovered files belong to. PostgreSQL refuses to run as root, so a root-run recover
 * hands them to --owner, else to the owner of the destination's parent, else to postgres.
 */
async function decideOwner(dest: string, owner: string | undefined): Promise<{ uid: number; gid: number } | undefined> {
  if (owner) return lookupOwner(owner);
  if (process.getuid?.() !== 0) return undefined;
  const parent = await fs.stat(dirname(dest)).catch(() => undefined);
  if (parent && parent.uid !== 0) return { uid: parent.uid, gid: parent.gid };
  try {
    return lookupOwner('postgres');
  } catch {
    return undefined;
  }
}

export async function recover(config: ReceiverConfig, server: string, backupRef: string, destArg: string, opts: RecoveryOptions & { owner?: string; pgBindir?: string } & Pick<WriteOptions, 'delta' | 'primaryConninfo'>, progress?: WriteOptions['progress']): Promise<RecoveryPlan & { summary: WriteSummary }> {
  const s = requireServer(config, server);
  // the binaries' versions are asked while the catalog is read, and checked before a byte is written
  const binaries = probeRecoveryBinaries(opts.pgBindir);
  binaries.catch(() => undefined); // (a failure is thrown where it is awaited, if the recover gets there)
  return withServer(config, s, async ({ catalog, backups }) => {
    const dest = resolve(destArg);
    await checkDestination(dest, 'destination', opts.delta === true);
    const plan = await planRecovery(catalog, backups, backupRef, opts);
    checkProbedBinaries(plan.backupId, plan.pgVersion, await binaries, opts.pgBindir);
    requireTablespaceLocations(plan, opts.tablespaces, dest);
    const contents = await backups.contents(plan.backupId);
    // small files are read with their bundle, each bundle once
    const bundles = backups.bundleReader(contents);
    const summary = await writeRecovery(plan, dest, {
      dataFile: (path) => readBackupFile(() => backups.readFile(plan.backupId, contents, path, bundles)),
      walFile: (name) => recoveryWal(catalog, name),
      // the storage hands out a new buffer for every chunk it reads or decompresses
      freshChunks: true,
    }, { owner: await decideOwner(dest, opts.owner), progress, protectedPaths: [{ path: config.barmanHome, what: 'the catalog (barman_home)' }], delta: opts.delta, primaryConninfo: opts.primaryConninfo });
    return { ...plan, summary };
  });
}

/** A backup file's plain bytes, opened when the writer first asks for them. */
async function* readBackupFile(open: () => Promise<AsyncIterable<Buffer>>): AsyncGenerator<Buffer> {
  for await (const chunk of await open()) yield chunk;
}
