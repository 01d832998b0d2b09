// WAL segments sent compressed (protocol 5): the receiver announces the catalog's zstd in its
// welcome, the agent compresses each segment's 1 MiB blocks, and the receiver decompresses every
// frame and checks the plain bytes (their size, their page header, their SHA-256 against the one
// the put declared) before it stores the frames as they arrived and acknowledges. Whatever does
// not check out is refused and nothing is stored. A plain put is still stored.
// On the way back out, an agent's get takes a zstd-stored segment as its stored frames: the agent
// decompresses them and checks the plain bytes against the SHA-256 recorded when it was stored,
// and a copy that no longer matches it is refused by name (get-wal stops recovery, restore writes nothing).

import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { compress, decompress } from '@mongodb-js/zstd';
import { CHUNK_SIZE, type Frame } from '../../shared/protocol/frames';
import {
  type Cluster, crc32cOfBytes, createCluster, describeRun, expectFailure, expectSuccess, listDir, makeDir, makeTempDir, RawClient, type Receiver, runAgent, sha256Of, sha256OfBytes, startReceiver, startRelay, writeAgentConfig,
} from '../harness';
import { backupAndWait } from '../harness/backups';
import { waitFor } from '../harness/wait';
import { sampleValue, scrapeMetrics } from '../harness/metrics';

const SEGMENT_SIZE = 16 * 1024 * 1024;

const push = (config: string, path: string) => runAgent(['push', '-c', config, path]);

/** The receiver's log lines (pino JSON) about `wal` whose message matches `msg`. */
function walLog(receiver: Receiver, wal: string, msg: RegExp): Array<{ level: number; msg: string; session: string; agent?: string; hint?: string }> {
  return receiver.logs().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { level: number; msg: string; session: string; wal?: string }).filter((l) => l.wal === wal && msg.test(l.msg));
}

/** The segment's 1 MiB blocks, each one zstd frame (as the agent sends them). */
async function frames(segment: Buffer): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for (let at = 0; at < segment.length; at += CHUNK_SIZE) out.push(await compress(segment.subarray(at, at + CHUNK_SIZE), 1));
  return out;
}

