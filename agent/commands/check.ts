// `barman-agent check`: configuration, receiver reachable, token accepted, the PostgreSQL version
// (13 and newer) and the settings archiving depends on.

import type { AgentConfig } from '../../shared/config/agent';
import { type CheckResult, runCheck } from '../../shared/check';
import { connectPostgres } from '../postgres';
import { OLDEST_SUPPORTED_MAJOR, requireSupportedVersion, versionText } from '../../shared/postgres/version';
import { AgentConnection } from '../../shared/protocol/client';

export async function checkAgent(config: AgentConfig): Promise<CheckResult[]> {
  const results: CheckResult[] = [{ name: 'configuration', ok: true, detail: config.file }];
  results.push(
    await runCheck('receiver', async () => {
      const conn = await AgentConnection.open(config, 'admin');
      conn.close();
      return `${config.receiver.href}, token accepted`;
    }, 'Start barman-receiver serve and check receiver = and token_file.'),
  );
  const settings = new Map<string, string>();
  results.push(
    await runCheck('PostgreSQL connection', async () => {
      const client = await connectPostgres(config.conninfo);
      try {
        const { rows } = await client.query<{ name: string; setting: string }>("select name, setting from pg_settings where name in ('wal_level','archive_mode','archive_command','server_version','server_version_num')");
        for (const r of rows) settings.set(r.name, r.setting);
        return `PostgreSQL ${settings.get('server_version')}`;
      } finally {
        await client.end();
      }
    }, 'Check conninfo = in the agent configuration and that PostgreSQL runs.'),
  );
  if (settings.size > 0) {
    const versionNum = Number(settings.get('server_version_num'));
    results.push(await runCheck('PostgreSQL version', async () => {
      requireSupportedVersion(versionNum);
      return versionText(versionNum);
    }, `Use PostgreSQL ${OLDEST_SUPPORTED_MAJOR} or newer.`));
    const walLevel = settings.get('wal_level') ?? '';
    const archiveMode = settings.get('archive_mode') ?? '';
    const archiveCommand = settings.get('archive_command') ?? '';
    results.push(setting('wal_level', ['replica', 'logical'].includes(walLevel), walLevel, 'Set wal_level = replica in postgresql.conf and restart PostgreSQL.'));
    results.push(setting('archive_mode', ['on', 'always'].includes(archiveMode), archiveMode, 'Set archive_mode = on in postgresql.conf and restart PostgreSQL.'));
    results.push(setting('archive_command', /barman-agent\b.*\bpush\b/.test(archiveCommand), archiveCommand || 'not set', "Set archive_command = 'barman-agent push %p' and reload PostgreSQL."));
  }
  return results;
}

function setting(name: string, ok: boolean, value: string, hint: string): CheckResult {
  return ok ? { name, ok, detail: value } : { name, ok, detail: `is ${value}`, hint };
}
