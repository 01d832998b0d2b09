// Direct writes (O_DIRECT) on a real filesystem when the kernel refuses them at write time: the
// file is still written whole, through a second handle without the flag, and direct I/O is off for
// the rest of the process. A file of its own: that switch is process-wide.

import { randomBytes } from 'node:crypto';
import { constants, mkdtempSync, promises as fs, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { DirectOutput, reserveSlabs } from '../../../../shared/recovery/direct-io';

const root = mkdtempSync(join(tmpdir(), 'barman-unit-direct-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const CREATE_DIRECT = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_DIRECT;

it('a write the kernel refuses (memory not aligned) sends the rest of the file through a buffered handle, byte for byte, and no later file is written directly', async () => {
  // the premise: this filesystem refuses an O_DIRECT write from memory at an odd address
  const probe = await fs.open(join(root, 'probe'), CREATE_DIRECT, 0o600);
  const refused = await probe.write(Buffer.alloc(8193).subarray(1), 0, 8192, 0).then(() => false, (err: NodeJS.ErrnoException) => err.code === 'EINVAL');
  await probe.close();
  expect(refused, `${root} must be on a filesystem that checks O_DIRECT alignment (ext4, xfs; not tmpfs)`).toBe(true);

  const slabs = reserveSlabs(4096);
  expect(slabs, 'direct I/O is available before the refusal').toBeDefined();
  const bytes = randomBytes(3 * 1024 * 1024 + 5 * 4096);
  const path = join(root, 'file');
  const fh = await fs.open(path, CREATE_DIRECT, 0o600);
  let written = 0;
  // slabs at odd addresses: every direct write from them is refused
  const out = new DirectOutput(fh, slabs!.map((s) => Buffer.alloc(s.length + 1).subarray(1)), (n) => (written += n));
  for (let off = 0; off < bytes.length; off += 70_001) await out.add(bytes.subarray(off, off + 70_001));
  await out.finish();
  await fh.close();
  expect(readFileSync(path).equals(bytes)).toBe(true);
  expect(written).toBe(bytes.length);
  expect(reserveSlabs(4096)).toBeUndefined();
});
