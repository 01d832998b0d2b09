// The agent's record of what the receiver has durably acknowledged: spool_dir/acked/<name>
// holds the SHA-256 the receiver confirmed. The daemon writes it (after the receiver's fsync
// and checksum match), `push` reads it to answer PostgreSQL without sending the file again.

import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { makeDirs } from '../../shared/dirs';
import { BarmanError, ErrorCode } from '../../shared/errors';

export class AckSpool {
  readonly dir: string;

  constructor(spoolDir: string) {
    this.dir = join(spoolDir, 'acked');
  }

  async ensure(): Promise<void> {
    try {
      await makeDirs(this.dir, 0o700);
    } catch (err) {
      throw new BarmanError(ErrorCode.LOCAL_FILE, `cannot create ${this.dir} (${(err as NodeJS.ErrnoException).code})`, 'Set spool_dir = in the agent configuration to a directory the postgres user may write.');
    }
  }

  /** Durable: written under a temporary name, fsynced, renamed, directory fsynced. */
  async record(name: string, sha256: string): Promise<void> {
    const path = join(this.dir, name);
    const tmp = `${path}.tmp`;
    const fh = await fs.open(tmp, 'w', 0o600);
    try {
      await fh.writeFile(`${sha256}\n`);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fs.rename(tmp, path);
    const dir = await fs.open(this.dir, 'r');
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }

  async lookup(name: string): Promise<string | undefined> {
    try {
      return (await fs.readFile(join(this.dir, name), 'utf8')).trim();
    } catch {
      return undefined;
    }
  }

  async remove(name: string): Promise<void> {
    await fs.rm(join(this.dir, name), { force: true });
  }

  async list(): Promise<string[]> {
    return (await fs.readdir(this.dir).catch(() => [] as string[])).filter((n) => !n.endsWith('.tmp'));
  }
}
