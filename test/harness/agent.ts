// Agent configuration files as an operator writes them: [agent] with receiver, server and a
// token_file readable by postgres only.

import { chmodSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { chownTo, makeTempDir } from './env';
import { iniText, writeTokenFile } from './receiver';

export interface AgentConfigOptions {
  /** ws:// or wss:// URL, or a started receiver */
  receiver: string | { url: string; tokens?: Map<string, string> };
  server: string;
  /** the secret; defaults to the receiver's token for `server` when `receiver` is a Receiver */
  token?: string;
  /** an existing token file instead of `token` */
  tokenFile?: string;
  caFile?: string;
  pgdata?: string;
  conninfo?: string;
  spoolDir?: string;
  /** seconds the agent waits for the receiver */
  timeout?: number;
  logLevel?: string;
  /** more keys, written as given (also unknown or malformed ones, for configuration tests) */
  extra?: Record<string, string>;
  /** folder to write into (postgres must own or read it); default a new temp folder */
  dir?: string;
}

export interface AgentConfigFile {
  path: string;
  dir: string;
  tokenFile: string;
}

export function writeAgentConfig(options: AgentConfigOptions): AgentConfigFile {
  const dir = options.dir ?? makeTempDir('agent', 'postgres', 0o755);
  const url = typeof options.receiver === 'string' ? options.receiver : options.receiver.url;
  let tokenFile = options.tokenFile;
  if (!tokenFile) {
    const token = options.token ?? (typeof options.receiver === 'string' ? undefined : options.receiver.tokens?.get(options.server));
    if (!token) throw new Error(`writeAgentConfig: no token for server "${options.server}"; pass token or tokenFile`);
    tokenFile = writeTokenFile(join(dir, `${options.server}.token`), token, 'postgres');
  }
  const path = join(dir, `barman-agent-${options.server}.conf`);
  writeFileSync(
    path,
    iniText([
      ['agent', {
        receiver: url,
        server: options.server,
        token_file: tokenFile,
        ca_file: options.caFile,
        pgdata: options.pgdata,
        conninfo: options.conninfo,
        spool_dir: options.spoolDir ?? join(dir, 'spool'),
        timeout: options.timeout,
        log_level: options.logLevel,
        ...options.extra,
      }],
    ]),
  );
  chmodSync(path, 0o644);
  chownTo(path, 'postgres');
  return { path, dir, tokenFile };
}
