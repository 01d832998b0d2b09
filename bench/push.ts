// Section "push": issue 10's target 4, what one `barman-agent push <segment>` (PostgreSQL's
// archive_command, no daemon) costs next to the floor it is judged against, starting Node at all
// (`node -e ''`), and next to copying the segment durably on the same disk (`cp <seg> <dest> && sync`).
// Real WAL from a throwaway cluster, a real receiver on this host, every segment pushed by a fresh
// process as PostgreSQL would run it: the installed `barman-agent` (the sh launcher, which starts
// Node for a push the daemon has not answered). Each step of the agent's start-up is timed beside
// it: the bundle compiled from its code cache (as installed), and the same without the cache.
// And the floor under any push (push-floor.cjs): a fresh Node doing only the local work a push owes
// before it answers (read, SHA-256, zstd, write, fsync, rename, fsync of the folder), no network.

import { copyFileSync, mkdirSync, readdirSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { BenchCluster, type BenchContext, copyStoredWal, fmtMs, fmtRatio, markdownTable, openCatalog, procCpuSeconds, runMeasured, runOk, type SectionResult, startReceiver, stats, type Stats } from './lib';

const SEGMENTS = 64;
/** rounds (spread over the run) that also time the start-up steps */
const STARTUP_RUNS = 20;
const GOAL_RATIO = 2.0;
/**
 * the environment the launcher gives Node for a push (agent/launcher.sh: one malloc arena, large
 * blocks kept, the heap in transparent huge pages), given to the floor too, so it is not slower
 * than a push for want of them
 */
const LAUNCHER_PUSH_MALLOC = { MALLOC_ARENA_MAX: '1', MALLOC_TRIM_THRESHOLD_: '33554432', MALLOC_MMAP_THRESHOLD_: '4194304', GLIBC_TUNABLES: 'glibc.malloc.hugetlb=1' };

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

interface Side {
  ms: number[];
  cpu: number[];
  rssKb: number[];
}

const side = (): Side => ({ ms: [], cpu: [], rssKb: [] });

export async function pushSection(ctx: BenchContext): Promise<SectionResult> {
  const segDir = join(ctx.workDir, 'segments');
  ctx.log(`push: generating ${SEGMENTS} WAL segments`);
  const segments = await makeSegments(ctx, SEGMENTS, segDir);
  // write back what the copy-out left dirty, so it does not land in the first measurements
  await runOk('sync', []);

  const receiver = await startReceiver(join(ctx.workDir, 'receiver'), ctx.repoRoot, ctx.cleanup, 'main');
  const launcher = join(ctx.repoRoot, 'dist', 'barman-agent');
  const agent = join(ctx.repoRoot, 'dist', 'barman-agent.cjs');
  // the same agent without its code cache beside it: what compiling the bundle from source costs
  const uncachedDir = join(ctx.workDir, 'agent-without-code-cache');
  mkdirSync(uncachedDir);
  const uncached = join(uncachedDir, 'barman-agent.cjs');
  copyFileSync(agent, uncached);
  const node = process.execPath;
  const timesDir = join(ctx.workDir, 'times');
  mkdirSync(timesDir);

  const cpDir = join(ctx.workDir, 'cp-dest');
  mkdirSync(cpDir);
  const floorScript = join(ctx.repoRoot, 'bench', 'push-floor.cjs');
  const floorDir = join(ctx.workDir, 'floor-dest');
  mkdirSync(floorDir);
  await runOk(node, ['-e', '']); // warm-up, not counted

  // Node reads and parses the certificates NODE_EXTRA_CA_CERTS names at every start, whatever the
  // program (tens of ms for a distribution's bundle): a variable of this shell, not of the
  // environment a PostgreSQL service runs archive_command in. Every side runs without it; Node's
  // start-up with it is timed beside, to say what it adds.
  const extraCaCerts = process.env.NODE_EXTRA_CA_CERTS;
  const env = { ...process.env };
  delete env.NODE_EXTRA_CA_CERTS;
  const measure = async (s: Side, file: string, args: string[], withEnv: NodeJS.ProcessEnv = env) => {
    const r = await runMeasured(file, args, timesDir, { env: withEnv }).catch((err: Error) => {
      throw new Error(`${err.message}\n--- receiver log\n${receiver.logTail()}`);
    });
    s.ms.push(r.ms);
    if (r.cpuSeconds !== undefined) s.cpu.push(r.cpuSeconds);
    if (r.peakKb !== undefined) s.rssKb.push(r.peakKb);
  };

  const floorEnv = { ...env, ...LAUNCHER_PUSH_MALLOC };
  // Interleaved, so load from other work on the machine falls on every measurement alike: each
  // round starts Node bare, pushes one segment, does the floor's work on it and copies it with
  // cp && sync; STARTUP_RUNS
  // rounds spread over the run also time the agent's start-up without work, with and without its
  // code cache, and a push without the cache.
  ctx.log(`push: ${segments.length} rounds of node -e '' + push + cp && sync, ${STARTUP_RUNS} of them with the start-up steps`);
  const bare = side();
  const push = side();
  const pushUncached = side();
  const version = side();
  const versionUncached = side();
  const cp = side();
  const floor = side();
  const bareWithCa = side();
  const receiverCpu: number[] = [];
  const uncachedSegments = new Set<string>();
  for (const [i, seg] of segments.entries()) {
    const probe = Math.floor((i * STARTUP_RUNS) / segments.length) !== Math.floor(((i - 1) * STARTUP_RUNS) / segments.length);
    await measure(bare, node, ['-e', '']);
    if (probe) {
      if (extraCaCerts) await measure(bareWithCa, node, ['-e', ''], process.env);
      await measure(version, node, [agent, '--version']);
      await measure(versionUncached, node, [uncached, '--version']);
    }
    const before = procCpuSeconds(receiver.pid);
    if (probe && i % 2 === 1) {
      // every other probe round pushes without the code cache instead
      await measure(pushUncached, node, [uncached, '-c', receiver.agentConfig, 'push', seg]);
      uncachedSegments.add(seg);
    } else {
      await measure(push, launcher, ['-c', receiver.agentConfig, 'push', seg]);
      receiverCpu.push(procCpuSeconds(receiver.pid) - before);
    }
    await measure(floor, node, [floorScript, seg, floorDir], floorEnv);
    await measure(cp, 'sh', ['-c', 'cp "$1" "$2" && sync', 'sh', seg, cpDir]);
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

  return {
    title: 'push: one `barman-agent push` without the daemon vs Node start-up vs `cp && sync` (target 4)',
    markdown: report({ bare, push, pushUncached, version, versionUncached, cp, floor, receiverCpu, bareWithCa }, segments.length - uncachedSegments.size, extraCaCerts),
  };
}

function report(m: { bare: Side; push: Side; pushUncached: Side; version: Side; versionUncached: Side; cp: Side; floor: Side; receiverCpu: number[]; bareWithCa: Side }, pushes: number, extraCaCerts: string | undefined): string {
  const med = (xs: number[]) => (xs.length ? stats(xs).median : Number.NaN);
  const cpuMs = (s: Side) => (s.cpu.length ? fmtMs(med(s.cpu) * 1000) : '–');
  const rss = (s: Side) => (s.rssKb.length ? (med(s.rssKb) / 1024).toFixed(0) : '–');
  const row = (what: string, s: Side) => {
    const st: Stats = stats(s.ms);
    return [what, String(st.n), fmtMs(st.median), fmtMs(st.p95), fmtMs(st.min), fmtMs(st.max), cpuMs(s), rss(s)];
  };
  const ratio = med(m.push.ms) / med(m.bare.ms);
  const met = ratio <= GOAL_RATIO ? 'met' : '**not met**';
  const floorRatio = med(m.floor.ms) / med(m.bare.ms);
  const spread = (s: Side) => fmtRatio(stats(s.ms).p95 / stats(s.ms).median);
  return [
    `${pushes + m.pushUncached.ms.length} real 16 MB WAL segments (PostgreSQL, \`insert\` + \`pg_switch_wal()\`), each handled by a fresh process, one at a time, as PostgreSQL runs archive_command: the installed \`dist/barman-agent\` (the sh launcher; no daemon, so it starts Node for the push).`,
    'The receiver (`barman-receiver serve`, its default compression, zstd: the agent sends each MiB as a zstd frame and the receiver checks and stores them) runs on this host with its `barman_home` on the same disk as the `cp` destination;',
    'every push is acknowledged only after the receiver fsynced the file and its folder, and the run checks afterwards that the catalog holds every segment.',
    '',
    markdownTable(
      ['measurement', 'runs', 'median ms', 'p95 ms', 'min ms', 'max ms', 'CPU ms (median)', 'peak RSS MiB (median)'],
      [
        row("`node -e ''` (Node start-up)", m.bare),
        row('`node dist/barman-agent.cjs --version` (agent start-up, no work; compiled from its code cache)', m.version),
        row('… the same without the code cache (the bundle compiled from source)', m.versionUncached),
        row('`dist/barman-agent -c agent.conf push <seg>` (as installed: launcher, Node, code cache)', m.push),
        row('`node barman-agent.cjs -c agent.conf push <seg>` without the code cache', m.pushUncached),
        row('`cp <seg> <dest> && sync`', m.cp),
        row('floor: `node bench/push-floor.cjs <seg> <dir>`, the local work of a push alone (read, SHA-256, zstd level 1 in 1 MiB frames, write, fsync, rename, fsync of the folder; no connection, no receiver)', m.floor),
        ...(extraCaCerts ? [row("`node -e ''` with NODE_EXTRA_CA_CERTS as this shell sets it (not counted above)", m.bareWithCa)] : []),
      ],
    ),
    ...(extraCaCerts
      ? ['', `Every measurement runs without NODE_EXTRA_CA_CERTS, which the shell that ran this benchmark sets (\`${extraCaCerts}\`): Node reads and parses those certificates at every start, whatever it runs, and that took ${fmtMs(med(m.bareWithCa.ms) - med(m.bare.ms))} ms more here (medians). A PostgreSQL service runs archive_command without it; with it on both sides, the ratio below would look better than it is.`]
      : []),
    '',
    markdownTable(
      ['target 4', 'goal', 'measured', ''],
      [
        ['one push / `node -e \'\'` (medians, interleaved)', `≤ ${GOAL_RATIO.toFixed(1)}×`, `${fmtRatio(ratio)} (${fmtMs(med(m.push.ms))} vs ${fmtMs(med(m.bare.ms))} ms)`, met],
        ['the floor / `node -e \'\'`: what no push can go below', '', `${fmtRatio(floorRatio)} (${fmtMs(med(m.floor.ms))} ms)`, floorRatio > GOAL_RATIO ? 'above the goal: no push that checksums, compresses and makes the segment durable before it answers can meet it here' : ''],
      ],
    ),
    '',
    markdownTable(
      ['where a push\'s time goes (medians, ms)', ''],
      [
        ['Node itself (`node -e \'\'`)', fmtMs(med(m.bare.ms))],
        ['the agent\'s start-up on top of Node, code cache (`--version` − `node -e \'\'`)', fmtMs(med(m.version.ms) - med(m.bare.ms))],
        ['… without the code cache', fmtMs(med(m.versionUncached.ms) - med(m.bare.ms))],
        ['the push itself: connect, authenticate, hash and compress 16 MB, send the frames, the receiver\'s checks (decompress, CRC-32C, page header), write, fsync, rename, ack (push − `--version`)', fmtMs(med(m.push.ms) - med(m.version.ms))],
        ['the receiver\'s CPU per push (its process, from /proc)', fmtMs(med(m.receiverCpu) * 1000)],
        ['the agent\'s CPU per push (GNU time: launcher + Node)', cpuMs(m.push)],
        ['the floor\'s work on top of Node: read, hash, compress, write and make durable 16 MB (floor − `node -e \'\'`)', fmtMs(med(m.floor.ms) - med(m.bare.ms))],
        ['… its CPU (GNU time)', cpuMs(m.floor)],
      ],
    ),
    '',
    `Noise: p95/median is ${spread(m.bare)} for Node start-up, ${spread(m.push)} for push, ${spread(m.floor)} for the floor, ${spread(m.cp)} for cp && sync.`,
    `The floor runs with the environment the launcher gives Node for a push (${Object.entries(LAUNCHER_PUSH_MALLOC).map(([k, v]) => `${k}=${v}`).join(', ')}), and compresses all 16 blocks at once on libuv's thread pool where the agent keeps two in flight: it is a bound from below, not a push.`,
    'Times are wall clock from spawn to exit as seen by the bench process, each program under GNU time (for its CPU and peak RSS; the same small cost on every side).',
    'The segments sit in the page cache (written just before), so reads are free and the cost is the write and its flush;',
    '`sync` flushes every dirty page of the machine, not only the copied file, so `cp && sync` is hurt by anything else writing at the time.',
    'This is a small VM shared with other work: the load averages above say how busy it was, and figures of runs at different load are not comparable; the ratios hold better than the absolute figures.',
  ].join('\n');
}
