// LSN arithmetic. An LSN is a 64-bit position in the WAL; it is a bigint here and a string
// `HI/LO` (hex, as PostgreSQL prints it) at every edge. Never a JS number: bits are lost above 2^53.

export type Lsn = bigint;

const LSN_TEXT = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/;

export function parseLsn(text: string): Lsn {
  const m = LSN_TEXT.exec(text.trim());
  if (!m) throw new RangeError(`"${text}" is not an LSN (expected the form 16/B374D848)`);
  return (BigInt(`0x${m[1]}`) << 32n) | BigInt(`0x${m[2]}`);
}

export function isLsn(text: string): boolean {
  return LSN_TEXT.test(text.trim());
}

export function formatLsn(lsn: Lsn): string {
  const hi = (lsn >> 32n) & 0xffffffffn;
  const lo = lsn & 0xffffffffn;
  return `${hi.toString(16).toUpperCase()}/${lo.toString(16).toUpperCase()}`;
}
