// The receiver's configuration (docs/configuration.md): one [barman] section for the service, one section per
// PostgreSQL server. Parsed and validated once, into ReceiverConfig.

import { existsSync, readFileSync } from 'node:fs';
import { isAbsolute } from 'node:path';
import { parse } from 'ini';
import { configError, locateConfig, readIni, SectionReader, SERVER_NAME } from './ini';
import { readHousekeepingInterval, readServerOperations, readThresholds, type ServerOperations } from './operations';
import { parseRetentionPolicy, type RetentionPolicy } from './retention';

export const COMPRESSIONS = ['none', 'gzip', 'lz4', 'zstd'] as const;
export type Compression = (typeof COMPRESSIONS)[number];
/** backup_checksum: the algorithm of each file's checksum in a new backup's backup_manifest */
export const BACKUP_CHECKSUMS = ['crc32c', 'sha256'] as const;
export type BackupChecksum = (typeof BACKUP_CHECKSUMS)[number];
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export const STORAGE_KINDS = ['posix', 's3'] as const;

/** Where the catalog lives. With s3 the credentials are read here, once; never log or print them. */
export type StorageConfig =
  | { kind: 'posix' }
  | {
      kind: 's3';
      /** absent: AWS's own endpoint for the region */
      endpoint: string | undefined;
      bucket: string;
      region: string;
      /** empty, or ending in '/': keys are <prefix><server>/... */
      prefix: string;
      forcePathStyle: boolean;
      /** absent: the AWS SDK's default chain (environment, ~/.aws) */
      credentials: { accessKeyId: string; secretAccessKey: string } | undefined;
      /** PEM text of s3_ca_file */
      ca: string | undefined;
    };

const S3_KEYS = ['s3_endpoint', 's3_bucket', 's3_region', 's3_prefix', 's3_force_path_style', 's3_credentials_file', 's3_ca_file'] as const;

/** The storage keys of [barman] (SPEC §2): `storage = posix | s3` and, with s3, the s3_* keys. */
export function parseStorageConfig(r: SectionReader): StorageConfig {
  const kind = r.oneOf('storage', STORAGE_KINDS, 'posix');
  if (kind === 'posix') {
    const stray = S3_KEYS.find((k) => r.has(k));
    if (stray) throw configError(r.file, r.section, stray, 'is only used with storage = s3', 'Set storage = s3 to keep the catalog in a bucket, or remove the s3_* keys.');
    for (const k of S3_KEYS) r.string(k);
    return { kind };
  }
  const endpoint = r.string('s3_endpoint');
  if (endpoint !== undefined && !/^https?:\/\/[^/\s]+\/?$/.test(endpoint)) {
    throw configError(r.file, r.section, 's3_endpoint', `"${endpoint}" is not an http(s)://host[:port] URL`, 'Use for example s3_endpoint = https://s3.example.com (the bucket goes in s3_bucket).');
  }
  const bucket = r.required('s3_bucket', 'the bucket that holds the catalog');
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
    throw configError(r.file, r.section, 's3_bucket', `"${bucket}" is not a valid bucket name`, 'Bucket names are 3 to 63 lower-case letters, digits, "." and "-".');
  }
  const region = r.string('s3_region', 'us-east-1')!;
  let prefix = r.string('s3_prefix', '')!.replace(/^\/+/, '');
  if (prefix !== '' && !prefix.endsWith('/')) prefix += '/';
  if (prefix !== '' && !/^([A-Za-z0-9_][A-Za-z0-9._-]*\/)+$/.test(prefix)) {
    throw configError(r.file, r.section, 's3_prefix', `"${prefix}" is not a usable prefix`, 'Use folder names of letters, digits, ".", "_" and "-" separated by "/", e.g. s3_prefix = prod/barman/');
  }
  const forcePathStyle = r.bool('s3_force_path_style', true);
  const credentialsFile = r.string('s3_credentials_file');
  const credentials = credentialsFile === undefined ? undefined : readS3Credentials(r.file, r.section, credentialsFile);
  const caFile = r.string('s3_ca_file');
  let ca: string | undefined;
  if (caFile !== undefined) {
    try {
      ca = readFileSync(caFile, 'utf8');
    } catch (err) {
      throw configError(r.file, r.section, 's3_ca_file', `cannot read ${caFile} (${(err as NodeJS.ErrnoException).code ?? 'error'})`, 'Point s3_ca_file at the PEM file of the CA that signed the endpoint\'s certificate.');
    }
    if (!ca.includes('-----BEGIN CERTIFICATE-----')) throw configError(r.file, r.section, 's3_ca_file', `${caFile} holds no PEM certificate`, 'Use the CA certificate in PEM format (-----BEGIN CERTIFICATE-----).');
  }
  return { kind, endpoint: endpoint?.replace(/\/$/, ''), bucket, region, prefix, forcePathStyle, credentials, ca };
}

/** The AWS shared-credentials format: [default] with aws_access_key_id and aws_secret_access_key. */
function readS3Credentials(file: string, section: string, path: string): { accessKeyId: string; secretAccessKey: string } {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw configError(file, section, 's3_credentials_file', `cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})`, 'Check that the file exists and that this user may read it (mode 0600, owned by the service user).');
  }
  const profile = (parse(text) as Record<string, unknown>).default as Record<string, unknown> | undefined;
  const value = (k: string) => (profile && typeof profile[k] === 'string' ? (profile[k] as string).trim() : '');
  const accessKeyId = value('aws_access_key_id');
  const secretAccessKey = value('aws_secret_access_key');
  if (!accessKeyId || !secretAccessKey) {
    throw configError(file, section, 's3_credentials_file', `${path} has no [default] section with aws_access_key_id and aws_secret_access_key`, 'Write it in the AWS shared-credentials format:  [default]  aws_access_key_id = ...  aws_secret_access_key = ...');
  }
  return { accessKeyId, secretAccessKey };
}

