// `barman-agent check`: the PostgreSQL-side half of `check`, from the database host:
// configuration, receiver reachable, token accepted, the PostgreSQL version (13 and newer), the
// settings archiving depends on, and with streaming on, the replication slot.

import type { AgentConfig } from '../../shared/config/agent';
import { type CheckResult, runCheck } from '../../shared/check';
import { connectPostgres, type ServerFacts, serverFacts } from '../postgres';
import { archiveSettingChecks, slotCheck } from '../../shared/postgres/settings';
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
  let facts: ServerFacts | undefined;
  results.push(
    await runCheck('PostgreSQL connection', async () => {
      const client = await connectPostgres(config.conninfo);
      try {
        facts = await serverFacts(client, { slotName: config.streaming ? config.slotName : undefined });
        return `PostgreSQL ${facts.serverVersion}`;
      } finally {
        await client.end();
      }
    }, 'Check conninfo = in the agent configuration and that PostgreSQL runs.'),
  );
  if (facts) {
    const versionNum = facts.serverVersionNum;
    results.push(await runCheck('PostgreSQL version', async () => {
      requireSupportedVersion(versionNum);
      return versionText(versionNum);
    }, `Use PostgreSQL ${OLDEST_SUPPORTED_MAJOR} or newer.`));
    results.push(...archiveSettingChecks(facts));
    if (facts.slot) results.push(slotCheck(facts.slot, { streaming: false, createdByDaemon: config.createSlot === 'auto' }));
  }
  return results;
}
