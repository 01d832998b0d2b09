// A DBA watches barman-ts with Prometheus: the service answers GET /healthz and GET /metrics on
// its own port, every value follows what happened (segments archived, a refused push, a backup
// taken, a drill run), gauges come back right after a restart while counters start over, a real
// Prometheus server scrapes it with the README's scrape configuration and loads the README's
// alert rules, and those rules fire when they should (promtool's rule tests).

import { execFileSync } from 'node:child_process';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  type AgentDaemon, type Cluster, createCluster, describeRun, expectSuccess, makeTempDir, type Receiver, runAgent, runReceiverCli, snapshotTree, startDaemon, startReceiver,
  waitFor, waitStreamCaughtUp,
} from '../harness';
import { showBackupJson } from '../harness/backups';
import { chownTo } from '../harness/env';
import { type MetricFamily, PrometheusServer, sampleValue, scrapeMetrics } from '../harness/metrics';

const REPO = resolve(import.meta.dirname, '../..');
const SEGMENT = 16 * 1024 * 1024;

/** The ```yaml blocks of the README: its scrape configuration and its alert rules. */
function readmeYaml(): { scrape: string; rules: string } {
  const blocks = [...readFileSync(join(REPO, 'README.md'), 'utf8').matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]!);
  const scrape = blocks.find((b) => b.includes('scrape_configs:'));
  const rules = blocks.find((b) => b.startsWith('groups:'));
  if (!scrape || !rules) throw new Error('README.md has no ```yaml scrape configuration or alert rules');
  return { scrape, rules };
}

