#!/usr/bin/env node
// dist/barman-agent.cjs and dist/barman-receiver.cjs as scripts/build.mjs writes them: this loader,
// then the program's bundle in a comment at the end of the file, compiled from V8's code cache when
// <this file>.cache holds one made for exactly this bundle by this Node (the build makes it,
// running a command that stops at the configuration): PostgreSQL starts the agent once per WAL
// segment, and compiling the bundle from scratch is a good part of each start (and of a
// recover's). A cache that is missing, made for another bundle (its first 32 bytes are the
// bundle's SHA-256) or refused by V8 (another Node, other flags) only costs the compile it would
// have saved.
//
// The bundle is a comment in the body of the function bundle() that ends the file, not a string
// literal: V8 skips a comment at the speed of a memchr, where it parsed a 1 MB string literal of
// escapes in ~27 ms on every start, and bundle.toString() hands back that part of the text Node
// read (a slice of it, not a second read of the file). The build makes the bundle ASCII (one-byte
// text) and writes each `*/` inside it as `*`, U+0001, `/` (the bundle has no U+0001 of its
// own; the build checks).
'use strict';

const SOURCE_SHA256 = __SOURCE_SHA256__;

const { readFileSync, renameSync, writeFileSync } = require('node:fs');
const vm = require('node:vm');

// (a function declaration: defined here already, though it comes last)
const self = typeof bundle === 'function' ? bundle.toString() : '';
const head = 'function bundle() {/*barman-bundle\n';
if (!self.startsWith(head) || !self.endsWith('*/}')) throw new Error(`${__filename} is damaged: the program's bundle is missing or cut short. Run npm run build (or npm ci) again, or copy the file from a good build.`);
// (a slice of the text Node read: no copy, unless some `*/` had to be written otherwise)
const body = self.slice(head.length, -3);
const SOURCE = body.includes('\x01') ? body.replaceAll('*\x01/', '*/') : body;

let cachedData;
try {
  const cache = readFileSync(`${__filename}.cache`);
  if (cache.subarray(0, 32).toString('hex') === SOURCE_SHA256) cachedData = cache.subarray(32);
} catch {
  // no cache: compiled from the source
}
// (the bundle has no dynamic import(): a function compiled from the cache could not run one, even
// with vm's default-loader option; the build refuses a bundle that has one)
// (the build wrapped the bundle as Module.wrap() would)
const script = new vm.Script(SOURCE, { filename: __filename, cachedData });
// the build asks for the cache of what this run compiled, written when it ends
const out = process.env.BARMAN_WRITE_CODE_CACHE;
if (out) {
  process.once('exit', () => {
    writeFileSync(`${out}.tmp`, Buffer.concat([Buffer.from(SOURCE_SHA256, 'hex'), script.createCachedData()]));
    renameSync(`${out}.tmp`, out);
  });
}
script.runInThisContext().call(module.exports, module.exports, require, module, __filename, __dirname);
