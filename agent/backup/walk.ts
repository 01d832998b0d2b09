// Which files make a base backup: the data directory and every tablespace, less what PostgreSQL
// itself leaves out of one (replication/basebackup.c): WAL, temporary and runtime state that
// recovery recreates. Paths are relative to the data directory, tablespace files under
// pg_tblspc/<oid>/, exactly as they appear in backup_manifest.

import { promises as fs } from 'node:fs';
import { join } from 'node:path';

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
}

function skipFile(rel: string, name: string): boolean {
  if (!rel.includes('/') && SKIP_FILES.has(name)) return true;
  return name === 'pg_internal.init' || name.startsWith('pgsql_tmp');
}

/**
 * Lists the backup's files. pg_tblspc/<oid> entries are followed into the tablespace's location;
 * `pg_wal` keeps its directories (archive_status, and summaries from PostgreSQL 17) and no file. global/pg_control comes last,
 * as pg_basebackup sends it.
 */
export async function walkDataDirectory(pgdata: string): Promise<WalkResult> {
  const files: BackupFileEntry[] = [];
  const directories: string[] = [];
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
      let isFile = entry.isFile();
      if (entry.isSymbolicLink()) {
        // pg_tblspc/<oid> and a relocated pg_wal are symlinks: follow them
        const st = await fs.stat(childAbs).catch(() => undefined);
        if (!st) continue;
        isDir = st.isDirectory();
        isFile = st.isFile();
      }
      if (isDir) {
        if (entry.name.startsWith('pgsql_tmp')) continue;
        directories.push(childRel);
        if (SKIP_CONTENTS.has(childRel)) {
          // pg_wal keeps its folders (archive_status; summaries from PostgreSQL 17), empty
          if (childRel === 'pg_wal') directories.push(...(await subdirectories(childAbs)).map((d) => `pg_wal/${d}`));
          continue;
        }
        await walk(childAbs, childRel);
      } else if (isFile && !skipFile(childRel, entry.name)) {
        const st = await fs.stat(childAbs).catch(() => undefined);
        if (st) files.push({ path: childRel, absolute: childAbs, size: st.size, mtime: Math.floor(st.mtimeMs / 1000) });
      }
    }
  };
  await walk(pgdata, '');
  const control = files.findIndex((f) => f.path === 'global/pg_control');
  if (control >= 0) files.push(...files.splice(control, 1));
  return { files, directories };
}

/** The names of the folders directly inside `dir` (none when it is gone). */
async function subdirectories(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir, { withFileTypes: true }).catch(() => []);
  return entries.filter((e) => e.isDirectory()).map((e) => e.name).sort();
}
