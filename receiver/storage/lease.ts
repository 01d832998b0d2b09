// A lease: one holder at a time for a key, on any driver, so two receivers pointed at the same
// server's catalog (same directory, or same bucket and prefix) cannot both write it. The holder
// renews it before it expires; a second claimant sees a live lease and is refused; a lease whose
// holder died expires and can be taken over.
//
// Built on one primitive every driver has: create-if-absent (posix: link(2); s3: PUT with
// `If-None-Match: *`). Each state of the lease is a new generation object `<key>/<generation>`
// (zero-padded, so byte order is numeric order); the highest generation is the lease. Acquiring,
// renewing, taking over and releasing all create the next generation, so of two claimants racing
// for the same step exactly one wins, and a holder whose lease was taken over learns it at its
// next renewal. Older generations are removed as new ones appear (the last two stay).
//
// Expiry is the holder's clock plus the TTL, read by the claimant's clock: receivers sharing a
// catalog must keep their clocks in step (NTP) to well within the TTL.

import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { BarmanError, ErrorCode } from '../../shared/errors';
import type { StorageDriver } from './storage';

export interface LeaseOwner {
  /** who holds it: stable for one receiver process (e.g. a random id made at start-up) */
  id: string;
  host: string;
  pid: number;
}

export interface LeaseRecord {
  owner: LeaseOwner;
  generation: number;
  acquiredAt: string;
  renewedAt: string;
  expiresAt: string;
  ttlMs: number;
  released: boolean;
  /** tells a holder that a generation which "already exists" is its own write that timed out */
  nonce: string;
}

const GEN_DIGITS = 16;
const genKey = (key: string, gen: number): string => `${key}/${String(gen).padStart(GEN_DIGITS, '0')}`;

export function ownerOfThisProcess(id = randomBytes(8).toString('hex')): LeaseOwner {
  return { id, host: hostname(), pid: process.pid };
}

/** The current lease record under `key`, if any (released and expired ones included). */
export async function readLease(driver: StorageDriver, key: string): Promise<LeaseRecord | undefined> {
  for (let attempt = 0; ; attempt++) {
    let last: string | undefined;
    for await (const info of driver.list(`${key}/`)) {
      if (/^\d+$/.test(info.key.slice(key.length + 1))) last = info.key;
    }
    if (!last) return undefined;
    try {
      return await readRecord(driver, last);
    } catch (err) {
      // removed by a newer generation's clean-up between the listing and the read: look again
      if (!(err instanceof BarmanError && err.code === ErrorCode.STORAGE_NOT_FOUND) || attempt >= 5) throw err;
    }
  }
}

async function readRecord(driver: StorageDriver, key: string): Promise<LeaseRecord> {
  const parts: Buffer[] = [];
  for await (const chunk of await driver.read(key)) parts.push(chunk as Buffer);
  try {
    return JSON.parse(Buffer.concat(parts).toString('utf8')) as LeaseRecord;
  } catch (err) {
    throw new BarmanError(ErrorCode.STORAGE_CORRUPT, `lease ${key} in ${driver.location} is not valid JSON`, 'Remove the lease object (only when no receiver runs for this server) and start again.', { cause: err });
  }
}

export function isLive(record: LeaseRecord, now = Date.now()): boolean {
  return !record.released && Date.parse(record.expiresAt) > now;
}

function describeHolder(r: LeaseRecord): string {
  return `${r.owner.id} (host ${r.owner.host}, pid ${r.owner.pid}) until ${r.expiresAt}`;
}

export class Lease {
  private timer: NodeJS.Timeout | undefined;
  /** the keep-alive's renewal in flight, if any: a release waits for it (else both race for one generation) */
  private renewing: Promise<unknown> | undefined;
  /** a renewal whose write failed without an answer: the next attempt at that generation reuses its nonce */
  private pending: LeaseRecord | undefined;

  private constructor(private readonly driver: StorageDriver, readonly key: string, private current: LeaseRecord) {}

  get record(): LeaseRecord {
    return this.current;
  }

  /**
   * Takes the lease for `owner` for `ttlMs`. Refused with LEASE_HELD while another owner's lease
   * is live; an expired or released one is taken over. The same owner id takes it back at once.
   */
  static async acquire(driver: StorageDriver, key: string, owner: LeaseOwner, ttlMs: number): Promise<Lease> {
    for (let attempt = 0; attempt < 8; attempt++) {
      const now = Date.now();
      const current = await readLease(driver, key);
      if (current && isLive(current, now) && current.owner.id !== owner.id) {
        throw new BarmanError(ErrorCode.LEASE_HELD, `${key} in ${driver.location} is held by ${describeHolder(current)}`, 'Another barman-receiver writes this server\'s catalog: stop it first. If it died, its lease expires at the time shown and can then be taken over.');
      }
      const acquiredAt = new Date(now).toISOString();
      const record = Lease.record(owner, (current?.generation ?? 0) + 1, acquiredAt, now, ttlMs);
      const stored = await Lease.create(driver, key, record);
      if (stored) return new Lease(driver, key, stored);
      // another claimant created that generation first: look again
    }
    throw new BarmanError(ErrorCode.LEASE_HELD, `${key} in ${driver.location} keeps changing hands`, 'Several receivers are competing for this server\'s catalog; run only one.');
  }

