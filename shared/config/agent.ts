// The agent's configuration (docs/configuration.md): one [agent] section. Parsed and validated once, into AgentConfig.

import { existsSync } from 'node:fs';
import { configError, locateConfig, readIni, SectionReader, SERVER_NAME } from './ini';
import { LOG_LEVELS, type LogLevel } from './receiver';

export interface AgentConfig {
  file: string;
  receiver: URL;
  server: string;
  /** the shared secret; never log or print it */
  token: string;
  caFile: string | undefined;
  pgdata: string | undefined;
  conninfo: string;
  spoolDir: string;
  streaming: boolean;
  slotName: string;
  createSlot: 'auto' | 'manual';
  applicationName: string;
  logLevel: LogLevel;
  /** seconds to wait for the receiver to answer before giving up */
  timeoutSeconds: number;
  /** WAL segments get-wal fetches ahead into spool_dir (0: none) */
  prefetch: number;
}

/** the most segments get-wal may hold ahead in spool_dir */
export const MAX_PREFETCH = 64;

export function loadAgentConfig(explicit?: string): AgentConfig {
  const file = locateConfig(explicit, 'BARMAN_AGENT_CONFIG', 'barman-agent.conf', existsSync);
  const { doc } = readIni(file);
  const values = doc.get('agent');
  if (!values) throw configError(file, 'agent', undefined, 'missing section', 'Add an [agent] section with receiver, server and token_file.');
  for (const name of doc.keys()) {
    if (name !== 'agent') throw configError(file, name, undefined, 'unknown section', 'The agent reads only [agent].');
  }
  const s = new SectionReader(file, 'agent', values);
  const receiverText = s.required('receiver', 'the receiver URL, ws://host:port or wss://host:port');
  let receiver: URL;
  try {
    receiver = new URL(receiverText);
  } catch {
    receiver = new URL('invalid:');
  }
  if (receiver.protocol !== 'ws:' && receiver.protocol !== 'wss:') {
    throw configError(file, 'agent', 'receiver', `"${receiverText}" is not a ws:// or wss:// URL`, 'Use for example receiver = ws://backup.example:7480');
  }
  const server = s.required('server', 'the name of this server in the receiver configuration');
  if (!SERVER_NAME.test(server)) throw configError(file, 'agent', 'server', `"${server}" is not a valid server name`, 'Use the section name of this server in the receiver configuration.');
  const token = s.secret('token');
  const caFile = s.string('ca_file');
  const pgdata = s.string('pgdata');
  const conninfo = s.string('conninfo', 'dbname=postgres')!;
  const spoolDir = s.string('spool_dir', '/var/lib/barman-agent')!;
  const streaming = s.bool('streaming', false);
  const slotName = s.string('slot_name', `barman_${server.replace(/-/g, '_').toLowerCase()}`)!;
  if (!/^[a-z0-9_]{1,63}$/.test(slotName)) throw configError(file, 'agent', 'slot_name', `"${slotName}" is not a valid replication slot name`, 'Use lower-case letters, digits and "_".');
  const createSlot = s.oneOf('create_slot', ['auto', 'manual'] as const, 'auto');
  const applicationName = s.string('application_name', `barman_receive_${server}`)!;
  const logLevel = s.oneOf('log_level', LOG_LEVELS, 'info');
  const timeoutSeconds = s.integer('timeout', 30, 1);
  const prefetch = s.integer('prefetch', 8, 0);
  if (prefetch > MAX_PREFETCH) throw configError(file, 'agent', 'prefetch', `${prefetch} is more than ${MAX_PREFETCH}`, `Set prefetch to at most ${MAX_PREFETCH} segments (each waits in spool_dir until PostgreSQL asks for it).`);
  s.finish();
  return { file, receiver, server, token, caFile, pgdata, conninfo, spoolDir, streaming, slotName, createSlot, applicationName, logLevel, timeoutSeconds, prefetch };
}