describe('compressed WAL puts: checked frame by frame, stored as sent', () => {
  let receiver: Receiver;
  let prod: Cluster;
  let agentConfig: string;
  const segs: string[] = [];
  let nextId = 1;

  beforeAll(async () => {
    receiver = await startReceiver({ servers: [{ name: 'main' }] });
    prod = await createCluster({ name: 'prod', extraConf: { wal_keep_size: '1GB' } });
    await prod.start();
    await prod.psql('create table t (id int, note text)');
    for (let i = 0; i < 9; i++) {
      await prod.psql(`insert into t select g, 'round ${i}' from generate_series(1, 2000) g`);
      segs.push(await prod.switchWal());
    }
    agentConfig = writeAgentConfig({ receiver, server: 'main', pgdata: prod.pgdata, conninfo: prod.conninfo }).path;
    // the catalog learns the cluster's identity
    expectSuccess(await push(agentConfig, prod.walFile(segs[0]!)));
  });

  /**
   * A push session of the current protocol (its welcome announces zstd) sending `chunks` for
   * segment `name`, with the checksums of `read`, the bytes the agent read: its SHA-256 in the put
   * and the end, its CRC-32C in the end (`declared` says another SHA-256 in the put, `end` other
   * checksums in the end). An answer that names a request names this put.
   */
  async function put(name: string, read: Buffer, chunks: Buffer[], declared = sha256OfBytes(read), end: { sha256?: string; crc32c?: string } = { sha256: declared, crc32c: crc32cOfBytes(read) }): Promise<Frame> {
    const client = await RawClient.authenticated(receiver.url, 'main', receiver.tokens.get('main')!, 'push');
    try {
      const id = nextId++;
      client.send({ type: 'put', id, target: { kind: 'wal', name, sha256: declared }, size: SEGMENT_SIZE, compression: 'zstd' });
      for (const data of chunks) client.send({ type: 'chunk', id, data });
      client.send({ type: 'end', id, ...end });
      const answer = await client.nextFrame();
      if ('id' in answer && answer.id !== undefined) expect(answer.id).toBe(id);
      return answer;
    } finally {
      client.close();
    }
  }

  it('announces zstd to an agent of protocol 5, and the agent sends a segment compressed: a tenth of the bytes cross', async () => {
    const client = await RawClient.connect(receiver.url);
    const welcome = await client.authenticate('main', receiver.tokens.get('main')!, 'push');
    client.close();
    expect(welcome.walCompression).toBe('zstd');

    const relay = await startRelay({ host: receiver.host, port: receiver.port });
    let put: Frame | undefined;
    let chunkBytes = 0;
    relay.interceptNext({
      fromClient: (frame) => {
        if (frame.type === 'put') put = frame;
        if (frame.type === 'chunk') chunkBytes += frame.data.length;
        return frame;
      },
    });
    const viaRelay = writeAgentConfig({ receiver: relay.url, server: 'main', token: receiver.tokens.get('main')!, pgdata: prod.pgdata, conninfo: prod.conninfo }).path;
    expectSuccess(await push(viaRelay, prod.walFile(segs[1]!)));
    expect(put).toMatchObject({ type: 'put', compression: 'zstd', size: SEGMENT_SIZE });
    expect(chunkBytes).toBeLessThan(SEGMENT_SIZE / 4);
    // stored under the plain bytes' checksum, and they read back whole
    const sha = await sha256Of(prod.walFile(segs[1]!));
    expect(receiver.walChecksum('main', segs[1]!)).toBe(sha);
    expect(receiver.walSha256('main', segs[1]!)).toBe(sha);
    const reader = await RawClient.authenticated(receiver.url, 'main', receiver.tokens.get('main')!, 'get');
    const back = await reader.get(nextId++, segs[1]!);
    reader.close();
    expect('bytes' in back && sha256OfBytes(back.bytes)).toBe(sha);
  });

  it('refuses compressed frames whose plain bytes are not those the agent read (its CRC-32C), and stores nothing', async () => {
    const name = segs[2]!;
    const segment = readFileSync(prod.walFile(name));
    const altered = Buffer.from(segment);
    altered[SEGMENT_SIZE - 100] = altered[SEGMENT_SIZE - 100]! ^ 0xff;
    // the frames are of altered bytes (changed on the way); the put and its end carry the
    // checksums of the real segment, which the agent read
    const answer = await put(name, segment, await frames(altered));
    expect(answer).toMatchObject({ type: 'error', code: 'CHECKSUM_MISMATCH', message: `${name}: checksum of the bytes received (CRC-32C ${crc32cOfBytes(altered)}) differs from the agent's (${crc32cOfBytes(segment)})` });
    expect(receiver.segments('main')).not.toContain(name);
    expect(receiver.tempFiles('main')).toEqual([]);
    // the real segment is then archived as usual
    expectSuccess(await push(agentConfig, prod.walFile(name)));
    expect(receiver.walSha256('main', name)).toBe(sha256OfBytes(segment));
  });

  it('refuses a chunk that is not a zstd frame, and stores nothing', async () => {
    const name = segs[3]!;
    const segment = readFileSync(prod.walFile(name));
    const chunks = await frames(segment);
    // the second chunk is the plain block itself
    chunks[1] = segment.subarray(CHUNK_SIZE, 2 * CHUNK_SIZE);
    const answer = await put(name, segment, chunks);
    expect(answer).toMatchObject({ type: 'error', code: 'WAL_INVALID', message: expect.stringMatching(/not a zstd frame/) });
    expect(receiver.segments('main')).not.toContain(name);
    expect(receiver.tempFiles('main')).toEqual([]);
  });

  it('refuses a WAL end without its CRC-32C (PROTOCOL): the receiver no longer hashes what arrives, so it has nothing to check it against', async () => {
    const name = segs[3]!;
    const segment = readFileSync(prod.walFile(name));
    // a protocol violation ends the session (its answer names no request)
    expect(await put(name, segment, await frames(segment), sha256OfBytes(segment), { sha256: sha256OfBytes(segment) })).toMatchObject({ type: 'error', code: 'PROTOCOL', message: `${name}: the end of a WAL file carries no CRC-32C` });
    expect(receiver.segments('main')).not.toContain(name);
    await waitFor('no temporary file to be left', () => receiver.tempFiles('main').length === 0);
  });

  it('refuses a WAL end whose SHA-256 is not the one its put declared (the file changed between two reads), and stores nothing', async () => {
    const name = segs[3]!;
    const segment = readFileSync(prod.walFile(name));
    const declared = sha256OfBytes(Buffer.alloc(SEGMENT_SIZE));
    const answer = await put(name, segment, await frames(segment), declared, { sha256: sha256OfBytes(segment), crc32c: crc32cOfBytes(segment) });
    expect(answer).toMatchObject({ type: 'error', code: 'CHECKSUM_MISMATCH', message: `${name}: the SHA-256 at the end of the bytes (${sha256OfBytes(segment).slice(0, 12)}…) differs from the one declared before them (${declared.slice(0, 12)}…)` });
    // it answers the put (put() checks the id it names)
    expect(answer).toHaveProperty('id');
    expect(receiver.segments('main')).not.toContain(name);
    await waitFor('no temporary file to be left', () => receiver.tempFiles('main').length === 0);
  });

  it('a host that declares a SHA-256 its bytes do not have: an intact copy stays as it is; a new segment is stored under it, refused as damaged on the way out, and replaced by the honest push', async () => {
    const garbage = (of: Buffer) => {
      // the real segment's page header (it passes the receiver's checks), then other bytes
      const g = Buffer.alloc(SEGMENT_SIZE, 0x5a);
      of.copy(g, 0, 0, 8192);
      return g;
    };
    // segs[0] is stored and intact: its checksum with other bytes changes nothing
    const kept = segs[0]!;
    const keptSegment = readFileSync(prod.walFile(kept));
    const before = readFileSync(receiver.walPath('main', kept));
    const lie = garbage(keptSegment);
    expect(await put(kept, lie, await frames(lie), sha256OfBytes(keptSegment))).toMatchObject({ type: 'ack', status: 'duplicate', sha256: sha256OfBytes(keptSegment) });
    expect(readFileSync(receiver.walPath('main', kept))).toEqual(before);

    // a segment the catalog does not hold yet: the bytes pass every check the receiver makes (page
    // header, frames, size, the CRC-32C of what arrived) and are stored under the declared SHA-256
    const name = segs[8]!;
    const segment = readFileSync(prod.walFile(name));
    const bytes = garbage(segment);
    expect(await put(name, bytes, await frames(bytes), sha256OfBytes(segment))).toMatchObject({ type: 'ack', status: 'stored', sha256: sha256OfBytes(segment) });
    expect(receiver.walChecksum('main', name)).toBe(sha256OfBytes(segment));
    expect(receiver.walSha256('main', name)).toBe(sha256OfBytes(bytes));
    // every way out checks that checksum: get-wal refuses the copy by name
    const parent = makeTempDir('wal-declared-lie', 'postgres', 0o755);
    const dir = makeDir(join(parent, 'refused'), 'postgres', 0o700);
    const fetched = await runAgent(['get-wal', '-c', agentConfig, name, join(dir, 'RECOVERYXLOG')]);
    expect(fetched.code, describeRun(fetched)).toBe(128);
    expect(fetched.stderr).toMatch(new RegExp(`${name} in the catalog of main is damaged: its bytes do not match the checksum recorded when it was stored`));
    expect(listDir(dir)).toEqual([]);
    // the honest push of the segment replaces the copy; the lie is kept aside under errors/
    expectSuccess(await push(agentConfig, prod.walFile(name)));
    expect(receiver.walSha256('main', name)).toBe(sha256OfBytes(segment));
    expect(listDir(join(receiver.serverDir('main'), 'errors')).filter((f) => f.startsWith(`${name}.`) && /\.damaged(\.|$)/.test(f))).toHaveLength(1);
    const repaired = makeDir(join(parent, 'repaired'), 'postgres', 0o700);
    expectSuccess(await runAgent(['get-wal', '-c', agentConfig, name, join(repaired, 'RECOVERYXLOG')]));
    expect(await sha256Of(join(repaired, 'RECOVERYXLOG'))).toBe(sha256OfBytes(segment));
  });

  it('refuses a frame of more plain bytes than its place in the segment holds (2 MiB in one frame), and stores nothing', async () => {
    const name = segs[4]!;
    const segment = readFileSync(prod.walFile(name));
    const chunks = [await compress(segment.subarray(0, 2 * CHUNK_SIZE), 1), ...(await frames(segment.subarray(2 * CHUNK_SIZE)))];
    const answer = await put(name, segment, chunks);
    expect(answer).toMatchObject({ type: 'error', code: 'WAL_INVALID', message: expect.stringMatching(/decompresses to 2097152 bytes, not the 1048576/) });
    expect(receiver.segments('main')).not.toContain(name);
  });

  it('refuses more frames than the announced size makes, and stores nothing', async () => {
    const name = segs[5]!;
    const segment = readFileSync(prod.walFile(name));
    const chunks = await frames(segment);
    chunks.push(chunks[0]!);
    const answer = await put(name, segment, chunks);
    expect(answer).toMatchObject({ type: 'error', code: 'WAL_INVALID', message: expect.stringMatching(/more compressed frames than/) });
    expect(receiver.segments('main')).not.toContain(name);
  });

  it('stores well-formed compressed frames as they arrived, acknowledged under the plain checksum', async () => {
    const name = segs[6]!;
    const segment = readFileSync(prod.walFile(name));
    const sha = sha256OfBytes(segment);
    const chunks = await frames(segment);
    expect(await put(name, segment, chunks)).toMatchObject({ type: 'ack', status: 'stored', sha256: sha });
    expect(readFileSync(receiver.walPath('main', name))).toEqual(Buffer.concat(chunks));
    // the same again is a duplicate
    expect(await put(name, segment, chunks)).toMatchObject({ type: 'ack', status: 'duplicate', sha256: sha });
  });

  it('stores a plain put too: compression is for the agent to choose, the welcome only allows it', async () => {
    const name = segs[7]!;
    const segment = readFileSync(prod.walFile(name));
    const sha = sha256OfBytes(segment);
    const old = await RawClient.connect(receiver.url);
    const welcome = await old.authenticate('main', receiver.tokens.get('main')!, 'push');
    expect(welcome.walCompression).toBe('zstd');
    const id = nextId++;
    old.send({ type: 'put', id, target: { kind: 'wal', name, sha256: sha }, size: SEGMENT_SIZE });
    for (let at = 0; at < SEGMENT_SIZE; at += CHUNK_SIZE) old.send({ type: 'chunk', id, data: segment.subarray(at, at + CHUNK_SIZE) });
    old.send({ type: 'end', id, sha256: sha, crc32c: crc32cOfBytes(segment) });
    expect(await old.nextFrame()).toMatchObject({ type: 'ack', id, status: 'stored', sha256: sha });
    old.close();
    expect(receiver.walSha256('main', name)).toBe(sha);
  });
});