describe('a DBA watches barman-ts with Prometheus', () => {
  let receiver: Receiver;
  let cluster: Cluster;
  let daemon: AgentDaemon;
  const value = (m: MetricFamily[], name: string, labels: Record<string, string> = {}) => sampleValue(m, name, { server: 'main', ...labels });
  /** what the scrapes after a restart must still say */
  let expected: { backupSize: number; backupAtRest: number; drillAt: number; drillRto: number };

  beforeAll(async () => {
    receiver = await startReceiver({ servers: [{ name: 'main' }] });
    cluster = await createCluster({ name: 'watched', archive: true, agentConfig: { receiver, server: 'main', extra: { streaming: 'on' } }, extraConf: { wal_keep_size: '1GB' } });
    await cluster.start();
    await cluster.psql('create table orders (id int primary key, note text); insert into orders select g, md5(g::text) from generate_series(1, 5000) g');
    daemon = startDaemon(cluster.agentConfigPath!);
    await daemon.waitStreaming();
    await cluster.waitArchived(await cluster.switchWal());
  });

  it('answers /healthz, and /metrics with the live RPO and a label per server', async () => {
    const health = await fetch(`${receiver.httpUrl}/healthz`);
    expect(health.status).toBe(200);
    expect(await health.text()).toBe('ok\n');
    // on the WebSocket port a plain HTTP connection is one request long
    expect(health.headers.get('connection')).toBe('close');
    // the port still says what it speaks to anything else
    expect((await fetch(`${receiver.httpUrl}/`)).status).toBe(426);

    await waitStreamCaughtUp(receiver, 'main', cluster);
    const m = await waitFor('the stream to be up and caught up in /metrics', async () => {
      const scraped = await scrapeMetrics(receiver.httpUrl);
      return value(scraped, 'barman_streaming_up') === 1 && value(scraped, 'barman_rpo_seconds') === 0 ? scraped : false;
    });
    expect(value(m, 'barman_rpo_bytes')).toBe(0);
    expect(value(m, 'barman_streaming_lag_bytes')).toBe(0);
    expect(value(m, 'barman_agent_connected')).toBe(1);
    expect(value(m, 'barman_last_wal_received_age_seconds')).toBeGreaterThanOrEqual(0);
    expect(value(m, 'barman_last_wal_received_age_seconds')).toBeLessThan(600);
    for (const status of ['STARTED', 'WAITING_FOR_WALS', 'DONE', 'FAILED']) expect(value(m, 'barman_backups', { status })).toBe(0);

    // streamed WAL counts as WAL received, though no segment was completed since
    await new Promise((r) => setTimeout(r, 2000));
    await cluster.psql("insert into orders values (900001, 'streamed, not switched')");
    const streamed = await waitStreamCaughtUp(receiver, 'main', cluster) as unknown as { wal: { last_received_at: string }; streaming: { last_flush_at: string } };
    const flushedAt = Date.parse(streamed.streaming.last_flush_at);
    expect(flushedAt - Date.parse(streamed.wal.last_received_at)).toBeGreaterThan(1000);
    const age = value(await scrapeMetrics(receiver.httpUrl), 'barman_last_wal_received_age_seconds')!;
    expect(age).toBeLessThanOrEqual((Date.now() - flushedAt) / 1000 + 0.001);
    // every metric of the contract is a family with its type, and each of its samples names the server
    const types: Record<string, string> = {
      barman_last_wal_received_age_seconds: 'GAUGE', barman_rpo_seconds: 'GAUGE', barman_rpo_bytes: 'GAUGE', barman_streaming_lag_bytes: 'GAUGE', barman_streaming_up: 'GAUGE',
      barman_archived_segments_total: 'COUNTER', barman_archived_bytes_total: 'COUNTER', barman_archive_failures_total: 'COUNTER', barman_refused_files_total: 'COUNTER', barman_backups: 'GAUGE',
      barman_last_backup_age_seconds: 'GAUGE', barman_last_backup_size_bytes: 'GAUGE', barman_last_backup_duration_seconds: 'GAUGE', barman_catalog_bytes: 'GAUGE',
      barman_last_drill_success: 'GAUGE', barman_last_drill_timestamp_seconds: 'GAUGE', barman_last_drill_rto_seconds: 'GAUGE',
    };
    for (const [name, type] of Object.entries(types)) expect(m.find((f) => f.name === name)?.type, name).toBe(type);
    for (const f of m.filter((f) => f.name.startsWith('barman_'))) for (const s of f.metrics) expect(s.labels?.server, f.name).toBe('main');
  });

  it('counts the segments and bytes archived and a refused push by its reason', async () => {
    const before = await scrapeMetrics(receiver.httpUrl);
    const segments = value(before, 'barman_archived_segments_total')!;
    const bytes = value(before, 'barman_archived_bytes_total')!;
    const switched: string[] = [];
    for (let i = 0; i < 3; i++) {
      await cluster.psql(`insert into orders select g, 'batch ${i}' from generate_series(${10_000 * (i + 1)}, ${10_000 * (i + 1) + 999}) g`);
      switched.push(await cluster.switchWal());
    }
    await cluster.waitArchived(switched);
    // pushed and streamed alike, each segment counts once: the second copy is a duplicate
    const after = await waitFor('three more segments counted', async () => {
      const m = await scrapeMetrics(receiver.httpUrl);
      return value(m, 'barman_archived_segments_total')! >= segments + 3 ? m : false;
    });
    expect(value(after, 'barman_archived_segments_total')).toBe(segments + 3);
    expect(value(after, 'barman_archived_bytes_total')).toBe(bytes + 3 * SEGMENT);
    expect(value(after, 'barman_last_wal_received_age_seconds')).toBeLessThan(60);
    expect(value(after, 'barman_archive_failures_total', { reason: 'WAL_CONFLICT' })).toBeUndefined();

    // other bytes under an archived name: refused, counted as a failure with the error's code
    const forged = join(makeTempDir('forged', 'postgres', 0o755), switched[0]!);
    copyFileSync(cluster.walFile(switched[0]!), forged);
    const bytesOf = readFileSync(forged);
    bytesOf[20_000] = bytesOf[20_000]! ^ 0xff;
    writeFileSync(forged, bytesOf);
    chownTo(forged, 'postgres');
    const push = await runAgent(['push', '-c', cluster.agentConfigPath!, forged]);
    expect(push.code, describeRun(push)).toBe(1);
    expect(push.stderr).toMatch(/WAL_CONFLICT/);
    const refused = await scrapeMetrics(receiver.httpUrl);
    expect(value(refused, 'barman_archive_failures_total', { reason: 'WAL_CONFLICT' })).toBe(1);
    expect(value(refused, 'barman_archived_segments_total')).toBe(segments + 3);
  });

  it('follows a backup taken and a drill run: backups by status, the newest one\'s age, size and duration, the catalog\'s size, the drill', async () => {
    const backup = await runReceiverCli(['backup', '-c', receiver.configPath, 'main', '--wait']);
    expectSuccess(backup);
    const id = backup.stdout.trim();
    const info = await showBackupJson(receiver, 'main', id);
    // the catalog's size is of what it holds at rest (compressed): at least this backup's files as stored
    const atRest = [...(await snapshotTree(join(receiver.serverDir('main'), 'base', id))).values()].reduce((n, f) => n + f.size, 0);
    expect(atRest).toBeGreaterThan(0);
    const m = await waitFor('the backup and the catalog\'s size in /metrics', async () => {
      const scraped = await scrapeMetrics(receiver.httpUrl);
      return value(scraped, 'barman_backups', { status: 'DONE' }) === 1 && value(scraped, 'barman_catalog_bytes')! >= atRest ? scraped : false;
    });
    expect(value(m, 'barman_last_backup_size_bytes')).toBe(info.size);
    expect(value(m, 'barman_last_backup_duration_seconds')).toBeCloseTo((Date.parse(info.end_time) - Date.parse(info.begin_time)) / 1000, 3);
    expect(value(m, 'barman_last_backup_age_seconds')).toBeGreaterThanOrEqual(0);
    expect(value(m, 'barman_last_backup_age_seconds')).toBeLessThan(600);
    expect(value(m, 'barman_last_drill_success')).toBeUndefined();

    // the drill runs in the service (it holds the catalog) and is recorded there
    const drill = await runReceiverCli(['drill', '-c', receiver.configPath, 'main', '--json']);
    expectSuccess(drill);
    const result = JSON.parse(drill.stdout) as { backup_id: string; passed: boolean; rto_seconds: number; at: string };
    expect(result).toMatchObject({ backup_id: id, passed: true });
    const drilled = await scrapeMetrics(receiver.httpUrl);
    expect(value(drilled, 'barman_last_drill_success')).toBe(1);
    expect(value(drilled, 'barman_last_drill_timestamp_seconds')).toBe(Date.parse(result.at) / 1000);
    expect(value(drilled, 'barman_last_drill_rto_seconds')).toBe(result.rto_seconds);
    expected = { backupSize: info.size, backupAtRest: atRest, drillAt: Date.parse(result.at) / 1000, drillRto: result.rto_seconds };
  });

  it('after a restart, gauges come from the catalog and counters start over', async () => {
    await receiver.restart();
    const m = await scrapeMetrics(receiver.httpUrl);
    expect(value(m, 'barman_backups', { status: 'DONE' })).toBe(1);
    expect(value(m, 'barman_last_backup_size_bytes')).toBe(expected.backupSize);
    expect(value(m, 'barman_last_drill_success')).toBe(1);
    expect(value(m, 'barman_last_drill_timestamp_seconds')).toBe(expected.drillAt);
    expect(value(m, 'barman_last_drill_rto_seconds')).toBe(expected.drillRto);
    expect(value(m, 'barman_last_wal_received_age_seconds')).toBeGreaterThanOrEqual(0);
    expect(value(m, 'barman_archived_segments_total')).toBe(0);
    expect(value(m, 'barman_archive_failures_total', { reason: 'WAL_CONFLICT' })).toBeUndefined();
    await waitFor('the catalog to be measured again', async () => value(await scrapeMetrics(receiver.httpUrl), 'barman_catalog_bytes')! >= expected.backupAtRest);
  });

  it('is scraped by a real Prometheus server with the README\'s scrape configuration, which loads the README\'s alert rules', async () => {
    const { scrape, rules } = readmeYaml();
    const config = scrape
      .replace('backup.example:7480', `${receiver.host}:${receiver.port}`)
      .replace(/scrape_interval: \d+s/, 'scrape_interval: 1s')
      .replace('/etc/prometheus/barman-rules.yml', 'barman-rules.yml');
    const prometheus = await PrometheusServer.start(config, { 'barman-rules.yml': rules });
    const done = await waitFor('Prometheus to have scraped the backups', async () => {
      const r = await prometheus.query('barman_backups{status="DONE"}');
      return r.length === 1 ? r : false;
    }, { timeoutMs: 60_000, intervalMs: 500 });
    expect(done[0]!.labels).toMatchObject({ server: 'main', job: 'barman' });
    expect(done[0]!.value).toBe(1);
    expect((await prometheus.query('barman_last_drill_success'))[0]?.value).toBe(1);
    expect((await prometheus.query('barman_last_backup_size_bytes'))[0]?.value).toBe(expected.backupSize);
    expect((await prometheus.query('up{job="barman"}'))[0]?.value).toBe(1);
    // evaluated against what this receiver says (healthy): each rule ok, nothing pending or firing
    const alerts = await waitFor('the rules to be evaluated', async () => {
      const loaded = (await (await fetch(`${prometheus.url}/api/v1/rules`)).json()) as { data: { groups: Array<{ rules: Array<{ name: string; health: string; lastEvaluation: string }> }> } };
      const rules = loaded.data.groups.flatMap((g) => g.rules);
      return rules.length > 0 && rules.every((r) => !r.lastEvaluation.startsWith('0001')) ? rules : false;
    });
    expect(alerts.map((r) => r.name).sort()).toEqual(['BarmanArchiveStale', 'BarmanCatalogDamaged', 'BarmanDrillFailedOrStale', 'BarmanNoRecentBackup']);
    expect(alerts.map((r) => r.health)).toEqual(['ok', 'ok', 'ok', 'ok']);
    expect(await prometheus.query('ALERTS')).toEqual([]);
    await prometheus.stop();
  });
});

