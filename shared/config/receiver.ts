// The receiver's configuration (docs/configuration.md): one [barman] section for the service, one section per
// PostgreSQL server. Parsed and validated once, into ReceiverConfig.

import { existsSync } from 'node:fs';
import { isAbsolute } from 'node:path';
import { configError, locateConfig, readIni, SectionReader, SERVER_NAME } from './ini';
import { readHousekeepingInterval, readServerOperations, readThresholds, type ServerOperations } from './operations';
import { parseRetentionPolicy, type RetentionPolicy } from './retention';

export const COMPRESSIONS = ['none', 'gzip', 'lz4', 'zstd'] as const;
export type Compression = (typeof COMPRESSIONS)[number];
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** ServerOperations: drill keys and check thresholds (shared/config/operations.ts), all optional. */
export interface ServerConfig extends ServerOperations {
  name: string;
  description: string;
  /** the shared secret; never log or print it */
  token: string;
  retentionPolicy: RetentionPolicy | undefined;
  minimumRedundancy: number;
}

export interface ReceiverConfig {
  file: string;
  barmanHome: string;
  listen: { host: string; port: number };
  tls: { cert: string; key: string } | undefined;
  logLevel: LogLevel;
  compression: Compression;
  /** seconds an upload may go without data before it is aborted; also how long a session must be silent before it may be closed to make room */
  timeoutSeconds: number;
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
  const compression = r.oneOf('compression', COMPRESSIONS, 'none');
  if (compression === 'lz4' || compression === 'zstd') {
    // Node 20's zlib has neither; both are reserved until the catalog can stream them
    throw configError(file, 'barman', 'compression', `${compression} is not available in this version of barman-ts`, 'Use compression = gzip (or none); stored files keep their format when this changes.');
  }
  const timeoutSeconds = r.integer('timeout', 30, 1);
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
    const operations = readServerOperations(s, thresholds);
    s.finish();
    servers.set(name, { name, description, token, retentionPolicy, minimumRedundancy, ...operations });
  }
  return { file, barmanHome, listen, tls: cert && key ? { cert, key } : undefined, logLevel, compression, timeoutSeconds, servers, metricsListen, housekeepingIntervalSeconds };
}
