import { chmodSync, chownSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { loadAgentConfig } from '../../../../shared/config/agent';
import { configErrorOf, tempFiles } from './files';

const files = tempFiles();
const TOKEN = 'agent-s3cret-7c1d9e0f2a4b6c8d';
const tokenFile = files.write(`${TOKEN}\n`, 'agent.token');

function conf(lines: string, { server = 'main' } = {}): string {
  return files.write(`[agent]\nreceiver = ws://backup.example:7480\nserver = ${server}\ntoken_file = ${tokenFile}\n${lines}\n`);
}

describe('loadAgentConfig', () => {
  it('fills in the documented defaults', () => {
    const file = conf('');
    expect(loadAgentConfig(file)).toEqual({
      file,
      receiver: new URL('ws://backup.example:7480'),
      server: 'main',
      token: TOKEN,
      caFile: undefined,
      pgdata: undefined,
      conninfo: 'dbname=postgres',
      spoolDir: '/var/lib/barman-agent',
      streaming: false,
      slotName: 'barman_main',
      createSlot: 'auto',
      applicationName: 'barman_receive_main',
      logLevel: 'info',
      timeoutSeconds: 30,
      prefetch: 8,
    });
  });

  it('reads a configuration that sets every key', () => {
    const file = files.write(`[agent]
receiver = wss://backup.example:7480    ; wss:// with ca_file = ... for TLS
ca_file = /etc/barman-agent/ca.pem
server = main
token_file = ${tokenFile}
pgdata = /var/lib/postgresql/15/main
conninfo = host=/var/run/postgresql user=postgres dbname=postgres
spool_dir = /var/lib/barman-agent
streaming = on
slot_name = barman_main
create_slot = manual
application_name = barman_receive_main
`);
    const c = loadAgentConfig(file);
    expect(c.receiver.href).toBe('wss://backup.example:7480/');
    expect(c.caFile).toBe('/etc/barman-agent/ca.pem');
    expect(c.pgdata).toBe('/var/lib/postgresql/15/main');
    expect(c.conninfo).toBe('host=/var/run/postgresql user=postgres dbname=postgres');
    expect(c.streaming).toBe(true);
    expect(c.createSlot).toBe('manual');
  });

  it.each(['ws://127.0.0.1:7480', 'wss://backup.example:7480', 'WS://Backup.Example:7480', 'ws://[::1]:7480'])('accepts receiver = %s', (url) => {
    expect(['ws:', 'wss:']).toContain(loadAgentConfig(files.write(`[agent]\nreceiver = ${url}\nserver = main\ntoken_file = ${tokenFile}\n`)).receiver.protocol);
  });

  it.each(['http://backup.example:7480', 'https://backup.example:7480', 'backup.example:7480', 'tcp://backup:7480', '127.0.0.1:7480', 'ws//backup:7480', 'not a url'])('refuses receiver = %s, naming file, section and key', (url) => {
    const file = files.write(`[agent]\nreceiver = ${url}\nserver = main\ntoken_file = ${tokenFile}\n`);
    const e = configErrorOf(() => loadAgentConfig(file));
    expect(e.message).toBe(`${file} [agent] receiver: "${url}" is not a ws:// or wss:// URL`);
    expect(e.hint).toContain('ws://');
  });

  it('requires receiver and server', () => {
    const noReceiver = files.write(`[agent]\nserver = main\ntoken_file = ${tokenFile}\n`);
    expect(configErrorOf(() => loadAgentConfig(noReceiver)).message).toMatch(/^.* \[agent\] receiver: missing required key/);
    const noServer = files.write(`[agent]\nreceiver = ws://b:1\ntoken_file = ${tokenFile}\n`);
    expect(configErrorOf(() => loadAgentConfig(noServer)).message).toMatch(/\[agent\] server: missing required key/);
  });

  it('refuses a server name the receiver could not have', () => {
    expect(configErrorOf(() => loadAgentConfig(conf('', { server: '../main' }))).message).toMatch(/\[agent\] server: "..\/main" is not a valid server name/);
  });

  it('refuses a file without [agent], and any other section', () => {
    const none = files.write(`[barman]\nbarman_home = /srv\n`);
    expect(configErrorOf(() => loadAgentConfig(none)).message).toMatch(/\[agent\]: missing section/);
    const extra = files.write(`[agent]\nreceiver = ws://b:1\nserver = main\ntoken_file = ${tokenFile}\n[main]\nx = 1\n`);
    expect(configErrorOf(() => loadAgentConfig(extra)).message).toBe(`${extra} [main]: unknown section`);
  });

  it('names file, section and key of an unknown key', () => {
    const file = conf('slotname = barman_main');
    expect(configErrorOf(() => loadAgentConfig(file)).message).toBe(`${file} [agent] slotname: unknown key`);
  });

  describe('replication slot', () => {
    it('defaults to barman_<server>, lower case, "-" as "_"', () => {
      const c = loadAgentConfig(conf('', { server: 'Pg-Main-2' }));
      expect(c.slotName).toBe('barman_pg_main_2');
      expect(c.applicationName).toBe('barman_receive_Pg-Main-2');
    });

    it.each(['barman_main', 'slot1', '_x', 'a'.repeat(63)])('accepts slot_name = %s', (name) => {
      expect(loadAgentConfig(conf(`slot_name = ${name}`)).slotName).toBe(name);
    });

    it.each(['Barman_Main', 'barman-main', 'barman main', 'a'.repeat(64), 'slot.1'])('refuses slot_name = %s', (name) => {
      const file = conf(`slot_name = ${name}`);
      expect(configErrorOf(() => loadAgentConfig(file)).message).toBe(`${file} [agent] slot_name: "${name}" is not a valid replication slot name`);
    });

    it('reads create_slot = auto | manual only', () => {
      expect(loadAgentConfig(conf('create_slot = MANUAL')).createSlot).toBe('manual');
      expect(configErrorOf(() => loadAgentConfig(conf('create_slot = always'))).message).toMatch(/create_slot: "always" is not valid; expected one of auto, manual/);
    });
  });

  it('reads streaming as a boolean', () => {
    expect(loadAgentConfig(conf('streaming = on')).streaming).toBe(true);
    expect(loadAgentConfig(conf('streaming = off')).streaming).toBe(false);
    expect(configErrorOf(() => loadAgentConfig(conf('streaming = sometimes'))).message).toMatch(/\[agent\] streaming: "sometimes" is not a boolean/);
  });

  it('reads timeout as whole seconds of at least 1', () => {
    expect(loadAgentConfig(conf('timeout = 5')).timeoutSeconds).toBe(5);
    expect(configErrorOf(() => loadAgentConfig(conf('timeout = 0'))).message).toMatch(/\[agent\] timeout: "0" is not a whole number >= 1/);
    expect(configErrorOf(() => loadAgentConfig(conf('timeout = 2.5'))).message).toMatch(/\[agent\] timeout/);
  });

  it('reads prefetch as whole segments from 0 to 64', () => {
    expect(loadAgentConfig(conf('prefetch = 0')).prefetch).toBe(0);
    expect(loadAgentConfig(conf('prefetch = 64')).prefetch).toBe(64);
    expect(configErrorOf(() => loadAgentConfig(conf('prefetch = 65'))).message).toMatch(/\[agent\] prefetch: 65 is more than 64/);
    expect(configErrorOf(() => loadAgentConfig(conf('prefetch = -1'))).message).toMatch(/\[agent\] prefetch: "-1" is not a whole number >= 0/);
  });

  describe('the shared secret', () => {
    it('comes from token_file, or token =, and is required', () => {
      expect(loadAgentConfig(conf('')).token).toBe(TOKEN);
      const inline = files.write(`[agent]\nreceiver = ws://b:1\nserver = main\ntoken = ${'t'.repeat(16)}\n`);
      expect(loadAgentConfig(inline).token).toBe('t'.repeat(16));
      const none = files.write(`[agent]\nreceiver = ws://b:1\nserver = main\n`);
      expect(configErrorOf(() => loadAgentConfig(none)).message).toMatch(/\[agent\] token_file: missing required key \(the shared secret\)/);
    });

    it('refuses a missing or short token file without showing the secret', () => {
      const missing = files.write(`[agent]\nreceiver = ws://b:1\nserver = main\ntoken_file = /nonexistent/token\n`);
      expect(configErrorOf(() => loadAgentConfig(missing)).message).toMatch(/token_file: cannot read \/nonexistent\/token \(ENOENT\)/);
      const shortFile = files.write('tooshort\n');
      const short = configErrorOf(() => loadAgentConfig(files.write(`[agent]\nreceiver = ws://b:1\nserver = main\ntoken_file = ${shortFile}\n`)));
      expect(short.message).toMatch(/shorter than 16 characters/);
      expect(`${short.message}${short.hint}`).not.toContain('tooshort');
    });

    it('refuses a token_file that group or others may read, as ssh refuses such a key', () => {
      const loose = files.write(`${TOKEN}\n`, 'loose.token');
      chmodSync(loose, 0o644);
      const file = files.write(`[agent]\nreceiver = ws://b:1\nserver = main\ntoken_file = ${loose}\n`);
      const e = configErrorOf(() => loadAgentConfig(file));
      expect(e.message).toBe(`${file} [agent] token_file: ${loose} has mode 0644: the secret must not be readable by other users`);
      expect(e.hint).toContain(`chmod 600 ${loose}`);
      expect(`${e.message}${e.hint}`).not.toContain(TOKEN);
      chmodSync(loose, 0o600);
      expect(loadAgentConfig(file).token).toBe(TOKEN);
    });

    it.runIf(process.getuid?.() === 0)('refuses a token_file that belongs to another user', () => {
      const foreign = files.write(`${TOKEN}\n`, 'foreign.token');
      chownSync(foreign, 65534, 65534);
      const file = files.write(`[agent]\nreceiver = ws://b:1\nserver = main\ntoken_file = ${foreign}\n`);
      expect(configErrorOf(() => loadAgentConfig(file)).message).toMatch(/token_file: .*foreign\.token belongs to uid 65534, not to this user \(uid 0\) or root/);
    });

    it('never appears in an error about another key', () => {
      for (const line of ['receiver_url = x', 'slot_name = Bad-Slot', 'streaming = perhaps', 'timeout = never', 'create_slot = now', 'log_level = loud']) {
        const inline = files.write(`[agent]\nreceiver = ws://b:1\nserver = main\ntoken = ${TOKEN}\n${line}\n`);
        const e = configErrorOf(() => loadAgentConfig(inline));
        expect(e.toUserText()).not.toContain(TOKEN);
      }
      const badUrl = files.write(`[agent]\nreceiver = http://b:1\nserver = main\ntoken = ${TOKEN}\n`);
      expect(configErrorOf(() => loadAgentConfig(badUrl)).toUserText()).not.toContain(TOKEN);
    });
  });
});
