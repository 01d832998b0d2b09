// WebSocket framing (RFC 6455 §5.2) as it crosses a TCP relay, so a test can read and rewrite
// the protocol's frames in flight on ws:// (what a man in the middle can do without TLS): the
// HTTP upgrade passes as it is, then each message is cut out of the byte stream, unmasked, and
// may be replaced. No extensions (the agent and the receiver negotiate none) and no fragments.

/** One WebSocket frame cut out of the stream: its opcode, unmasked payload and original bytes. */
export interface WireMessage {
  opcode: number;
  payload: Buffer;
  raw: Buffer;
}

export const OPCODE_BINARY = 0x2;

/** Splits one direction of a connection into the HTTP upgrade and then whole WebSocket frames. */
export class WsStreamParser {
  private buffer = Buffer.alloc(0);
  private upgraded = false;

  /**
   * Feeds bytes; `onHttp` gets the upgrade request/response bytes, `onMessage` each whole frame.
   * Bytes of an incomplete frame wait for the next call.
   */
  push(chunk: Buffer, onHttp: (bytes: Buffer) => void, onMessage: (message: WireMessage) => void): void {
    this.buffer = Buffer.concat([this.buffer, chunk]);
    if (!this.upgraded) {
      const end = this.buffer.indexOf('\r\n\r\n');
      if (end < 0) return;
      onHttp(this.buffer.subarray(0, end + 4));
      this.buffer = this.buffer.subarray(end + 4);
      this.upgraded = true;
    }
    for (;;) {
      const message = this.nextMessage();
      if (!message) return;
      onMessage(message);
    }
  }

  private nextMessage(): WireMessage | undefined {
    const b = this.buffer;
    if (b.length < 2) return undefined;
    const opcode = b[0]! & 0x0f;
    const masked = (b[1]! & 0x80) !== 0;
    let length = b[1]! & 0x7f;
    let offset = 2;
    if (length === 126) {
      if (b.length < 4) return undefined;
      length = b.readUInt16BE(2);
      offset = 4;
    } else if (length === 127) {
      if (b.length < 10) return undefined;
      length = Number(b.readBigUInt64BE(2));
      offset = 10;
    }
    const maskKey = masked ? b.subarray(offset, offset + 4) : undefined;
    if (masked) offset += 4;
    if (b.length < offset + length) return undefined;
    const payload = Buffer.from(b.subarray(offset, offset + length));
    if (maskKey) for (let i = 0; i < payload.length; i++) payload[i] = payload[i]! ^ maskKey[i % 4]!;
    const raw = Buffer.from(b.subarray(0, offset + length));
    this.buffer = b.subarray(offset + length);
    return { opcode, payload, raw };
  }
}

/** A final binary frame carrying `payload`; masked (with a zero key) when a client sends it, as RFC 6455 requires. */
export function encodeWsBinary(payload: Buffer, fromClient: boolean): Buffer {
  const mask = fromClient ? 0x80 : 0;
  let header: Buffer;
  if (payload.length < 126) {
    header = Buffer.from([0x80 | OPCODE_BINARY, mask | payload.length]);
  } else if (payload.length < 0x10000) {
    header = Buffer.alloc(4);
    header[0] = 0x80 | OPCODE_BINARY;
    header[1] = mask | 126;
    header.writeUInt16BE(payload.length, 2);
  } else {
    header = Buffer.alloc(10);
    header[0] = 0x80 | OPCODE_BINARY;
    header[1] = mask | 127;
    header.writeBigUInt64BE(BigInt(payload.length), 2);
  }
  // a zero mask key leaves the payload as it is
  return Buffer.concat([header, fromClient ? Buffer.alloc(4) : Buffer.alloc(0), payload]);
}
