// The floor of target 4 (bench/push.ts): the work one `barman-agent push` owes before it answers,
// done alone in a fresh Node process, with no connection and no receiver: read the segment in
// 1 MiB blocks, hash it (SHA-256) and compress each block (zstd level 1, the same binding and
// frames as the agent), write the frames to a temporary file, fsync it, rename it under its
// checksum and fsync the folder. A push does all of this and more (connect, authenticate, send,
// the receiver's own checks), so no push can cost less on this machine.
//
// node bench/push-floor.cjs <segment> <folder>
'use strict';

const { closeSync, fsyncSync, openSync, readSync, renameSync, writeSync } = require('node:fs');
const { createHash } = require('node:crypto');
const { basename, join } = require('node:path');

const BLOCK = 1024 * 1024;

/** the zstd binding of this platform, called directly: the package's wrapper drops the level */
function zstdBinding() {
  for (const libc of ['gnu', 'musl']) {
    try {
      return require(`@mongodb-js/zstd-linux-${process.arch}-${libc}`);
    } catch {
      // the other libc's build, or none for this platform
    }
  }
  throw new Error('no @mongodb-js/zstd binding for this platform');
}

async function main() {
  const [segment, folder] = process.argv.slice(2);
  if (!segment || !folder) throw new Error('usage: push-floor.cjs <segment> <folder>');
  const zstd = zstdBinding();
  const hash = createHash('sha256');
  const frames = [];
  const input = openSync(segment, 'r');
  try {
    for (;;) {
      // a buffer per block: each one is held until its frame is made
      const buf = Buffer.allocUnsafeSlow(BLOCK);
      const n = readSync(input, buf, 0, BLOCK, null);
      if (n === 0) break;
      const block = buf.subarray(0, n);
      // every block compresses on libuv's thread pool while the next is read and hashed here
      frames.push(zstd.compress(block, 1));
      hash.update(block);
    }
  } finally {
    closeSync(input);
  }
  const name = basename(segment);
  const tmp = join(folder, `.${name}.tmp`);
  const out = openSync(tmp, 'w');
  try {
    for (const frame of await Promise.all(frames)) writeSync(out, frame);
    fsyncSync(out);
  } finally {
    closeSync(out);
  }
  renameSync(tmp, join(folder, `${name}-${hash.digest('hex')}.zst`));
  const dir = openSync(folder, 'r');
  try {
    fsyncSync(dir);
  } finally {
    closeSync(dir);
  }
}

main().catch((err) => {
  process.stderr.write(`push-floor: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