/** ServerOperations: drill keys and check thresholds (shared/config/operations.ts), all optional. */
export interface ServerConfig extends ServerOperations {
  name: string;
  description: string;
  /** the shared secret; never log or print it */
  token: string;
  retentionPolicy: RetentionPolicy | undefined;
  minimumRedundancy: number;
  /** how its WAL and backup files are stored from now on: its own `compression`, else [barman]'s */
  compression: Compression;
  /** the checksum algorithm of the files of its new backups: its own `backup_checksum`, else [barman]'s */
  backupChecksum: BackupChecksum;
}

export interface ReceiverConfig {
  file: string;
  barmanHome: string;
  listen: { host: string; port: number };
  tls: { cert: string; key: string } | undefined;
  logLevel: LogLevel;
  compression: Compression;
  backupChecksum: BackupChecksum;
  /** seconds an upload may go without data before it is aborted; also how long a session must be silent before it may be closed to make room */
  timeoutSeconds: number;
  storage: StorageConfig;
  servers: Map<string, ServerConfig>;
  /** where GET /metrics and /healthz are served when not on `listen` */
  metricsListen?: { host: string; port: number };
  /** seconds between two housekeeping runs of serve (retention, stale temporary files, scheduled drills) */
  housekeepingIntervalSeconds: number;
}

export function parseListen(file: string, text: string, key = 'listen'): { host: string; port: number } {
  const m = /^(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[2]) : NaN;
  if (!m || port > 65535) throw configError(file, 'barman', key, `"${text}" is not host:port`, `Use for example ${key} = 127.0.0.1:${key === 'listen' ? 7480 : 9187} (port 0 picks a free one).`);
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port };
}

export function loadReceiverConfig(explicit?: string): ReceiverConfig {
  const file = locateConfig(explicit, 'BARMAN_CONFIG', 'barman.conf', existsSync);
  const { doc } = readIni(file);
  const main = doc.get('barman');
  if (!main) throw configError(file, 'barman', undefined, 'missing section', 'Add a [barman] section with at least barman_home.');
  const r = new SectionReader(file, 'barman', main);
  const barmanHome = r.string('barman_home', '/srv/barman')!;
  if (!isAbsolute(barmanHome)) throw configError(file, 'barman', 'barman_home', `"${barmanHome}" is not an absolute path`, 'Use an absolute directory, e.g. /srv/barman.');
  const listen = parseListen(file, r.string('listen', '127.0.0.1:7480')!);
  const cert = r.string('tls_cert');
  const key = r.string('tls_key');
  if ((cert === undefined) !== (key === undefined)) {
    throw configError(file, 'barman', cert === undefined ? 'tls_cert' : 'tls_key', 'tls_cert and tls_key go together', 'Set both (for wss://) or neither (for ws://).');
  }
  const logLevel = r.oneOf('log_level', LOG_LEVELS, 'info');
  const compression = r.oneOf('compression', COMPRESSIONS, 'zstd');
  const backupChecksum = r.oneOf('backup_checksum', BACKUP_CHECKSUMS, 'crc32c');
  const timeoutSeconds = r.integer('timeout', 30, 1);
  const storage = parseStorageConfig(r);
  // running it for years: metrics, housekeeping, check thresholds (defaults for every server)
  const metricsText = r.string('metrics_listen');
  const metricsListen = metricsText === undefined ? undefined : parseListen(file, metricsText, 'metrics_listen');
  const housekeepingIntervalSeconds = readHousekeepingInterval(r);
  const thresholds = readThresholds(r);
  r.finish();

  const servers = new Map<string, ServerConfig>();
  for (const [name, values] of doc) {
    if (name === 'barman') continue;
    if (!SERVER_NAME.test(name)) throw configError(file, name, undefined, 'server names use letters, digits, "_" and "-" (at most 63)', 'Rename the section.');
    const s = new SectionReader(file, name, values);
    const description = s.string('description', name)!;
    const token = s.secret('token');
    const policyText = s.string('retention_policy');
    const retentionPolicy = policyText === undefined ? undefined : parseRetentionPolicy(policyText);
    if (policyText !== undefined && !retentionPolicy) {
      throw configError(file, name, 'retention_policy', `"${policyText}" is not a retention policy`, 'Use REDUNDANCY N or RECOVERY WINDOW OF N DAYS|WEEKS|MONTHS.');
    }
    const minimumRedundancy = s.integer('minimum_redundancy', 0);
    const serverCompression = s.oneOf('compression', COMPRESSIONS, compression);
    const serverChecksum = s.oneOf('backup_checksum', BACKUP_CHECKSUMS, backupChecksum);
    const operations = readServerOperations(s, thresholds);
    s.finish();
    servers.set(name, { name, description, token, retentionPolicy, minimumRedundancy, compression: serverCompression, backupChecksum: serverChecksum, ...operations });
  }
  return { file, barmanHome, listen, tls: cert && key ? { cert, key } : undefined, logLevel, compression, backupChecksum, timeoutSeconds, storage, servers, metricsListen, housekeepingIntervalSeconds };
}
