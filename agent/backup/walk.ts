// Which files make a base backup: the data directory and every tablespace, less what PostgreSQL
// itself leaves out of one (replication/basebackup.c): WAL, temporary and runtime state that
// recovery recreates. Paths are relative to the data directory, tablespace files under
// pg_tblspc/<oid>/, exactly as they appear in backup_manifest.
//
// Symbolic links are kept as links, never followed: only pg_tblspc/<oid> is followed (a
// tablespace), and a linked pg_wal or pg_stat_tmp becomes the empty directory pg_basebackup
// makes of it. A link to /etc/hostname is backed up as that link, not as the host's file, and a
// link loop costs one entry, not a copy of the tree per turn.

import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import type { BackupSymlink } from '../../shared/backup/paths';

/** Directories whose contents are skipped (the directory itself is kept). */
const SKIP_CONTENTS = new Set(['pg_stat_tmp', 'pg_replslot', 'pg_dynshmem', 'pg_notify', 'pg_serial', 'pg_snapshots', 'pg_subtrans', 'pg_wal']);
/** Files never copied, at the top level. */
const SKIP_FILES = new Set([
  'postmaster.pid', 'postmaster.opts', 'backup_label', 'backup_label.old', 'tablespace_map', 'tablespace_map.old',
  'backup_manifest', 'backup_manifest.tmp', 'postgresql.auto.conf.tmp', 'current_logfiles.tmp', 'recovery.signal', 'standby.signal',
]);

export interface BackupFileEntry {
  /** relative path as in backup_manifest */
  path: string;
  absolute: string;
  size: number;
  mtime: number;
}

export interface WalkResult {
  files: BackupFileEntry[];
  directories: string[];
  symlinks: BackupSymlink[];
}

function skipFile(rel: string, name: string): boolean {
  if (!rel.includes('/') && SKIP_FILES.has(name)) return true;
  return name === 'pg_internal.init' || name.startsWith('pgsql_tmp');
}

/**
 * Lists the backup's files, in the order they are sent: the largest first, and global/pg_control
 * last, as pg_basebackup sends it. pg_tblspc/<oid> entries are followed into the tablespace's
 * location; `pg_wal` keeps PostgreSQL's folders in it (archive_status; summaries from PostgreSQL
 * 17) and no file.
 */
export async function walkDataDirectory(pgdata: string): Promise<WalkResult> {
  const files: BackupFileEntry[] = [];
  const directories: string[] = [];
  const symlinks: BackupSymlink[] = [];
  const walk = async (abs: string, rel: string): Promise<void> => {
    let entries;
    try {
      entries = await fs.readdir(abs, { withFileTypes: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return; // dropped while we walked
      throw err;
    }
    for (const entry of entries) {
      const childAbs = join(abs, entry.name);
      const childRel = rel ? `${rel}/${entry.name}` : entry.name;
      let isDir = entry.isDirectory();
      const isFile = entry.isFile();
      if (entry.isSymbolicLink()) {
        if (entry.name.startsWith('pgsql_tmp') || skipFile(childRel, entry.name)) continue;
        if (rel === 'pg_tblspc' && /^\d+$/.test(entry.name)) {
          // a tablespace: its files are backed up below pg_tblspc/<oid>/
          const st = await fs.stat(childAbs).catch(() => undefined);
          isDir = st?.isDirectory() ?? false;
        } else if (SKIP_CONTENTS.has(childRel)) {
          isDir = true; // pg_wal on another disk: an empty directory, its contents are skipped anyway
        }
        if (!isDir) {
          const target = await fs.readlink(childAbs).catch(() => undefined);
          if (target !== undefined) symlinks.push({ path: childRel, target });
          continue;
        }
      }
      if (isDir) {
        if (entry.name.startsWith('pgsql_tmp')) continue;
        directories.push(childRel);
        if (SKIP_CONTENTS.has(childRel)) {
          if (childRel === 'pg_wal') directories.push(...(await walFolders(childAbs)));
          continue;
        }
        await walk(childAbs, childRel);
      } else if (isFile && !skipFile(childRel, entry.name)) {
        const st = await fs.lstat(childAbs).catch(() => undefined);
        if (st?.isFile()) files.push({ path: childRel, absolute: childAbs, size: st.size, mtime: Math.floor(st.mtimeMs / 1000) });
      }
    }
  };
  await walk(pgdata, '');
  // largest first, as pgBackRest queues its backup jobs: the biggest file is a backup's critical
  // path (one worker reads it), so it starts at once and the small files fill the other workers
  // beside it, wherever readdir happens to list it
  files.sort((a, b) => b.size - a.size);
  const control = files.findIndex((f) => f.path === 'global/pg_control');
  if (control >= 0) files.push(...files.splice(control, 1));
  return { files, directories, symlinks };
}

/**
 * PostgreSQL's own folders in pg_wal, kept empty as pg_basebackup keeps them: archive_status
 * always, summaries (WAL summaries, PostgreSQL 17) where the server has it. Known names only:
 * nothing else below pg_wal is listed.
 */
async function walFolders(pgWal: string): Promise<string[]> {
  const summaries = await fs.stat(join(pgWal, 'summaries')).catch(() => undefined);
  return ['pg_wal/archive_status', ...(summaries?.isDirectory() ? ['pg_wal/summaries'] : [])];
}