describe('WAL served as its stored zstd frames: the agent decompresses them and checks the recorded SHA-256', () => {
  let receiver: Receiver;
  let cluster: Cluster;
  let agentConf: string;
  /** the same agent without fetch-ahead: one get per segment */
  let noPrefetch: string;
  let backupId: string;
  /** archived after the backup, stored as zstd frames */
  let seg: string;

  beforeAll(async () => {
    receiver = await startReceiver({ servers: [{ name: 'main' }] });
    cluster = await createCluster({ name: 'main', archive: true, agentConfig: { receiver, server: 'main' } });
    agentConf = cluster.agentConfigPath!;
    noPrefetch = writeAgentConfig({ receiver, server: 'main', pgdata: cluster.pgdata, conninfo: cluster.conninfo, extra: { prefetch: '0' } }).path;
    await cluster.start();
    await cluster.psql('create table ledger (id int primary key, note text not null)');
    backupId = await backupAndWait(receiver, 'main', cluster);
    await cluster.psql("insert into ledger select g, 'row ' || g from generate_series(1, 5000) g");
    seg = await cluster.switchWal();
    await cluster.waitArchived([seg]);
  });

  it('sends a zstd-stored segment as its stored frames to a get that accepts them, plain bytes to one that does not, each ending with the recorded SHA-256', async () => {
    const sha = await sha256Of(cluster.walFile(seg));
    expect(receiver.walChecksum('main', seg)).toBe(sha);
    const stored = readFileSync(receiver.walPath('main', seg));
    const client = await RawClient.authenticated(receiver.url, 'main', receiver.tokens.get('main')!, 'get');
    try {
      client.send({ type: 'get', id: 1, name: seg, accept: 'zstd' });
      expect(await client.nextFrame()).toMatchObject({ type: 'file', id: 1, name: seg, size: SEGMENT_SIZE, encoding: 'zstd' });
      const frames: Buffer[] = [];
      const plain: Buffer[] = [];
      let end: Frame;
      for (;;) {
        const frame = await client.nextFrame();
        if (frame.type !== 'chunk') {
          end = frame;
          break;
        }
        expect(frame.id).toBe(1);
        expect(frame.plain).toBeUndefined();
        frames.push(Buffer.from(frame.data));
        const block = Buffer.from(await decompress(Buffer.from(frame.data)));
        expect(block.length).toBeLessThanOrEqual(CHUNK_SIZE);
        plain.push(block);
      }
      expect(end).toMatchObject({ type: 'end', id: 1, sha256: sha });
      // the stored bytes as they are, which decompress to the archived segment
      expect(Buffer.concat(frames)).toEqual(stored);
      expect(stored.length).toBeLessThan(SEGMENT_SIZE / 4);
      expect(sha256OfBytes(Buffer.concat(plain))).toBe(sha);
      const back = await client.get(2, seg);
      expect('bytes' in back && back.bytes.length).toBe(SEGMENT_SIZE);
      expect('bytes' in back && sha256OfBytes(back.bytes)).toBe(sha);
      expect('sha256' in back && back.sha256).toBe(sha);
    } finally {
      client.close();
    }
  });

  it('an agent that says it refused what it was sent has the stored copy read again, once per file sent, and is told what it is: intact, it is logged as damage on the way', async () => {
    const client = await RawClient.connect(receiver.url);
    const { sessionId } = await client.authenticate('main', receiver.tokens.get('main')!, 'get');
    const mine = (msg: RegExp) => walLog(receiver, seg, msg).filter((l) => l.session === sessionId);
    const nothing = () => receiver.logs().split('\n').filter((l) => l.includes(sessionId) && l.includes('did not just send it; nothing to check'));
    try {
      const got = await client.get(1, seg);
      expect('bytes' in got && got.bytes.length).toBe(SEGMENT_SIZE);
      // a second report of the same file, and one of a request never answered with a file: nothing read again
      client.send({ type: 'refused', id: 1, detail: 'get: received 16777216 of 16777216 bytes, checksum differs' });
      client.send({ type: 'refused', id: 1, detail: 'again' });
      client.send({ type: 'refused', id: 99, detail: 'never sent' });
      // each answered: what the stored copy is, or that there is nothing to say (the second report of 1, and 99)
      const answers = [await client.nextFrame(), await client.nextFrame(), await client.nextFrame()];
      expect(answers).toHaveLength(3);
      expect(answers).toEqual(expect.arrayContaining([{ type: 'rechecked', id: 1, found: 'unknown' }, { type: 'rechecked', id: 99, found: 'unknown' }, { type: 'rechecked', id: 1, found: 'intact' }]));
      await waitFor('the stored copy read again', () => mine(/reads back intact/).length > 0 && nothing().length === 2, { timeoutMs: 15_000 });
      const [line] = mine(/reads back intact/);
      expect(line).toMatchObject({ level: 40, msg: `the agent refused ${seg}; its copy in the catalog reads back intact: the bytes changed on the way or on the agent's host`, agent: 'get: received 16777216 of 16777216 bytes, checksum differs' });
      // the connection goes on
      const again = await client.get(2, seg);
      expect('sha256' in again && again.sha256).toBe(receiver.walChecksum('main', seg));
      expect(mine(/refused/)).toHaveLength(1);
      // counted by what the stored copy was found to be (the damaged count is there from the start, at 0)
      const m = await scrapeMetrics(receiver.httpUrl);
      expect(sampleValue(m, 'barman_refused_files_total', { server: 'main', file: 'wal', found: 'intact' })).toBe(1);
      expect(sampleValue(m, 'barman_refused_files_total', { server: 'main', file: 'wal', found: 'damaged' })).toBe(0);
    } finally {
      client.close();
    }
  });

  it('the agent asks for the frames, and get-wal writes the archived segment byte for byte', async () => {
    const relay = await startRelay({ host: receiver.host, port: receiver.port });
    const asked: Frame[] = [];
    relay.interceptNext({
      fromClient: (frame) => {
        if (frame.type === 'get') asked.push(frame);
        return frame;
      },
    });
    const viaRelay = writeAgentConfig({ receiver: relay.url, server: 'main', token: receiver.tokens.get('main')!, pgdata: cluster.pgdata, conninfo: cluster.conninfo, extra: { prefetch: '0' } }).path;
    const dir = makeDir(join(makeTempDir('wal-frames', 'postgres', 0o755), 'restore'), 'postgres', 0o700);
    expectSuccess(await runAgent(['get-wal', '-c', viaRelay, seg, join(dir, 'RECOVERYXLOG')]));
    expect(asked).toEqual([expect.objectContaining({ type: 'get', name: seg, accept: 'zstd' })]);
    expect(await sha256Of(join(dir, 'RECOVERYXLOG'))).toBe(await sha256Of(cluster.walFile(seg)));
  });

  it('a segment whose bytes change on the way is refused, and the agent says so: the receiver read its copy back intact', async () => {
    // the stored segment's first frame, made again from its plain bytes with one byte flipped: valid zstd, other bytes
    const storedFrames = await frames(readFileSync(cluster.walFile(seg)));
    const plain = Buffer.from(await decompress(storedFrames[0]!));
    plain[4096 + 7] = plain[4096 + 7]! ^ 0x01;
    const changed = await compress(plain, 1);
    const relay = await startRelay({ host: receiver.host, port: receiver.port });
    let rewritten = 0;
    relay.interceptNext({
      rewriteFromReceiver: (frame) => {
        if (frame.type !== 'chunk' || rewritten > 0) return frame;
        rewritten++;
        return { ...frame, data: changed };
      },
    });
    const viaRelay = writeAgentConfig({ receiver: relay.url, server: 'main', token: receiver.tokens.get('main')!, pgdata: cluster.pgdata, conninfo: cluster.conninfo, extra: { prefetch: '0' } }).path;
    const dir = makeDir(join(makeTempDir('wal-frames-changed', 'postgres', 0o755), 'restore'), 'postgres', 0o700);
    const intact = () => walLog(receiver, seg, /reads back intact/).length;
    const before = intact();
    const fetched = await runAgent(['get-wal', '-c', viaRelay, seg, join(dir, 'RECOVERYXLOG')]);
    expect(rewritten).toBe(1);
    // still an exit that stops recovery: PostgreSQL must not take the segment for the end of WAL
    expect(fetched.code, describeRun(fetched)).toBe(128);
    expect(fetched.stderr).toMatch(new RegExp(`^ERROR \\[CHECKSUM_MISMATCH\\]: ${seg} arrived from the catalog of main changed: its bytes do not match the checksum recorded when it was stored \\(get: received 16777216 of 16777216 bytes, checksum differs\\), and the receiver read its copy back intact; refusing it$`, 'm'));
    expect(fetched.stderr).toMatch(/^HINT: Nothing in the catalog is damaged: the bytes changed on the way or on this host\. Retry; if it repeats, check this host's memory and the network path to the receiver\.$/m);
    expect(listDir(dir)).toEqual([]);
    // (logged before the agent was answered; the line may still be on its way through the pipe)
    await waitFor('the receiver to log the intact copy', () => intact() > before, { timeoutMs: 15_000 });
    expect(intact()).toBe(before + 1);
    // and through the receiver directly, the segment comes whole
    expectSuccess(await runAgent(['get-wal', '-c', noPrefetch, seg, join(dir, 'RECOVERYXLOG')]));
    expect(await sha256Of(join(dir, 'RECOVERYXLOG'))).toBe(await sha256Of(cluster.walFile(seg)));
  });

  it('a stored segment with one plain byte flipped (still valid zstd frames) is refused by name: get-wal stops recovery, restore writes nothing; the intact copy serves again', async () => {
    const path = receiver.walPath('main', seg);
    const intact = readFileSync(path);
    const segment = readFileSync(cluster.walFile(seg));
    const altered = Buffer.from(segment);
    altered[5 * CHUNK_SIZE + 99] = altered[5 * CHUNK_SIZE + 99]! ^ 0x01;
    writeFileSync(path, Buffer.concat(await frames(altered)));
    const named = new RegExp(`${seg} in the catalog of main is damaged: its bytes do not match the checksum recorded when it was stored`);
    const parent = makeTempDir('wal-frames-damaged', 'postgres', 0o755);
    try {
      for (const [label, conf] of [['no fetch-ahead', noPrefetch], ['fetch-ahead', agentConf]] as const) {
        const dir = makeDir(join(parent, label.replace(/\W/g, '-')), 'postgres', 0o700);
        const fetched = await runAgent(['get-wal', '-c', conf, seg, join(dir, 'RECOVERYXLOG')]);
        // an exit code that makes PostgreSQL stop recovery, not take the segment for the end of WAL
        expect(fetched.code, `${label}: ${describeRun(fetched)}`).toBe(128);
        expect(fetched.stderr).toMatch(named);
        // the receiver, told, read its copy back and said so
        expect(fetched.stderr).toMatch(/checksum differs\), and the receiver found the same reading its copy back; refusing it$/m);
        expect(fetched.stderr).toMatch(new RegExp(`^HINT: .*barman-agent push <pg_wal>/${seg}`, 'm'));
        expect(listDir(dir)).toEqual([]);
      }
      const dest = makeDir(join(parent, 'pgdata'), 'postgres', 0o700);
      const restored = await runAgent(['restore', '-c', agentConf, backupId, dest]);
      expectFailure(restored, 1, named);
      expect(restored.stderr).toMatch(/and the receiver found the same reading its copy back/);
      expect(listDir(dest)).toEqual([]);
      // the backup host hears of it: the agent said what it refused, and the receiver found its copy damaged
      const damaged = () => walLog(receiver, seg, /^the agent refused .*, and its copy in the catalog is damaged/);
      await waitFor('the receiver to log the damaged copy', () => damaged().length >= 3, { timeoutMs: 15_000 });
      expect(damaged()[0]).toMatchObject({ level: 50, msg: `the agent refused ${seg}, and its copy in the catalog is damaged: its bytes hash to ${sha256OfBytes(altered).slice(0, 12)}…, not to the ${receiver.walChecksum('main', seg)!.slice(0, 12)}… recorded when it was stored` });
      expect(damaged()[0]!.hint).toMatch(new RegExp(`barman-agent push <pg_wal>/${seg}`));
      expect(damaged()[0]!.agent).toMatch(/checksum differs/);
      // each one counted (a report may still be on its way: the count and the log agree once it is in)
      const counted = async () => sampleValue(await scrapeMetrics(receiver.httpUrl), 'barman_refused_files_total', { server: 'main', file: 'wal', found: 'damaged' });
      await waitFor('the count of damaged copies found to match the log', async () => (await counted()) === damaged().length, { timeoutMs: 15_000 });
    } finally {
      writeFileSync(path, intact);
    }
    const dir = makeDir(join(parent, 'repaired'), 'postgres', 0o700);
    expectSuccess(await runAgent(['get-wal', '-c', noPrefetch, seg, join(dir, 'RECOVERYXLOG')]));
    expect(await sha256Of(join(dir, 'RECOVERYXLOG'))).toBe(await sha256Of(cluster.walFile(seg)));
  });
});

