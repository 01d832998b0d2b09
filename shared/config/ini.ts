// Reading INI files into typed, validated objects. Every complaint names the file, the section,
// the key and what is expected; secret values never appear in a message.

import { closeSync, fstatSync, openSync, readFileSync } from 'node:fs';
import { homedir, userInfo } from 'node:os';
import { join } from 'node:path';
import { parse } from 'ini';
import { BarmanError, ErrorCode } from '../errors';

export type IniSection = Record<string, string>;
export type IniDocument = Map<string, IniSection>;

export interface ConfigSource {
  file: string;
  doc: IniDocument;
}

export function configError(file: string, section: string | undefined, key: string | undefined, message: string, hint: string): BarmanError {
  const where = [file, section === undefined ? undefined : `[${section}]`, key].filter(Boolean).join(' ');
  return new BarmanError(ErrorCode.CONFIG_INVALID, `${where}: ${message}`, hint);
}

/** Picks the config file: explicit flag, then the environment variable, then ~/name, then /etc/name. */
export function locateConfig(explicit: string | undefined, envVar: string, fileName: string, exists: (p: string) => boolean): string {
  if (explicit) return explicit;
  const fromEnv = process.env[envVar];
  if (fromEnv) return fromEnv;
  const candidates = [join(homedir(), `.${fileName}`), join('/etc', fileName)];
  const found = candidates.find(exists);
  if (!found) {
    throw new BarmanError(ErrorCode.CONFIG_INVALID, `no configuration file found (looked at ${candidates.join(', ')})`, `Pass -c FILE or set $${envVar}; config/ in the source tree has a commented example.`);
  }
  return found;
}

export function readIni(file: string): ConfigSource {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new BarmanError(ErrorCode.CONFIG_INVALID, `${file}: cannot read configuration file (${code ?? String(err)})`, 'Check the path given with -c (or the environment variable) and that this user may read it.', { cause: err });
  }
  const raw = parse(text) as Record<string, unknown>;
  const doc: IniDocument = new Map();
  for (const [section, body] of Object.entries(raw)) {
    if (body === null || typeof body !== 'object') {
      throw configError(file, undefined, section, 'key outside any section', 'Put every key below a [section] header.');
    }
    const out: IniSection = {};
    for (const [key, value] of Object.entries(body as Record<string, unknown>)) {
      if (value !== null && typeof value === 'object') {
        throw configError(file, `${section}.${key}`, undefined, 'section names may not contain dots', 'Use letters, digits, "_" and "-" in section names.');
      }
      out[key] = String(value).trim();
    }
    doc.set(section, out);
  }
  return { file, doc };
}

/** Typed access to one section that remembers which keys were used, so unknown ones are errors. */
export class SectionReader {
  private readonly used = new Set<string>();
  constructor(readonly file: string, readonly section: string, private readonly values: IniSection) {}

  has(key: string): boolean {
    return Object.hasOwn(this.values, key) && this.values[key] !== '';
  }

  string(key: string, fallback?: string): string | undefined {
    this.used.add(key);
    return this.has(key) ? this.values[key] : fallback;
  }

  required(key: string, what: string): string {
    const v = this.string(key);
    if (v === undefined) throw configError(this.file, this.section, key, `missing required key (${what})`, `Add "${key} = ..." to the [${this.section}] section.`);
    return v;
  }

  oneOf<T extends string>(key: string, allowed: readonly T[], fallback: T): T {
    const v = this.string(key);
    if (v === undefined) return fallback;
    const lower = v.toLowerCase();
    const hit = allowed.find((a) => a === lower);
    if (!hit) throw configError(this.file, this.section, key, `"${v}" is not valid; expected one of ${allowed.join(', ')}`, `Set ${key} to one of: ${allowed.join(', ')}.`);
    return hit;
  }

  bool(key: string, fallback: boolean): boolean {
    const v = this.string(key);
    if (v === undefined) return fallback;
    const lower = v.toLowerCase();
    if (['on', 'true', 'yes', '1'].includes(lower)) return true;
    if (['off', 'false', 'no', '0'].includes(lower)) return false;
    throw configError(this.file, this.section, key, `"${v}" is not a boolean`, `Use on or off.`);
  }

  integer(key: string, fallback: number, min = 0): number {
    const v = this.string(key);
    if (v === undefined) return fallback;
    if (!/^\d+$/.test(v) || Number(v) < min) throw configError(this.file, this.section, key, `"${v}" is not a whole number >= ${min}`, `Set ${key} to a whole number.`);
    return Number(v);
  }

  /** A secret from `<prefix>_file` (wins) or `<prefix>`; the value is never echoed. */
  secret(prefix: string): string {
    const fileKey = `${prefix}_file`;
    const path = this.string(fileKey);
    const inline = this.string(prefix);
    if (path !== undefined) {
      const secret = this.readSecretFile(fileKey, path).trim();
      if (secret.length < 16) throw configError(this.file, this.section, fileKey, `the secret in ${path} is shorter than 16 characters`, 'Generate one with: openssl rand -hex 32 > FILE');
      return secret;
    }
    if (inline !== undefined) {
      if (inline.length < 16) throw configError(this.file, this.section, prefix, 'the secret is shorter than 16 characters', 'Generate one with: openssl rand -hex 32');
      return inline;
    }
    throw configError(this.file, this.section, fileKey, `missing required key (the shared secret)`, `Add "${fileKey} = /path/to/secret" to the [${this.section}] section.`);
  }

  /**
   * Reads a secret file the way ssh reads a private key: refused when others may read or write it
   * (group or other bits) or when it belongs to someone other than this user or root, who could
   * then swap the secret. Checked on the open file, so the file checked is the file read.
   */
  private readSecretFile(fileKey: string, path: string): string {
    let fd: number | undefined;
    try {
      fd = openSync(path, 'r');
      const st = fstatSync(fd);
      const uid = process.getuid?.();
      if (st.isDirectory()) throw Object.assign(new Error(`${path} is a directory`), { code: 'EISDIR' });
      if (!st.isFile()) throw configError(this.file, this.section, fileKey, `${path} is not a regular file`, 'Point it at a file holding the secret alone.');
      if ((st.mode & 0o077) !== 0) {
        const mode = (st.mode & 0o777).toString(8).padStart(4, '0');
        throw configError(this.file, this.section, fileKey, `${path} has mode ${mode}: the secret must not be readable by other users`, `Run chmod 600 ${path} (a secret others may read is refused, as ssh refuses such a private key).`);
      }
      if (uid !== undefined && st.uid !== uid && st.uid !== 0) {
        throw configError(this.file, this.section, fileKey, `${path} belongs to uid ${st.uid}, not to this user (uid ${uid}) or root`, `As root: chown ${userName(uid)} ${path} (the user that runs this program), then chmod 600 ${path}.`);
      }
      return readFileSync(fd, 'utf8');
    } catch (err) {
      if (err instanceof BarmanError) throw err;
      throw configError(this.file, this.section, fileKey, `cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})`, 'Check that the file exists and that this user may read it (mode 0600, owned by the service user).');
    } finally {
      if (fd !== undefined) closeSync(fd);
    }
  }

  /** Call after reading every key: any key not read is unknown. */
  finish(): void {
    for (const key of Object.keys(this.values)) {
      if (!this.used.has(key)) {
        throw configError(this.file, this.section, key, 'unknown key', `Remove it or check its spelling; the commented example in config/ lists every key.`);
      }
    }
  }
}

function userName(uid: number): string {
  try {
    return userInfo().username;
  } catch {
    return String(uid);
  }
}

export const SERVER_NAME = /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/;
