import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { computeProof, newNonce, proofMatches } from '../../../../shared/protocol/auth';

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

describe('computeProof', () => {
  it('is an HMAC-SHA256 (32 bytes) and the same for the same inputs', () => {
    const p = computeProof(SECRET, 'agent', 'main', client, server);
    expect(p.length).toBe(32);
    expect(computeProof(SECRET, 'agent', 'main', Buffer.from(client), Buffer.from(server)).equals(p)).toBe(true);
  });

  it('is keyed by the secret over role, server and both nonces (a fixed vector)', () => {
    const expected = createHmac('sha256', SECRET).update('barman-ts/1 agent main\n').update(client).update(server).digest();
    expect(computeProof(SECRET, 'agent', 'main', client, server).equals(expected)).toBe(true);
  });

  it('accepts nonces as plain Uint8Array views (as msgpack may hand them over)', () => {
    const backing = new Uint8Array(80);
    backing.set(client, 3);
    const view = backing.subarray(3, 35);
    expect(computeProof(SECRET, 'agent', 'main', view, server).equals(computeProof(SECRET, 'agent', 'main', client, server))).toBe(true);
  });

  it('differs for every input that differs', () => {
    const base = computeProof(SECRET, 'agent', 'main', client, server);
    const other = Buffer.from(client);
    other.writeUInt8(other.readUInt8(31) ^ 1, 31);
    const variants = {
      secret: computeProof(`${SECRET}x`, 'agent', 'main', client, server),
      role: computeProof(SECRET, 'receiver', 'main', client, server),
      server: computeProof(SECRET, 'agent', 'main2', client, server),
      clientNonce: computeProof(SECRET, 'agent', 'main', other, server),
      serverNonce: computeProof(SECRET, 'agent', 'main', client, other),
      swappedNonces: computeProof(SECRET, 'agent', 'main', server, client),
    };
    for (const [what, proof] of Object.entries(variants)) {
      expect(proof.equals(base), what).toBe(false);
    }
  });

  it('so the receiver\'s proof can never be replayed as the agent\'s', () => {
    const agent = computeProof(SECRET, 'agent', 'main', client, server);
    const receiver = computeProof(SECRET, 'receiver', 'main', client, server);
    expect(proofMatches(agent, receiver)).toBe(false);
  });
});

describe('proofMatches', () => {
  const proof = computeProof(SECRET, 'agent', 'main', client, server);

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
