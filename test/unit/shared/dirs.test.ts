import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { makeDirs } from '../../../shared/dirs';

const root = mkdtempSync(join(tmpdir(), 'barman-unit-dirs-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('makeDirs (mkdir -p)', () => {
  it('creates every missing level with the mode asked for, and says which it created', async () => {
    const path = join(root, 'a', 'b', 'c');
    expect(await makeDirs(path, 0o750)).toEqual([join(root, 'a'), join(root, 'a', 'b'), path]);
    expect(statSync(path).mode & 0o777).toBe(0o750 & ~process.umask());
    expect(await makeDirs(path)).toEqual([]);
    expect(await makeDirs(join(root, 'a', 'b', 'd'))).toEqual([join(root, 'a', 'b', 'd')]);
  });

  it('ends with ENOENT where the kernel will not create a directory (/proc), instead of looping like fs.mkdir recursive', async () => {
    await expect(makeDirs('/proc/nope/x')).rejects.toMatchObject({ code: 'ENOENT' });
    expect(existsSync('/proc/nope')).toBe(false);
  });

  it('ends with ENOTDIR when a file stands where a directory is needed', async () => {
    writeFileSync(join(root, 'file'), 'x');
    await expect(makeDirs(join(root, 'file', 'sub', 'dir'))).rejects.toMatchObject({ code: 'ENOTDIR' });
    await expect(makeDirs(join(root, 'file'))).rejects.toMatchObject({ code: 'ENOTDIR' });
  });

  it('ends with ENAMETOOLONG for a name longer than the filesystem takes', async () => {
    await expect(makeDirs(join(root, 'n'.repeat(300), 'x'))).rejects.toMatchObject({ code: 'ENAMETOOLONG' });
  });
});
