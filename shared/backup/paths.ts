// What a path inside a backup may be. The agent names every file, directory and symlink of a
// backup, and the agent may be compromised: the receiver checks these rules when a backup
// arrives, and the recovery writer checks them again before it writes a byte (on the backup host
// and on a database host restoring), so a name can never lead outside the data directory.

import { normalize, sep } from 'node:path';
import { BarmanError, ErrorCode } from '../errors';
import { RECOVERY_WAL_DIR } from '../recovery/plan';

/** A symbolic link of the data directory, kept as a link (never followed into): path inside the backup, and where it points. */
export interface BackupSymlink {
  path: string;
  target: string;
}

/** the longest path or link target a backup may name (PostgreSQL's MAXPGPATH) */
export const MAX_BACKUP_PATH = 1024;

/**
 * Names recovery writes itself into a data directory (or that a backup carries apart from its
 * files): a symlink of the backup may not take their place, or writing them would follow it.
 */
const RECOVERY_NAMES: ReadonlySet<string> = new Set([
  RECOVERY_WAL_DIR, 'backup_manifest', 'backup_label', 'tablespace_map', 'postgresql.auto.conf', 'recovery.signal', 'standby.signal',
]);

function invalid(what: string, path: string, hint = 'Agent and receiver must run compatible versions; paths are relative to the data directory.'): BarmanError {
  return new BarmanError(ErrorCode.INVALID_NAME, `"${path.slice(0, 100)}" is not a valid ${what} inside a backup`, hint);
}

/** the filesystem's limit for one name (NAME_MAX) */
const MAX_NAME_BYTES = 255;

/** A relative path inside a backup: no absolute paths, no `..`, no empty, odd or overlong components. */
export function safeRelativePath(path: string): string {
  if (!path || path.includes('\0') || path.startsWith('/') || path.includes('\\')) throw invalid('path', path);
  const parts = path.split('/');
  if (parts.some((p) => p === '' || p === '.' || p === '..')) throw invalid('path', path);
  if (Buffer.byteLength(path) > MAX_BACKUP_PATH || parts.some((p) => Buffer.byteLength(p) > MAX_NAME_BYTES)) {
    throw new BarmanError(ErrorCode.INVALID_NAME, `"${path.slice(0, 100)}${path.length > 100 ? '…' : ''}" is too long for a path inside a backup (${MAX_NAME_BYTES} bytes per name, ${MAX_BACKUP_PATH} in all)`, 'PostgreSQL never names files like this; remove the file from the data directory, or check what sends backups to this receiver.');
  }
  const norm = normalize(path);
  if (norm !== path || norm.startsWith('..' + sep)) throw invalid('path', path);
  if (path === 'backup_label' || path === 'backup_manifest') throw invalid('path', path);
  return path;
}

/** A path inside a backup that may be read back: the data files and backup_label. */
export function readableBackupPath(path: string): string {
  return path === 'backup_label' ? path : safeRelativePath(path);
}

/**
 * The backup's symlinks, checked against its files and directories: each at a safe relative
 * path, with a bounded target, at most once, and never where a file or directory of the backup
 * is or lies below (a link named `base` would send every file of base/ through it).
 */
export function checkSymlinks(symlinks: readonly BackupSymlink[], files: Iterable<string>, directories: Iterable<string>): void {
  const taken = new Set<string>([...files, ...directories]);
  const links = new Set<string>();
  for (const link of symlinks) {
    safeRelativePath(link.path);
    if (RECOVERY_NAMES.has(link.path) || link.path.startsWith(`${RECOVERY_WAL_DIR}/`)) throw invalid('symlink', link.path, 'Recovery writes this name itself; remove the link from the data directory and take a new backup.');
    // no control characters: targets are printed by show-backup, and a terminal obeys escapes
    if (!link.target || link.target.length > MAX_BACKUP_PATH || /[\x00-\x1f\x7f]/.test(link.target)) {
      throw new BarmanError(ErrorCode.INVALID_NAME, `symlink "${link.path.slice(0, 100)}" has an empty, overlong (over ${MAX_BACKUP_PATH} bytes) or malformed target (control characters)`, 'Remove or fix the link in the data directory and take a new backup.');
    }
    if (links.has(link.path) || taken.has(link.path)) throw invalid('symlink', link.path, 'The backup names this path twice (as a link and as a file, directory or another link); take a new backup.');
    links.add(link.path);
  }
  // a link may not be the parent of anything else the backup holds
  for (const path of [...taken, ...links]) {
    for (let i = path.indexOf('/'); i > 0; i = path.indexOf('/', i + 1)) {
      if (links.has(path.slice(0, i))) throw invalid('symlink', path.slice(0, i), `The backup has "${path.slice(0, 100)}" below this link; take a new backup.`);
    }
  }
}
