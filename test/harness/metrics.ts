// What a monitoring system sees of the receiver: `GET /metrics` parsed by a Prometheus text-format
// parser (parse-prometheus-text-format, not a regex), and a real Prometheus server (Debian's
// `prometheus`) that scrapes it on loopback and answers PromQL over its HTTP API.

import { type ChildProcess, spawn } from 'node:child_process';
import { appendFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import parsePrometheusTextFormat, { type MetricFamily } from 'parse-prometheus-text-format';
import { freePort, makeTempDir } from './env';
import { track } from './resources';
import { waitFor } from './wait';

export type { MetricFamily };

/** GET <base>/metrics, parsed. */
export async function scrapeMetrics(base: string): Promise<MetricFamily[]> {
  const res = await fetch(`${base}/metrics`);
  if (res.status !== 200) throw new Error(`GET ${base}/metrics answered ${res.status}: ${await res.text()}`);
  return parsePrometheusTextFormat(await res.text());
}

/** The value of metric `name` with exactly the labels `labels` (the sample's own labels may not be more); undefined when absent. */
export function sampleValue(families: MetricFamily[], name: string, labels: Record<string, string>): number | undefined {
  const family = families.find((f) => f.name === name);
  const sample = family?.metrics.find((m) => {
    const own = m.labels ?? {};
    return Object.keys(own).length === Object.keys(labels).length && Object.entries(labels).every(([k, v]) => own[k] === v);
  });
  return sample?.value === undefined ? undefined : Number(sample.value);
}

/** A Prometheus server on loopback, started by a test; queried through its HTTP API. */
export class PrometheusServer {
  private child: ChildProcess | undefined;
  private output = '';

  private constructor(readonly url: string, readonly dir: string) {}

  /**
   * Starts one with `config` (prometheus.yml as text; scrape and evaluation intervals of 1 s are
   * put in front of it) and, by name, the files it refers to (written beside it; it runs there).
   */
  static async start(config: string, files: Record<string, string> = {}): Promise<PrometheusServer> {
    const dir = makeTempDir('prometheus', 'root', 0o755);
    const port = await freePort();
    for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
    const configPath = join(dir, 'prometheus.yml');
    writeFileSync(configPath, `global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n${config}`);
    const server = new PrometheusServer(`http://127.0.0.1:${port}`, dir);
    const child = spawn('prometheus', [`--config.file=${configPath}`, `--storage.tsdb.path=${join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn'], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    server.child = child;
    const record = (b: Buffer) => {
      server.output += b.toString('utf8');
      appendFileSync(join(dir, 'prometheus.log'), b);
    };
    child.stdout!.on('data', record);
    child.stderr!.on('data', record);
    track({ what: `prometheus on port ${port}`, dispose: () => server.stop(), killNow: () => child.kill('SIGKILL') });
    await waitFor('Prometheus to be ready', async () => {
      if (child.exitCode !== null) throw new Error(`prometheus exited (${child.exitCode}):\n${server.output}`);
      return (await fetch(`${server.url}/-/ready`).catch(() => undefined))?.ok ?? false;
    }, { timeoutMs: 60_000, intervalMs: 200 });
    return server;
  }

  /** An instant PromQL query: each result's labels and value. */
  async query(expr: string): Promise<Array<{ labels: Record<string, string>; value: number }>> {
    const res = await fetch(`${this.url}/api/v1/query?query=${encodeURIComponent(expr)}`);
    const body = (await res.json()) as { status: string; error?: string; data?: { result: Array<{ metric: Record<string, string>; value: [number, string] }> } };
    if (body.status !== 'success') throw new Error(`query ${expr} failed: ${body.error}`);
    return body.data!.result.map((r) => ({ labels: r.metric, value: Number(r.value[1]) }));
  }

  async stop(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
}
