// Section "push": what one `barman-agent push <segment>` (PostgreSQL's archive_command) costs,
// next to the two floors it is judged against: starting Node at all (`node -e ''`), and copying
// the segment durably on the same disk (`cp <seg> <dest> && sync`). Real WAL from a throwaway
// cluster, a real receiver on this host, every segment pushed by a fresh process as PostgreSQL
// would run it.

import { copyFileSync, mkdirSync, readdirSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { BenchCluster, type BenchContext, copyStoredWal, fmtMs, fmtRatio, markdownTable, openCatalog, runOk, type SectionResult, startReceiver, stats, type Stats } from './lib';

const SEGMENTS = 64;
const NODE_RUNS = 20;

/** Makes `count` complete 16 MB WAL segments of real data and copies them to `outDir`. */
async function makeSegments(ctx: BenchContext, count: number, outDir: string): Promise<string[]> {
  const cluster = await BenchCluster.start(join(ctx.workDir, 'cluster'), ctx.pgBin, ctx.cleanup, {
    archive_mode: 'off',
    wal_keep_size: "'4GB'",
    max_wal_size: "'4GB'",
    checkpoint_timeout: "'1h'",
    // durability of the source cluster does not shape its WAL
    fsync: 'off',
  });
  // each round writes about 5 MB of WAL (heap inserts, full-page images) and ends its segment
  const round = "insert into bench_rows select g, repeat(md5(g::text || random()::text), 3) from generate_series(1, 20000) g;\nselect pg_switch_wal();\n";
  await cluster.psql(`create table bench_rows (id int, payload text);\n${round.repeat(count + 1)}`);
  const current = await cluster.psql('select pg_walfile_name(pg_current_wal_lsn())');
  const walDir = join(cluster.pgdata, 'pg_wal');
  const complete = readdirSync(walDir).filter((n) => /^[0-9A-F]{24}$/.test(n) && n < current).sort();
  if (complete.length < count) throw new Error(`only ${complete.length} complete segments in ${walDir}, wanted ${count}`);
  const chosen = complete.slice(-count);
  mkdirSync(outDir, { recursive: true });
  for (const name of chosen) copyFileSync(join(walDir, name), join(outDir, name));
  await cluster.stop('fast');
  return chosen.map((name) => join(outDir, name));
}

async function sha256(path: string): Promise<string> {
  return createHash('sha256').update(await readFile(path)).digest('hex');
}

export async function pushSection(ctx: BenchContext): Promise<SectionResult> {
  const segDir = join(ctx.workDir, 'segments');
  ctx.log(`push: generating ${SEGMENTS} WAL segments`);
  const segments = await makeSegments(ctx, SEGMENTS, segDir);
  // write back what the copy-out left dirty, so it does not land in the first measurements
  await runOk('sync', []);

  const receiver = await startReceiver(join(ctx.workDir, 'receiver'), ctx.repoRoot, ctx.cleanup, 'main', { compression: 'none' });
  const agent = join(ctx.repoRoot, 'dist', 'barman-agent.cjs');
  const node = process.execPath;

  const cpDir = join(ctx.workDir, 'cp-dest');
  mkdirSync(cpDir);
  await runOk(node, ['-e', '']); // warm-up, not counted

  // Interleaved, so load from other work on the machine falls on every measurement alike: each
  // round pushes one segment and copies it with cp && sync; NODE_RUNS rounds spread over the run
  // also time the two start-up probes.
  ctx.log(`push: ${segments.length} rounds of push + cp && sync, ${NODE_RUNS} of them with node start-up probes`);
  const nodeMs: number[] = [];
  const versionMs: number[] = [];
  const pushMs: number[] = [];
  const cpMs: number[] = [];
  for (const [i, seg] of segments.entries()) {
    if (Math.floor((i * NODE_RUNS) / segments.length) !== Math.floor(((i - 1) * NODE_RUNS) / segments.length)) {
      nodeMs.push((await runOk(node, ['-e', ''])).ms);
      // loading the agent bundle without any work: splits a push into start-up and transfer
      versionMs.push((await runOk(node, [agent, '--version'])).ms);
    }
    const pushed = await runOk(node, [agent, '-c', receiver.agentConfig, 'push', seg]).catch((err: Error) => {
      throw new Error(`${err.message}\n--- receiver log\n${receiver.logTail()}`);
    });
    pushMs.push(pushed.ms);
    cpMs.push((await runOk('sh', ['-c', 'cp "$1" "$2" && sync', 'sh', seg, cpDir])).ms);
  }

  // the figures only count if the receiver really holds every segment, byte for byte
  const catalog = await openCatalog(receiver, 'main', ctx.cleanup);
  const check = join(ctx.workDir, 'read-back');
  for (const seg of segments) {
    const name = seg.slice(segDir.length + 1);
    await copyStoredWal(catalog, name, check);
    if ((await sha256(check)) !== (await sha256(seg))) throw new Error(`stored ${name} differs from the pushed segment`);
  }
  await receiver.stop();

  return { title: 'push: `barman-agent push` vs Node start-up vs `cp && sync`', markdown: report(segments.length, stats(nodeMs), stats(versionMs), stats(pushMs), stats(cpMs)) };
}

function report(count: number, node: Stats, version: Stats, push: Stats, cp: Stats): string {
  const perSecond = (s: Stats) => (s.n / (s.total / 1000)).toFixed(1);
  const row = (what: string, s: Stats, rate: boolean) => [what, String(s.n), fmtMs(s.median), fmtMs(s.p95), fmtMs(s.min), fmtMs(s.max), rate ? perSecond(s) : '–'];
  const spread = (s: Stats) => s.p95 / s.median;
  const noisiest = [['node start-up', node], ['agent start-up', version], ['push', push], ['cp && sync', cp]] as const;
  return [
    `${count} real 16 MB WAL segments (PostgreSQL, \`insert\` + \`pg_switch_wal()\`), each handled by a fresh process, one at a time.`,
    'The receiver (`barman-receiver serve`, compression none) runs on this host with its `barman_home` on the same disk as the `cp` destination;',
    'every push is acknowledged only after the receiver fsynced the file and its folder, and the run checks afterwards that the catalog holds every segment byte for byte.',
    '',
    markdownTable(
      ['measurement', 'runs', 'median ms', 'p95 ms', 'min ms', 'max ms', 'segments/s'],
      [
        row("`node -e ''` (Node start-up)", node, false),
        row('`node dist/barman-agent.cjs --version` (agent start-up, no work)', version, false),
        row('`node dist/barman-agent.cjs -c agent.conf push <seg>`', push, true),
        row('`cp <seg> <dest> && sync`', cp, true),
      ],
    ),
    '',
    markdownTable(
      ['ratio (medians)', 'value'],
      [
        ['push / Node start-up', fmtRatio(push.median / node.median)],
        ['push / cp && sync', fmtRatio(push.median / cp.median)],
        ['push − Node start-up (the agent\'s own work, ms)', fmtMs(push.median - node.median)],
        ['push − agent start-up (connect, authenticate, send, durable ack; ms)', fmtMs(push.median - version.median)],
      ],
    ),
    '',
    `Noise: p95/median is ${noisiest.map(([what, s]) => `${fmtRatio(spread(s))} for ${what}`).join(', ')}.`,
    'Times are wall clock from spawn to exit as seen by the bench process (spawning costs the same for each of them).',
    'The segments sit in the page cache (written just before), so reads are free and the cost is the write and its flush;',
    '`sync` flushes every dirty page of the machine, not only the copied file, so `cp && sync` is hurt by anything else writing at the time.',
    `The four are interleaved (each round pushes a segment and copies it; the start-up probes run in ${node.n} rounds spread over the run), so other work on the machine weighs on all of them alike and the ratios hold better than the absolute figures.`,
    'This is a small VM shared with other work: the load averages above say how busy it was, and figures of runs at different load are not comparable.',
  ].join('\n');
}
