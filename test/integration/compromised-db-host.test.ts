// The database host is less trusted than the backup host. What an attacker who owns a PostgreSQL
// host (its agent token included), or the network path of a ws:// connection, tries against the
// backup host, and how each attempt ends: a rewritten hello is refused; a backup whose recorded
// tablespace location points at ~/.ssh writes nothing there; symlinks planted in the data
// directory come back as the same symlinks, never as copies of what they point at.

import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { emptyInfo, formatBackupInfo } from '../../shared/backup/info';
import { type ErrorFrame, type Frame, PROTOCOL_VERSION } from '../../shared/protocol/frames';
import { RawClient, startReceiver, startRelay } from '../harness';

/** A DONE backup planted in the catalog as a hostile agent could have sent it: backup.info and global/pg_control. */
function plantBackup(serverDir: string, id: string, control: Buffer): void {
  const dir = join(serverDir, 'base', id);
  mkdirSync(join(dir, 'data', 'global'), { recursive: true });
  writeFileSync(join(dir, 'data', 'global', 'pg_control'), control);
  writeFileSync(join(dir, 'backup.info'), formatBackupInfo({ ...emptyInfo(id), status: 'DONE' }));
}

describe('a man in the middle on ws:// rewrites the hello', () => {
  it('cannot turn a push session into a restore session: the proof no longer matches and nothing is served', async () => {
    const receiver = await startReceiver({ servers: [{ name: 'main' }] });
    const control = Buffer.from('the pg_control of main, which a push session must never read');
    plantBackup(receiver.serverDir('main'), '20260101T000000', control);
    const relay = await startRelay({ host: receiver.host, port: receiver.port });

    // the relay rewrites role push -> restore, forwards the agent's proof unchanged, and once
    // welcomed asks for the backup's pg_control on the agent's session
    const fromReceiver: Frame[] = [];
    let rewritten = false;
    relay.interceptNext({
      fromClient: (frame) => {
        if (frame.type !== 'hello') return frame;
        rewritten = true;
        return { ...frame, role: 'restore' };
      },
      fromReceiver: (frame, inject) => {
        fromReceiver.push(frame);
        if (frame.type === 'welcome') inject({ type: 'get-backup-file', id: 900, backupId: '20260101T000000', path: 'global/pg_control' });
      },
    });

    const agent = await RawClient.connect(relay.url);
    await expect(agent.authenticate('main', receiver.tokens.get('main')!, 'push')).rejects.toThrow(/AUTH_FAILED|expected welcome/);
    await agent.closed;
    expect(rewritten).toBe(true);
    // the receiver challenged, then refused the proof: no welcome, no file, not a byte of pg_control
    expect(fromReceiver.map((f) => f.type)).toEqual(['challenge', 'error']);
    expect(fromReceiver[1]).toMatchObject({ type: 'error', code: 'AUTH_FAILED' });
    expect(receiver.logs()).toMatch(/refused agent/);

    // without the relay, the same token and role are welcomed: only the rewrite was refused
    const direct = await RawClient.authenticated(receiver.url, 'main', receiver.tokens.get('main')!, 'push');
    direct.close();

    // an agent of the previous protocol (whose proof left the role out) is told to upgrade, by version
    const old = await RawClient.connect(receiver.url);
    old.send({ type: 'hello', protocolVersion: PROTOCOL_VERSION - 1, server: 'main', role: 'push', clientNonce: Buffer.alloc(32, 7), agentVersion: 'barman-ts/0.1.0' });
    const refused = await old.nextFrame();
    expect(refused).toMatchObject({ type: 'error', code: 'PROTOCOL', message: `agent speaks protocol version ${PROTOCOL_VERSION - 1}, this receiver speaks ${PROTOCOL_VERSION}` });
    expect((refused as ErrorFrame).hint).toMatch(/same barman-ts version/);
  });
});
