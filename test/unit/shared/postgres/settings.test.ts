import { describe, expect, it } from 'vitest';
import { archiveSettingChecks, archivesThroughAgent, slotCheck } from '../../../../shared/postgres/settings';

describe('the settings archiving through the agent depends on', () => {
  it.each([
    ['barman-agent push %p', true],
    ['/usr/bin/node /opt/barman-ts/dist/barman-agent.cjs -c /etc/barman-agent.conf push %p', true],
    ['test ! -f /mnt/%f && cp %p /mnt/%f', false],
    ['/bin/true', false],
    ['', false],
  ])('archive_command %j points at the agent: %s', (command, expected) => {
    expect(archivesThroughAgent(command)).toBe(expected);
  });

  it('passes replica/logical, on/always and the agent; names each that is off', () => {
    expect(archiveSettingChecks({ walLevel: 'logical', archiveMode: 'always', archiveCommand: 'barman-agent push %p' }).map((c) => c.ok)).toEqual([true, true, true]);
    const bad = archiveSettingChecks({ walLevel: 'minimal', archiveMode: 'off', archiveCommand: '' });
    expect(bad.map((c) => [c.name, c.ok, c.detail])).toEqual([['wal_level', false, 'is minimal'], ['archive_mode', false, 'is off'], ['archive_command', false, 'is not set']]);
    expect(bad.every((c) => c.hint)).toBe(true);
  });

  it('wants the slot there, in use while the daemon streams, and not lost', () => {
    const slot = { name: 'barman_main', exists: true, active: true, restartLsn: '0/3000000', walStatus: 'reserved' };
    const streaming = { streaming: true, createdByDaemon: true };
    expect(slotCheck(slot, streaming)).toMatchObject({ name: 'replication slot', ok: true, detail: 'barman_main active, restart_lsn 0/3000000, wal_status reserved' });
    expect(slotCheck({ ...slot, exists: false }, streaming)).toMatchObject({ ok: false, detail: 'barman_main does not exist' });
    expect(slotCheck({ ...slot, walStatus: 'lost' }, streaming)).toMatchObject({ ok: false, detail: 'barman_main has lost WAL it needed (wal_status lost)' });
    expect(slotCheck({ ...slot, active: false }, streaming)).toMatchObject({ ok: false, detail: 'barman_main is not in use by a stream' });
  });

  it('on the database host, before the daemon runs: a slot it will create, or one not in use, is fine; a lost one is not', () => {
    const slot = { name: 'barman_main', exists: false, active: false, restartLsn: '', walStatus: '' };
    expect(slotCheck(slot, { streaming: false, createdByDaemon: true })).toMatchObject({ ok: true, detail: 'barman_main not there yet: the daemon creates it (create_slot = auto)' });
    expect(slotCheck(slot, { streaming: false, createdByDaemon: false })).toMatchObject({ ok: false, detail: 'barman_main does not exist' });
    expect(slotCheck({ ...slot, exists: true, restartLsn: '0/3000000', walStatus: 'reserved' }, { streaming: false, createdByDaemon: true })).toMatchObject({ ok: true, detail: 'barman_main not in use now (no daemon streaming), restart_lsn 0/3000000, wal_status reserved' });
    expect(slotCheck({ ...slot, exists: true, walStatus: 'lost' }, { streaming: false, createdByDaemon: true }).ok).toBe(false);
  });
});