  private static record(owner: LeaseOwner, generation: number, acquiredAt: string, now: number, ttlMs: number, released = false, nonce = randomBytes(8).toString('hex')): LeaseRecord {
    return { owner, generation, acquiredAt, renewedAt: new Date(now).toISOString(), expiresAt: new Date(released ? now : now + ttlMs).toISOString(), ttlMs, released, nonce };
  }

  /**
   * Creates `record`'s generation; the record that is now the lease (the highest generation):
   * `record`, or the one an earlier attempt with the same nonce stored although its answer was
   * lost (its times, not these). Undefined when another write took that generation.
   */
  private static async create(driver: StorageDriver, key: string, record: LeaseRecord): Promise<LeaseRecord | undefined> {
    const target = genKey(key, record.generation);
    let stored: LeaseRecord | undefined = record;
    if (!(await driver.putIfAbsent(target, Buffer.from(JSON.stringify(record))))) {
      // our own earlier attempt may have landed although its answer was lost
      const existing = await readRecord(driver, target).catch(() => undefined);
      stored = existing?.nonce === record.nonce ? existing : undefined;
    }
    if (!stored) return undefined;
    const latest = await readLease(driver, key);
    if (latest?.generation !== record.generation) {
      // an old generation number, removed and made again by us: a newer lease exists
      await driver.remove(target);
      return undefined;
    }
    // keep the previous generation for whoever is reading it right now
    for await (const info of driver.list(`${key}/`)) {
      const gen = Number(info.key.slice(key.length + 1));
      if (Number.isInteger(gen) && gen < record.generation - 1) await driver.remove(info.key).catch(() => undefined);
    }
    return stored;
  }

  /** Extends the lease by its TTL from now; LEASE_LOST if it was taken over meanwhile. */
  async renew(): Promise<void> {
    const now = Date.now();
    const generation = this.current.generation + 1;
    // a renewal that failed may have landed (its answer lost): the retry carries the same nonce,
    // so it recognises its own write instead of taking it for another holder's
    const nonce = this.pending?.generation === generation ? this.pending.nonce : undefined;
    const next = Lease.record(this.current.owner, generation, this.current.acquiredAt, now, this.current.ttlMs, false, nonce);
    this.pending = next;
    const stored = await Lease.create(this.driver, this.key, next);
    this.pending = undefined;
    if (!stored) {
      const holder = await readLease(this.driver, this.key).catch(() => undefined);
      this.stopKeepAlive();
      throw new BarmanError(ErrorCode.LEASE_LOST, `${this.key} in ${this.driver.location} was taken over${holder ? ` by ${describeHolder(holder)}` : ''}`, 'This receiver stopped renewing in time (paused, or cut off from the storage) and another one took over; stop this one.');
    }
    this.current = stored;
  }

  /**
   * Gives the lease up at once (a claimant need not wait for expiry): the latest generation, if
   * it is this owner's (one of its writes may have landed unanswered), becomes a released one.
   */
  async release(): Promise<void> {
    this.stopKeepAlive();
    await this.renewing?.catch(() => undefined);
    for (let attempt = 0; attempt < 4; attempt++) {
      const latest = await readLease(this.driver, this.key);
      // lost already, or released: nothing of ours to give up
      if (!latest || latest.owner.id !== this.current.owner.id || latest.released) return;
      const next = Lease.record(this.current.owner, latest.generation + 1, this.current.acquiredAt, Date.now(), this.current.ttlMs, true);
      const stored = await Lease.create(this.driver, this.key, next);
      if (stored) {
        this.current = stored;
        return;
      }
    }
  }

  /**
   * Renews every `intervalMs` (default a third of the TTL). `onLost` is called once if the lease
   * was taken over, or could not be renewed before it expired.
   */
  keepAlive(onLost: (err: BarmanError) => void, intervalMs = Math.max(1, Math.floor(this.current.ttlMs / 3))): void {
    this.stopKeepAlive();
    let busy = false;
    this.timer = setInterval(() => {
      if (busy) return;
      busy = true;
      this.renewing = this.renew()
        .catch((err: unknown) => {
          if (err instanceof BarmanError && err.code === ErrorCode.LEASE_LOST) return onLost(err);
          if (Date.parse(this.current.expiresAt) <= Date.now()) {
            this.stopKeepAlive();
            onLost(new BarmanError(ErrorCode.LEASE_LOST, `${this.key} in ${this.driver.location} expired: it could not be renewed (${(err as Error).message})`, 'Check that this host reaches the storage; restart the receiver once it does.', { cause: err }));
          }
          // else: try again at the next tick, while the lease still holds
        })
        .finally(() => {
          busy = false;
          this.renewing = undefined;
        });
    }, intervalMs);
    this.timer.unref();
  }

  stopKeepAlive(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}