describe('the README\'s alert rules', () => {
  it('fire when the archive is stale, no backup is recent, the drill failed or is stale, or a damaged catalog file was found (promtool test rules)', () => {
    const dir = makeTempDir('rules', 'root', 0o755);
    writeFileSync(join(dir, 'rules.yml'), readmeYaml().rules);
    expect(execFileSync('promtool', ['check', 'rules', join(dir, 'rules.yml')], { encoding: 'utf8' })).toMatch(/SUCCESS: 4 rules found/);
    const summary = (text: string) => ({ summary: text });
    const alert = (severity: string, server: string) => ({ severity, server, instance: 'backup1:7480', job: 'barman' });
    const series = (name: string, server: string, values: string, extra = '') => `      - series: '${name}{server="${server}",instance="backup1:7480",job="barman"${extra}}'\n        values: '${values}'`;
    writeFileSync(join(dir, 'tests.yml'), [
      'rule_files: [rules.yml]',
      'evaluation_interval: 1m',
      'tests:',
      '  - interval: 1m',
      '    input_series:',
      // archive: fresh on "ok", an hour and more on "stale" (growing a minute per minute)
      series('barman_last_wal_received_age_seconds', 'ok', '30x120'),
      series('barman_last_wal_received_age_seconds', 'stale', '3000+60x120'),
      // backups: "ok" has a recent one, "old" one 9 days old, "none" has none DONE
      series('barman_last_backup_age_seconds', 'ok', '3600x120'),
      series('barman_last_backup_age_seconds', 'old', '777600x120'),
      series('barman_backups', 'ok', '1x120', ',status="DONE"'),
      series('barman_backups', 'old', '1x120', ',status="DONE"'),
      series('barman_backups', 'none', '0x120', ',status="DONE"'),
      // drills: "ok" passed recently; "failed" failed; "stale" passed 9 days before the test's time 0
      series('barman_last_drill_success', 'ok', '1x120'),
      series('barman_last_drill_timestamp_seconds', 'ok', '0x120'),
      series('barman_last_drill_success', 'failed', '0x120'),
      series('barman_last_drill_timestamp_seconds', 'failed', '0x120'),
      series('barman_last_drill_success', 'stale', '1x120'),
      series('barman_last_drill_timestamp_seconds', 'stale', '-777600x120'),
      // refused files: "ok" none, "transit" one that read back intact, "damaged" one damaged in the catalog at minute 10
      series('barman_refused_files_total', 'ok', '0x120', ',file="wal",found="damaged"'),
      series('barman_refused_files_total', 'transit', '0x120', ',file="wal",found="damaged"'),
      series('barman_refused_files_total', 'transit', '0x10 1x110', ',file="wal",found="intact"'),
      series('barman_refused_files_total', 'damaged', '0x120', ',file="wal",found="damaged"'),
      series('barman_refused_files_total', 'damaged', '0x10 1x110', ',file="backup-file",found="damaged"'),
      '    alert_rule_test:',
      '      - eval_time: 5m',
      '        alertname: BarmanArchiveStale',
      '        exp_alerts: []',
      '      - eval_time: 60m',
      '        alertname: BarmanArchiveStale',
      '        exp_alerts:',
      `          - exp_labels: ${JSON.stringify(alert('critical', 'stale'))}`,
      `            exp_annotations: ${JSON.stringify(summary('barman: no WAL archived for stale in the last hour'))}`,
      '      - eval_time: 30m',
      '        alertname: BarmanNoRecentBackup',
      '        exp_alerts:',
      `          - exp_labels: ${JSON.stringify(alert('warning', 'none'))}`,
      `            exp_annotations: ${JSON.stringify(summary('barman: no recent backup of none'))}`,
      `          - exp_labels: ${JSON.stringify(alert('warning', 'old'))}`,
      `            exp_annotations: ${JSON.stringify(summary('barman: no recent backup of old'))}`,
      '      - eval_time: 30m',
      '        alertname: BarmanDrillFailedOrStale',
      '        exp_alerts:',
      `          - exp_labels: ${JSON.stringify(alert('warning', 'failed'))}`,
      `            exp_annotations: ${JSON.stringify(summary('barman: the restore drill of failed failed or is stale'))}`,
      `          - exp_labels: ${JSON.stringify(alert('warning', 'stale'))}`,
      `            exp_annotations: ${JSON.stringify(summary('barman: the restore drill of stale failed or is stale'))}`,
      '      - eval_time: 5m',
      '        alertname: BarmanCatalogDamaged',
      '        exp_alerts: []',
      '      - eval_time: 30m',
      '        alertname: BarmanCatalogDamaged',
      '        exp_alerts:',
      `          - exp_labels: ${JSON.stringify(alert('critical', 'damaged'))}`,
      `            exp_annotations: ${JSON.stringify(summary('barman: a damaged file in the catalog of damaged'))}`,
      '',
    ].join('\n'));
    let out: string;
    try {
      out = execFileSync('promtool', ['test', 'rules', 'tests.yml'], { cwd: dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (err) {
      const e = err as { stdout?: string; stderr?: string };
      throw new Error(`promtool test rules failed:\n${e.stdout}\n${e.stderr}`);
    }
    expect(out).toMatch(/SUCCESS/);
  });
});

describe('metrics_listen', () => {
  it('serves /metrics and /healthz there only; the WebSocket port answers 426', async () => {
    const receiver = await startReceiver({ servers: [{ name: 'alpha' }, { name: 'beta' }], extra: { metrics_listen: '127.0.0.1:0' } });
    const log = await waitFor('the receiver to log where metrics are served', () => /"metrics":"127\.0\.0\.1:(\d+)"/.exec(receiver.logs()) ?? false);
    const url = `http://127.0.0.1:${log[1]}`;
    expect((await fetch(`${url}/healthz`)).status).toBe(200);
    const m = await scrapeMetrics(url);
    expect(sampleValue(m, 'barman_backups', { server: 'alpha', status: 'DONE' })).toBe(0);
    expect(sampleValue(m, 'barman_backups', { server: 'beta', status: 'DONE' })).toBe(0);
    expect(sampleValue(m, 'barman_streaming_up', { server: 'beta' })).toBe(0);
    // a server with no WAL yet has no age, no RPO and no drill
    expect(sampleValue(m, 'barman_last_wal_received_age_seconds', { server: 'alpha' })).toBeUndefined();
    expect(sampleValue(m, 'barman_rpo_seconds', { server: 'alpha' })).toBeUndefined();
    expect((await fetch(`${url}/nothing`)).status).toBe(404);
    expect((await fetch(`${receiver.httpUrl}/metrics`)).status).toBe(426);
  });
});
