// The wire protocol between agent and receiver: one binary WebSocket message = one frame, a
// msgpack map with a `type`. Requests that expect an answer carry an `id`; answers echo it.
// This file is the single definition of every frame kind and of what makes a frame well formed.
//
// A file travels as  put|file (begin: name, size)  →  chunk*  →  end (sha256)  and is answered by
// ack or error. The sender hashes while it reads, the receiver hashes while it writes; the
// receiver acks only after fsync and a matching checksum.

export const PROTOCOL_VERSION = 1;
/** bytes of file data per chunk frame */
export const CHUNK_SIZE = 1024 * 1024;
/** the largest WebSocket message either side accepts (a chunk plus its envelope, with room) */
export const MAX_FRAME_BYTES = 2 * CHUNK_SIZE;
/** bytes a sender may have queued on its socket before it waits for drain */
export const SEND_HIGH_WATER = 4 * CHUNK_SIZE;

export type Role = 'push' | 'get' | 'daemon' | 'restore' | 'admin';
export const ROLES: readonly Role[] = ['push', 'get', 'daemon', 'restore', 'admin'];

/** What a put writes into. */
export type PutTarget = { kind: 'wal'; name: string };

export interface HelloFrame { type: 'hello'; protocolVersion: number; server: string; role: Role; clientNonce: Uint8Array; agentVersion: string }
export interface ChallengeFrame { type: 'challenge'; protocolVersion: number; serverNonce: Uint8Array }
export interface AuthFrame { type: 'auth'; proof: Uint8Array }
export interface WelcomeFrame { type: 'welcome'; sessionId: string; proof: Uint8Array }
export interface PutFrame { type: 'put'; id: number; target: PutTarget; size: number }
export interface FileFrame { type: 'file'; id: number; name: string; size: number }
export interface ChunkFrame { type: 'chunk'; id: number; data: Uint8Array }
export interface EndFrame { type: 'end'; id: number; sha256: string }
export interface GetFrame { type: 'get'; id: number; name: string }
export interface AckFrame { type: 'ack'; id: number; status: 'stored' | 'duplicate' | 'sent'; sha256: string }
export interface ErrorFrame { type: 'error'; id?: number; code: string; message: string; hint: string }

export type Frame = HelloFrame | ChallengeFrame | AuthFrame | WelcomeFrame | PutFrame | FileFrame | ChunkFrame | EndFrame | GetFrame | AckFrame | ErrorFrame;
export type FrameType = Frame['type'];

// ---- validation -----------------------------------------------------------------------------

type Check = (v: unknown) => boolean;
const str = (max: number): Check => (v) => typeof v === 'string' && v.length <= max;
const uint: Check = (v) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const bytes = (max: number): Check => (v) => v instanceof Uint8Array && v.length <= max;
const exact = (n: number): Check => (v) => v instanceof Uint8Array && v.length === n;
const oneOf = (...allowed: string[]): Check => (v) => typeof v === 'string' && allowed.includes(v);
const hex64: Check = (v) => typeof v === 'string' && /^[0-9a-f]{64}$/.test(v);
const target: Check = (v) => {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return false;
  const t = v as Record<string, unknown>;
  return Object.keys(t).length === 2 && t.kind === 'wal' && str(64)(t.name);
};

interface Shape { required: Record<string, Check>; optional?: Record<string, Check> }

const SHAPES: Record<FrameType, Shape> = {
  hello: { required: { protocolVersion: uint, server: str(63), role: oneOf(...ROLES), clientNonce: exact(32), agentVersion: str(64) } },
  challenge: { required: { protocolVersion: uint, serverNonce: exact(32) } },
  auth: { required: { proof: exact(32) } },
  welcome: { required: { sessionId: str(64), proof: exact(32) } },
  put: { required: { id: uint, target, size: uint } },
  file: { required: { id: uint, name: str(255), size: uint } },
  chunk: { required: { id: uint, data: bytes(CHUNK_SIZE) } },
  end: { required: { id: uint, sha256: hex64 } },
  get: { required: { id: uint, name: str(255) } },
  ack: { required: { id: uint, status: oneOf('stored', 'duplicate', 'sent'), sha256: hex64 } },
  error: { required: { code: str(64), message: str(4096), hint: str(4096) }, optional: { id: uint } },
};

/** Returns the frame typed, or a reason it is malformed. Unknown keys are malformed too. */
export function validateFrame(value: unknown): Frame | string {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return 'frame is not a map';
  const obj = value as Record<string, unknown>;
  const type = obj.type;
  if (typeof type !== 'string' || !Object.hasOwn(SHAPES, type)) return `unknown frame type ${JSON.stringify(type)?.slice(0, 40)}`;
  const shape = SHAPES[type as FrameType];
  for (const [key, check] of Object.entries(shape.required)) {
    if (!check(obj[key])) return `${type} frame: field "${key}" is missing or malformed`;
  }
  for (const key of Object.keys(obj)) {
    if (key === 'type' || Object.hasOwn(shape.required, key)) continue;
    const check = shape.optional?.[key];
    if (!check) return `${type} frame: unexpected field "${key.slice(0, 40)}"`;
    if (!check(obj[key])) return `${type} frame: field "${key}" is malformed`;
  }
  return obj as unknown as Frame;
}
