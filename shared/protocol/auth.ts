// Challenge-response authentication with the per-server shared secret. The secret never crosses
// the wire: each side proves it knows it with an HMAC over both nonces, the server name and a
// role label, and the other side compares in constant time. The receiver proves itself too, so an
// agent never hands WAL to an impostor.

import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

export function newNonce(): Buffer {
  return randomBytes(32);
}

export function computeProof(secret: string, who: 'agent' | 'receiver', server: string, clientNonce: Uint8Array, serverNonce: Uint8Array): Buffer {
  return createHmac('sha256', secret)
    .update(`barman-ts/1 ${who} ${server}\n`)
    .update(clientNonce)
    .update(serverNonce)
    .digest();
}

export function proofMatches(expected: Uint8Array, given: Uint8Array): boolean {
  return expected.length === given.length && timingSafeEqual(expected, given);
}
