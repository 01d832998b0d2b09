import { chmodSync, chownSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { SectionReader } from '../../../../shared/config/ini';
import { loadReceiverConfig, parseListen, parseStorageConfig } from '../../../../shared/config/receiver';
import { configErrorOf, tempFiles } from './files';

const files = tempFiles();
const TOKEN = 'S3cr3t-t0ken-0f-main-4f9c2b7e';
const tokenFile = files.write(`${TOKEN}\n`, 'main.token');

/** A receiver config with a valid [main] section; `barman` and `main` add lines to the sections. */
function conf(barman: string, main = '', extra = ''): string {
  return files.write(`[barman]\nbarman_home = ${files.dir}/home\n${barman}\n\n[main]\ntoken_file = ${tokenFile}\n${main}\n${extra}`);
}

/** No message or hint of an error may carry the secret. */
function expectNoSecret(text: string, secret = TOKEN) {
  expect(text).not.toContain(secret);
}

describe('loadReceiverConfig', () => {
  it('fills in the documented defaults', () => {
    const file = files.write(`[barman]\n\n[main]\ntoken_file = ${tokenFile}\n`);
    const c = loadReceiverConfig(file);
    expect(c.file).toBe(file);
    expect(c.barmanHome).toBe('/srv/barman');
    expect(c.listen).toEqual({ host: '127.0.0.1', port: 7480 });
    expect(c.tls).toBeUndefined();
    expect(c.logLevel).toBe('info');
    expect(c.compression).toBe('zstd');
    expect([...c.servers.keys()]).toEqual(['main']);
    expect(c.servers.get('main')).toEqual({ name: 'main', description: 'main', token: TOKEN, retentionPolicy: undefined, minimumRedundancy: 0, compression: 'zstd', backupChecksum: 'crc32c' });
  });

  it('reads a configuration that sets every key, section by section', () => {
    const file = files.write(`[barman]
barman_home = /srv/barman          ; default /srv/barman
listen = 127.0.0.1:7480            ; host:port of the WebSocket service
tls_cert = /etc/barman/tls.crt
tls_key = /etc/barman/tls.key
log_level = info
compression = gzip
backup_checksum = sha256

[main]
description = Main PostgreSQL server
token_file = ${tokenFile}
retention_policy = REDUNDANCY 2
minimum_redundancy = 1
compression = lz4
backup_checksum = crc32c

[reporting]
description = Reporting
token = ${'r'.repeat(32)}
retention_policy = RECOVERY WINDOW OF 7 DAYS
`);
    const c = loadReceiverConfig(file);
    expect(c.backupChecksum).toBe('sha256');
    expect(c.barmanHome).toBe('/srv/barman');
    expect(c.listen).toEqual({ host: '127.0.0.1', port: 7480 });
    expect(c.tls).toEqual({ cert: '/etc/barman/tls.crt', key: '/etc/barman/tls.key' });
    expect(c.compression).toBe('gzip');
    expect(c.servers.get('main')).toEqual({ name: 'main', description: 'Main PostgreSQL server', token: TOKEN, retentionPolicy: { kind: 'redundancy', count: 2 }, minimumRedundancy: 1, compression: 'lz4', backupChecksum: 'crc32c' });
    // a server without its own compression (or backup_checksum) does as [barman] says
    expect(c.servers.get('reporting')).toMatchObject({ token: 'r'.repeat(32), retentionPolicy: { kind: 'window', amount: 7, unit: 'days' }, compression: 'gzip', backupChecksum: 'sha256' });
  });

  it('reads timeout = seconds (default 30, at least 1)', () => {
    expect(loadReceiverConfig(conf('')).timeoutSeconds).toBe(30);
    expect(loadReceiverConfig(conf('timeout = 5')).timeoutSeconds).toBe(5);
    expect(configErrorOf(() => loadReceiverConfig(conf('timeout = 0'))).message).toMatch(/\[barman\] timeout: "0" is not a whole number >= 1/);
  });

  it("refuses a server's token_file that others may read, naming the file, its mode and chmod 600", () => {
    for (const mode of [0o644, 0o640, 0o604, 0o660, 0o666]) {
      const loose = files.write(`${TOKEN}\n`, `loose-${mode.toString(8)}.token`);
      chmodSync(loose, mode);
      const file = files.write(`[barman]\nbarman_home = ${files.dir}/home\n\n[main]\ntoken_file = ${loose}\n`);
      const e = configErrorOf(() => loadReceiverConfig(file));
      expect(e.message).toBe(`${file} [main] token_file: ${loose} has mode 0${mode.toString(8)}: the secret must not be readable by other users`);
      expect(e.hint).toContain(`chmod 600 ${loose}`);
      expectNoSecret(e.message + e.hint);
    }
    const tight = files.write(`${TOKEN}\n`, 'tight.token');
    chmodSync(tight, 0o400);
    expect(loadReceiverConfig(files.write(`[barman]\n\n[main]\ntoken_file = ${tight}\n`)).servers.get('main')!.token).toBe(TOKEN);
  });

  it.runIf(process.getuid?.() === 0)("refuses a server's token_file owned by another user (who could swap the secret)", () => {
    const foreign = files.write(`${TOKEN}\n`, 'foreign.token');
    chownSync(foreign, 65534, 65534);
    const file = files.write(`[barman]\n\n[main]\ntoken_file = ${foreign}\n`);
    const e = configErrorOf(() => loadReceiverConfig(file));
    expect(e.message).toBe(`${file} [main] token_file: ${foreign} belongs to uid 65534, not to this user (uid 0) or root`);
    expect(e.hint).toMatch(/chown root .*chmod 600/);
  });

  it('refuses a file it cannot read, naming it', () => {
    const missing = `${files.dir}/no-such.conf`;
    const e = configErrorOf(() => loadReceiverConfig(missing));
    expect(e.message).toContain(missing);
    expect(e.message).toContain('ENOENT');
  });

  it('refuses a file without [barman]', () => {
    const file = files.write(`[main]\ntoken_file = ${tokenFile}\n`);
    const e = configErrorOf(() => loadReceiverConfig(file));
    expect(e.message).toBe(`${file} [barman]: missing section`);
  });

  it('refuses a key outside any section', () => {
    const file = files.write(`barman_home = /srv/barman\n[barman]\n`);
    const e = configErrorOf(() => loadReceiverConfig(file));
    expect(e.message).toContain(file);
    expect(e.message).toContain('barman_home');
    expect(e.message).toContain('outside any section');
  });

  it('refuses a dotted section name', () => {
    const e = configErrorOf(() => loadReceiverConfig(conf('', '', `[main.replica]\ntoken_file = ${tokenFile}\n`)));
    expect(e.message).toMatch(/section names may not contain dots/);
  });

  it.each([
    ['barman', 'listen_address = 0.0.0.0:7480', '', 'listen_address'],
    ['barman', 'compresion = gzip', '', 'compresion'],
    ['main', '', 'retention = REDUNDANCY 2', 'retention'],
    ['main', '', 'conninfo = host=pg', 'conninfo'],
  ])('names the file, [%s] and the key of an unknown key (%s%s)', (section, barman, main, key) => {
    const file = conf(barman, main);
    const e = configErrorOf(() => loadReceiverConfig(file));
    expect(e.message).toBe(`${file} [${section}] ${key}: unknown key`);
  });

  it('refuses a relative barman_home', () => {
    const file = files.write(`[barman]\nbarman_home = srv/barman\n`);
    expect(configErrorOf(() => loadReceiverConfig(file)).message).toMatch(/\[barman\] barman_home: "srv\/barman" is not an absolute path/);
  });

  it.each([
    ['0.0.0.0:7480', '0.0.0.0', 7480],
    ['127.0.0.1:0', '127.0.0.1', 0],
    ['backup.example:65535', 'backup.example', 65535],
    ['[::1]:7480', '::1', 7480],
    ['[::]:7480', '::', 7480],
  ])('reads listen = %s', (text, host, port) => {
    expect(loadReceiverConfig(conf(`listen = ${text}`)).listen).toEqual({ host, port });
  });

  it.each(['7480', 'localhost', 'localhost:', ':7480', 'localhost:65536', 'localhost:123456', 'localhost:http', '::1:7480', 'localhost:-1', 'localhost:74 80'])('refuses listen = %s, naming file, section and key', (text) => {
    const file = conf(`listen = ${text}`);
    const e = configErrorOf(() => loadReceiverConfig(file));
    expect(e.message).toBe(`${file} [barman] listen: "${text}" is not host:port`);
    expect(() => parseListen(file, text)).toThrow(/is not host:port/);
  });

  it('takes tls_cert and tls_key as a pair', () => {
    expect(loadReceiverConfig(conf('tls_cert = /c.pem\ntls_key = /k.pem')).tls).toEqual({ cert: '/c.pem', key: '/k.pem' });
    const onlyCert = configErrorOf(() => loadReceiverConfig(conf('tls_cert = /c.pem')));
    expect(onlyCert.message).toMatch(/\[barman\] tls_key: tls_cert and tls_key go together/);
    const onlyKey = configErrorOf(() => loadReceiverConfig(conf('tls_key = /k.pem')));
    expect(onlyKey.message).toMatch(/\[barman\] tls_cert: tls_cert and tls_key go together/);
  });

  it.each(['none', 'gzip', 'lz4', 'zstd'] as const)('accepts compression = %s, for every server without its own', (value) => {
    const c = loadReceiverConfig(conf(`compression = ${value}`));
    expect(c.compression).toBe(value);
    for (const server of c.servers.values()) expect(server.compression).toBe(value);
  });

  it('reads compression case-insensitively', () => {
    expect(loadReceiverConfig(conf('compression = GZIP')).compression).toBe('gzip');
  });

  it('refuses a server\'s compression that is none of them, naming its section', () => {
    const file = files.write(`[barman]\nbarman_home = /srv/b\n[main]\ntoken_file = ${tokenFile}\ncompression = brotli\n`);
    expect(configErrorOf(() => loadReceiverConfig(file)).message).toContain('[main] compression: "brotli" is not valid; expected one of none, gzip, lz4, zstd');
  });

  it.each(['bzip2', 'xz', 'yes', 'gzip9'])('refuses compression = %s and lists what is allowed', (value) => {
    const e = configErrorOf(() => loadReceiverConfig(conf(`compression = ${value}`)));
    expect(e.message).toContain(`[barman] compression: "${value}" is not valid; expected one of none, gzip, lz4, zstd`);
  });

  it('refuses an unknown log_level', () => {
    expect(configErrorOf(() => loadReceiverConfig(conf('log_level = verbose'))).message).toMatch(/log_level: "verbose" is not valid; expected one of fatal, error, warn, info, debug, trace, silent/);
  });

  it('refuses a server section name that is not a server name', () => {
    const e = configErrorOf(() => loadReceiverConfig(conf('', '', `[-main]\ntoken_file = ${tokenFile}\n`)));
    expect(e.message).toContain('[-main]');
  });

  it('keeps several servers apart', () => {
    const other = files.write('0123456789abcdef-other\n');
    const c = loadReceiverConfig(conf('', 'description = first', `[second-srv]\ntoken_file = ${other}\n`));
    expect([...c.servers.keys()]).toEqual(['main', 'second-srv']);
    expect(c.servers.get('second-srv')?.token).toBe('0123456789abcdef-other');
    expect(c.servers.get('main')?.token).toBe(TOKEN);
  });

  describe('retention', () => {
    it.each([
      ['REDUNDANCY 2', { kind: 'redundancy', count: 2 }],
      ['RECOVERY WINDOW OF 7 DAYS', { kind: 'window', amount: 7, unit: 'days' }],
      ['RECOVERY WINDOW OF 4 WEEKS', { kind: 'window', amount: 4, unit: 'weeks' }],
    ])('reads retention_policy = %s', (text, policy) => {
      expect(loadReceiverConfig(conf('', `retention_policy = ${text}`)).servers.get('main')?.retentionPolicy).toEqual(policy);
    });

    it.each(['REDUNDANCY 0', 'REDUNDANCY', 'RECOVERY WINDOW OF 7 YEARS', 'KEEP 3'])('refuses retention_policy = %s, naming the key', (text) => {
      const file = conf('', `retention_policy = ${text}`);
      const e = configErrorOf(() => loadReceiverConfig(file));
      expect(e.message).toBe(`${file} [main] retention_policy: "${text}" is not a retention policy`);
      expect(e.hint).toMatch(/REDUNDANCY N or RECOVERY WINDOW OF N DAYS\|WEEKS\|MONTHS/);
    });

    it.each(['-1', 'one', '1.5'])('refuses minimum_redundancy = %s', (text) => {
      expect(configErrorOf(() => loadReceiverConfig(conf('', `minimum_redundancy = ${text}`))).message).toMatch(/\[main\] minimum_redundancy: .* is not a whole number/);
    });
  });

  describe('running it for years: metrics, housekeeping, check thresholds, drills', () => {
    it('leaves every one unset by default, housekeeping every hour', () => {
      const c = loadReceiverConfig(conf(''));
      expect(c.metricsListen).toBeUndefined();
      expect(c.housekeepingIntervalSeconds).toBe(3600);
      const main = c.servers.get('main')!;
      for (const key of ['minFreeSpace', 'maxWalAgeSeconds', 'lastBackupMaximumAgeSeconds', 'drillMaxAgeSeconds', 'pgBindir', 'drillSchedule', 'drillQuery', 'drillDatabase'] as const) expect(main[key], key).toBeUndefined();
    });

    it('reads them in [barman] as defaults that a server section overrides', () => {
      const c = loadReceiverConfig(conf(
        'metrics_listen = 127.0.0.1:9187\nhousekeeping_interval = 15 min\nmin_free_space = 10GB\nmax_wal_age = 1 hour\nlast_backup_maximum_age = 1 WEEK\ndrill_max_age = 8 days',
        'last_backup_maximum_age = 2 DAYS\nmin_free_space = 5%\ndrill_schedule = weekly\ndrill_query = select count(*) from orders\ndrill_database = shop\npg_bindir = /usr/lib/postgresql/15/bin',
        `[other]\ntoken_file = ${tokenFile}\n`,
      ));
      expect(c.metricsListen).toEqual({ host: '127.0.0.1', port: 9187 });
      expect(c.housekeepingIntervalSeconds).toBe(900);
      expect(c.servers.get('main')).toMatchObject({
        minFreeSpace: { kind: 'percent', percent: 5 }, maxWalAgeSeconds: 3600, lastBackupMaximumAgeSeconds: 2 * 86_400, drillMaxAgeSeconds: 8 * 86_400,
        drillSchedule: 'weekly', drillQuery: 'select count(*) from orders', drillDatabase: 'shop', pgBindir: '/usr/lib/postgresql/15/bin',
      });
      expect(c.servers.get('other')).toMatchObject({ minFreeSpace: { kind: 'bytes', bytes: 10 * 1024 ** 3 }, maxWalAgeSeconds: 3600, lastBackupMaximumAgeSeconds: 7 * 86_400, drillMaxAgeSeconds: 8 * 86_400 });
      expect(c.servers.get('other')?.drillSchedule).toBeUndefined();
    });

    it.each([
      ['barman', 'housekeeping_interval = soon', /\[barman\] housekeeping_interval: "soon" is not a duration/],
      ['barman', 'max_wal_age = 10', /\[barman\] max_wal_age: "10" is not a duration/],
      ['main', 'drill_max_age = 1 fortnight', /\[main\] drill_max_age: "1 fortnight" is not a duration/],
      ['main', 'min_free_space = plenty', /\[main\] min_free_space: "plenty" is not a size or a percentage/],
      ['barman', 'metrics_listen = 9187', /\[barman\] metrics_listen: "9187" is not host:port/],
      ['main', 'drill_schedule = hourly', /\[main\] drill_schedule: "hourly" is not valid; expected one of off, daily, weekly/],
      ['main', 'pg_bindir = bin', /\[main\] pg_bindir: "bin" is not an absolute path/],
    ])('refuses a malformed value in [%s]: %s', (section, line, message) => {
      const e = configErrorOf(() => loadReceiverConfig(section === 'barman' ? conf(line) : conf('', line)));
      expect(e.message).toMatch(message);
    });

    it('keeps the drill keys to server sections', () => {
      expect(configErrorOf(() => loadReceiverConfig(conf('drill_schedule = daily'))).message).toMatch(/\[barman\] drill_schedule: unknown key/);
    });
  });

  describe('the shared secret', () => {
    it('comes from token_file, trimmed of the newline', () => {
      expect(loadReceiverConfig(conf('')).servers.get('main')?.token).toBe(TOKEN);
    });

    it('may be inline as token =, and token_file wins when both are set', () => {
      const inline = 'i'.repeat(20);
      const file = files.write(`[barman]\nbarman_home = /srv/b\n[main]\ntoken = ${inline}\n`);
      expect(loadReceiverConfig(file).servers.get('main')?.token).toBe(inline);
      const both = files.write(`[barman]\nbarman_home = /srv/b\n[main]\ntoken = ${inline}\ntoken_file = ${tokenFile}\n`);
      expect(loadReceiverConfig(both).servers.get('main')?.token).toBe(TOKEN);
    });

    it('is required', () => {
      const file = files.write(`[barman]\nbarman_home = /srv/b\n[main]\ndescription = no secret\n`);
      const e = configErrorOf(() => loadReceiverConfig(file));
      expect(e.message).toBe(`${file} [main] token_file: missing required key (the shared secret)`);
    });

    it('refuses a token_file that does not exist, naming the key and the path', () => {
      const path = `${files.dir}/missing.token`;
      const file = files.write(`[barman]\nbarman_home = /srv/b\n[main]\ntoken_file = ${path}\n`);
      const e = configErrorOf(() => loadReceiverConfig(file));
      expect(e.message).toBe(`${file} [main] token_file: cannot read ${path} (ENOENT)`);
    });

    it('refuses a token_file that is a directory', () => {
      const file = files.write(`[barman]\nbarman_home = /srv/b\n[main]\ntoken_file = ${files.dir}\n`);
      expect(configErrorOf(() => loadReceiverConfig(file)).message).toMatch(/\[main\] token_file: cannot read .* \(EISDIR\)/);
    });

    it('refuses a secret shorter than 16 characters without showing it', () => {
      const short = 'shortsecret-15c';
      expect(short.length).toBe(15);
      const path = files.write(`${short}\n`);
      const viaFile = configErrorOf(() => loadReceiverConfig(files.write(`[barman]\nbarman_home = /srv/b\n[main]\ntoken_file = ${path}\n`)));
      expect(viaFile.message).toMatch(/token_file: the secret in .* is shorter than 16 characters/);
      expectNoSecret(viaFile.message + viaFile.hint, short);
      const inline = configErrorOf(() => loadReceiverConfig(files.write(`[barman]\nbarman_home = /srv/b\n[main]\ntoken = ${short}\n`)));
      expect(inline.message).toMatch(/\[main\] token: the secret is shorter than 16 characters/);
      expectNoSecret(inline.message + inline.hint, short);
    });

    it('never appears in an error about another key of the section or file', () => {
      const inline = `[barman]\nbarman_home = /srv/b\n[main]\ntoken = ${TOKEN}\n`;
      const broken = [
        `${inline}bogus = 1\n`,
        `${inline}retention_policy = nonsense\n`,
        `${inline}minimum_redundancy = many\n`,
        `${inline}[other]\ntoken = x\n`,
        `${inline}[bad name]\ntoken = ${TOKEN}\n`,
        `[barman]\nbarman_home = /srv/b\nlisten = nowhere\n[main]\ntoken = ${TOKEN}\n`,
        `[barman]\nbarman_home = /srv/b\ncompression = fast\n[main]\ntoken_file = ${tokenFile}\n`,
        `[barman]\nbarman_home = /srv/b\n[main]\ntoken_file = ${tokenFile}\ntoken_fil = ${TOKEN}\n`,
        `token = ${TOKEN}\n[barman]\n`,
      ];
      for (const text of broken) {
        const e = configErrorOf(() => loadReceiverConfig(files.write(text)));
        expectNoSecret(`${e.message}\n${e.hint}\n${e.toUserText()}`);
      }
    });
  });
});

describe('storage settings', () => {
  const ACCESS = 'AKIAEXAMPLE0000001';
  const SECRET = 'wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY';
  const credentials = files.write(`[default]\naws_access_key_id = ${ACCESS}\naws_secret_access_key = ${SECRET}\n`, 's3.credentials');
  const ca = files.write('-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n', 'ca.pem');
  const storageOf = (lines: string) => {
    const r = new SectionReader('/etc/barman.conf', 'barman', Object.fromEntries(lines.split('\n').filter(Boolean).map((l) => l.split(/\s*=\s*/, 2) as [string, string])));
    const storage = parseStorageConfig(r);
    r.finish();
    return storage;
  };

  it('is posix unless storage = s3', () => {
    expect(storageOf('')).toEqual({ kind: 'posix' });
    expect(storageOf('storage = posix')).toEqual({ kind: 'posix' });
    expect(loadReceiverConfig(conf('')).storage).toEqual({ kind: 'posix' });
  });

  it('reads the s3 keys of the SPEC with their defaults', () => {
    expect(storageOf(`storage = s3\ns3_bucket = barman\ns3_credentials_file = ${credentials}`)).toEqual({
      kind: 's3', endpoint: undefined, bucket: 'barman', region: 'us-east-1', prefix: '', forcePathStyle: true, credentials: { accessKeyId: ACCESS, secretAccessKey: SECRET }, ca: undefined,
    });
    const full = storageOf(`storage = s3\ns3_endpoint = https://s3.example.com:7480/\ns3_bucket = barman\ns3_region = eu-west-1\ns3_prefix = prod\ns3_force_path_style = off\ns3_credentials_file = ${credentials}\ns3_ca_file = ${ca}`);
    expect(full).toMatchObject({ endpoint: 'https://s3.example.com:7480', region: 'eu-west-1', prefix: 'prod/', forcePathStyle: false });
    expect(full.kind === 's3' && full.ca).toContain('BEGIN CERTIFICATE');
    // without a credentials file the SDK's own chain (environment, ~/.aws) applies
    expect(storageOf('storage = s3\ns3_bucket = barman')).toMatchObject({ credentials: undefined });
  });

  it('refuses what cannot work, naming the key, without echoing a secret', () => {
    const bad: [string, RegExp][] = [
      ['storage = ceph', /storage: "ceph" is not valid/],
      ['storage = s3', /s3_bucket: missing required key/],
      ['storage = s3\ns3_bucket = Bad_Bucket', /s3_bucket: "Bad_Bucket" is not a valid bucket name/],
      ['storage = s3\ns3_bucket = barman\ns3_endpoint = s3.example.com', /s3_endpoint: "s3.example.com" is not an http/],
      ['storage = s3\ns3_bucket = barman\ns3_prefix = a//b', /s3_prefix/],
      ['storage = s3\ns3_bucket = barman\ns3_force_path_style = maybe', /s3_force_path_style: "maybe" is not a boolean/],
      [`storage = s3\ns3_bucket = barman\ns3_credentials_file = ${files.dir}/missing`, /s3_credentials_file: cannot read .*missing \(ENOENT\)/],
      [`storage = s3\ns3_bucket = barman\ns3_credentials_file = ${files.write(`[other]\naws_access_key_id = ${ACCESS}\naws_secret_access_key = ${SECRET}\n`)}`, /has no \[default\] section/],
      [`storage = s3\ns3_bucket = barman\ns3_ca_file = ${credentials}`, /s3_ca_file: .* holds no PEM certificate/],
      ['s3_bucket = barman', /s3_bucket: is only used with storage = s3/],
    ];
    for (const [lines, message] of bad) {
      const e = configErrorOf(() => storageOf(lines));
      expect(e.message).toMatch(message);
      expectNoSecret(`${e.message}\n${e.hint}`, SECRET);
    }
  });

  it('is accepted by the whole configuration, not only its own section', () => {
    expect(loadReceiverConfig(conf(`storage = s3\ns3_bucket = barman\ns3_credentials_file = ${credentials}`)).storage).toMatchObject({ kind: 's3', bucket: 'barman' });
  });
});
