import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { computeProof, newNonce, type ProofContext, proofMatches } from '../../../../shared/protocol/auth';
import { PROTOCOL_VERSION, ROLES } from '../../../../shared/protocol/frames';

const SECRET = '0123456789abcdef0123456789abcdef';
const client = Buffer.alloc(32, 0xc1);
const server = Buffer.alloc(32, 0x5e);

describe('newNonce', () => {
  it('gives 32 fresh random bytes each time', () => {
    const a = newNonce();
    const b = newNonce();
    expect(a.length).toBe(32);
    expect(b.length).toBe(32);
    expect(a.equals(b)).toBe(false);
  });
});

const hello: ProofContext = { server: 'main', role: 'push', protocolVersion: PROTOCOL_VERSION, agentVersion: 'barman-ts/0.1.0', clientNonce: client, serverNonce: server };

describe('computeProof', () => {
  it('is an HMAC-SHA256 (32 bytes) and the same for the same inputs', () => {
    const p = computeProof(SECRET, 'agent', hello);
    expect(p.length).toBe(32);
    expect(computeProof(SECRET, 'agent', { ...hello, clientNonce: Buffer.from(client), serverNonce: Buffer.from(server) }).equals(p)).toBe(true);
  });

  it('is keyed by the secret over length-prefixed fields: who, server, role, protocol version, agent version, both nonces (a fixed vector)', () => {
    const field = (v: string | Buffer) => {
      const b = typeof v === 'string' ? Buffer.from(v) : v;
      const n = Buffer.alloc(4);
      n.writeUInt32BE(b.length);
      return Buffer.concat([n, b]);
    };
    const input = [field('agent'), field('main'), field('push'), field(String(PROTOCOL_VERSION)), field('barman-ts/0.1.0'), field(client), field(server)];
    const expected = createHmac('sha256', SECRET).update('barman-ts proof v2\n').update(Buffer.concat(input)).digest();
    expect(computeProof(SECRET, 'agent', hello).equals(expected)).toBe(true);
  });

  it('accepts nonces as plain Uint8Array views (as msgpack may hand them over)', () => {
    const backing = new Uint8Array(80);
    backing.set(client, 3);
    const view = backing.subarray(3, 35);
    expect(computeProof(SECRET, 'agent', { ...hello, clientNonce: view }).equals(computeProof(SECRET, 'agent', hello))).toBe(true);
  });

  it('binds every field of the hello that grants rights: a relay that rewrites any one of them forwards a proof that fails', () => {
    const base = computeProof(SECRET, 'agent', hello);
    const flipped = Buffer.from(client);
    flipped.writeUInt8(flipped.readUInt8(31) ^ 1, 31);
    const variants: Record<string, Buffer> = {
      secret: computeProof(`${SECRET}x`, 'agent', hello),
      who: computeProof(SECRET, 'receiver', hello),
      server: computeProof(SECRET, 'agent', { ...hello, server: 'main2' }),
      clientNonce: computeProof(SECRET, 'agent', { ...hello, clientNonce: flipped }),
      serverNonce: computeProof(SECRET, 'agent', { ...hello, serverNonce: flipped }),
      swappedNonces: computeProof(SECRET, 'agent', { ...hello, clientNonce: server, serverNonce: client }),
      protocolVersion: computeProof(SECRET, 'agent', { ...hello, protocolVersion: PROTOCOL_VERSION - 1 }),
      agentVersion: computeProof(SECRET, 'agent', { ...hello, agentVersion: 'barman-ts/0.0.9' }),
    };
    for (const role of ROLES.filter((r) => r !== hello.role)) variants[`role ${role}`] = computeProof(SECRET, 'agent', { ...hello, role });
    for (const [what, proof] of Object.entries(variants)) {
      expect(proofMatches(base, proof), what).toBe(false);
    }
  });

  it('cannot be fooled by moving bytes from one field to the next (fields are length-prefixed)', () => {
    const a = computeProof(SECRET, 'agent', { ...hello, server: 'main', agentVersion: 'xbarman' });
    const b = computeProof(SECRET, 'agent', { ...hello, server: 'mainx', agentVersion: 'barman' });
    expect(a.equals(b)).toBe(false);
  });

  it("so the receiver's proof can never be replayed as the agent's", () => {
    const agent = computeProof(SECRET, 'agent', hello);
    const receiver = computeProof(SECRET, 'receiver', hello);
    expect(proofMatches(agent, receiver)).toBe(false);
  });
});

describe('proofMatches', () => {
  const proof = computeProof(SECRET, 'agent', hello);

  it('matches an equal proof', () => {
    expect(proofMatches(proof, Buffer.from(proof))).toBe(true);
    expect(proofMatches(proof, new Uint8Array(proof))).toBe(true);
  });

  it('refuses a proof that differs in one bit', () => {
    for (const i of [0, 15, 31]) {
      const wrong = Buffer.from(proof);
      wrong.writeUInt8(wrong.readUInt8(i) ^ 0x80, i);
      expect(proofMatches(proof, wrong)).toBe(false);
    }
  });

  it('refuses a proof of the wrong length without throwing', () => {
    expect(proofMatches(proof, proof.subarray(0, 31))).toBe(false);
    expect(proofMatches(proof, Buffer.concat([proof, Buffer.alloc(1)]))).toBe(false);
    expect(proofMatches(proof, new Uint8Array(0))).toBe(false);
  });
});
