// The receiver's WAL stream on a real catalog (posix driver, temp dir): an append still writing
// when its connection goes (close) or when the daemon comes back (open) is finished first, and
// nothing is written after a close.

import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { ServerCatalog } from '../../../../receiver/catalog/catalog';
import { WalStream } from '../../../../receiver/catalog/streaming';
import { WalArchive } from '../../../../receiver/catalog/wal-archive';
import { PosixDriver } from '../../../../receiver/storage/posix-driver';
import { Storage } from '../../../../receiver/storage/storage';
import { ErrorCode } from '../../../../shared/errors';
import { formatLsn } from '../../../../shared/wal/lsn';

const SEGMENT = 1 << 20;
const SYSID = '7000000000000000001';
/** the start of segment 0x10 of timeline 1 */
const START = 16n * BigInt(SEGMENT);
const WAL_END = START + 16n * BigInt(SEGMENT);
/** three segments and a bit: the append crosses segments, each one a file to open, fsync and close */
const DATA = Buffer.alloc(3 * SEGMENT + 12345, 0x5a);

const homes: string[] = [];
afterAll(() => {
  for (const home of homes) rmSync(home, { recursive: true, force: true });
});

async function openStream(): Promise<{ stream: WalStream; partials: () => Record<string, number> }> {
  const home = mkdtempSync(join(tmpdir(), 'barman-stream-'));
  homes.push(home);
  const catalog = new ServerCatalog(new Storage(new PosixDriver(home)), home, 'main', 'zstd');
  const stream = new WalStream(catalog, pino({ level: 'silent' }), new WalArchive(catalog));
  expect(await stream.open(1, SYSID, SEGMENT, WAL_END)).toBeUndefined();
  // the first bytes, so that the append below starts inside a segment that is open already
  await stream.append(1, START, WAL_END, DATA.subarray(0, 1000));
  const dir = join(home, 'main', 'streaming');
  const partials = () => Object.fromEntries(readdirSync(dir).map((f) => [f, statSync(join(dir, f)).size]));
  return { stream, partials };
}

describe('WalStream', () => {
  it('finishes the append in progress before it closes, and writes nothing after', async () => {
    const { stream, partials } = await openStream();
    let appended = false;
    const appending = stream.append(1, START + 1000n, WAL_END, DATA.subarray(1000)).then(() => {
      appended = true;
    });
    await stream.close();
    expect(appended).toBe(true);
    const atClose = partials();
    expect(stream.state()).toMatchObject({ state: 'stopped', receivedLsn: formatLsn(START + BigInt(DATA.length)), flushLsn: formatLsn(START + BigInt(DATA.length)) });
    await appending;
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(partials()).toEqual(atClose);
    expect(stream.state()).toMatchObject({ state: 'stopped', receivedLsn: formatLsn(START + BigInt(DATA.length)) });
  });

  it('refuses an append after the close', async () => {
    const { stream } = await openStream();
    await stream.close();
    await expect(stream.append(1, START + 1000n, WAL_END, DATA.subarray(1000, 2000))).rejects.toMatchObject({ code: ErrorCode.PROTOCOL });
    expect(stream.state()).toMatchObject({ state: 'stopped', receivedLsn: formatLsn(START + 1000n) });
  });

  it('resumes a stream opened while the last one still wrote after all of that one\'s bytes', async () => {
    const { stream } = await openStream();
    const appending = stream.append(1, START + 1000n, WAL_END, DATA.subarray(1000));
    // the daemon came back on a new connection before the old one's last frame was written
    const resume = await stream.open(1, SYSID, SEGMENT, WAL_END);
    await appending;
    expect(resume).toBe(START + BigInt(DATA.length));
    expect(stream.state()).toMatchObject({ state: 'streaming', receivedLsn: formatLsn(START + BigInt(DATA.length)) });
  });
});
