// Challenge-response authentication with the per-server shared secret. The secret never crosses
// the wire: each side proves it knows it with an HMAC, and the other side compares in constant
// time. The receiver proves itself too, so an agent never hands WAL to an impostor.
//
// The proof covers everything in the hello that grants rights or changes what the session means
// (server, role, protocol version, agent version) and both nonces: a man in the middle on ws://
// who rewrites any of them (push -> restore, say) forwards a proof that no longer matches.

import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { HelloFrame } from './frames';

/** What a proof is bound to: the hello's fields and the challenge's nonce. */
export type ProofContext = Pick<HelloFrame, 'server' | 'role' | 'protocolVersion' | 'agentVersion' | 'clientNonce'> & { serverNonce: Uint8Array };

export function newNonce(): Buffer {
  return randomBytes(32);
}

/** A field of the proof's input: its length (u32, big-endian), then its bytes, so no two inputs encode alike. */
function field(value: string | Uint8Array): Buffer {
  const bytes = typeof value === 'string' ? Buffer.from(value, 'utf8') : Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  const length = Buffer.alloc(4);
  length.writeUInt32BE(bytes.length, 0);
  return Buffer.concat([length, bytes]);
}

export function computeProof(secret: string, who: 'agent' | 'receiver', ctx: ProofContext): Buffer {
  const hmac = createHmac('sha256', secret).update('barman-ts proof v2\n');
  for (const value of [who, ctx.server, ctx.role, String(ctx.protocolVersion), ctx.agentVersion, ctx.clientNonce, ctx.serverNonce]) hmac.update(field(value));
  return hmac.digest();
}

export function proofMatches(expected: Uint8Array, given: Uint8Array): boolean {
  return expected.length === given.length && timingSafeEqual(expected, given);
}
