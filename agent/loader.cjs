#!/usr/bin/env node
// dist/barman-agent.cjs and dist/barman-receiver.cjs as scripts/build.mjs writes them: this loader
// with the program's bundle inside (SOURCE, one string), compiled from V8's code cache when
// <this file>.cache holds one made for exactly this source by this Node (the build makes it,
// running a command that stops at the configuration): PostgreSQL starts the agent once per WAL
// segment, and compiling the bundle from scratch is a good part of each start (and of a recover's). A cache that is missing, made for another bundle
// (its first 32 bytes are the bundle's SHA-256) or refused by V8 (another Node, other flags)
// only costs the compile it would have saved.
'use strict';

const SOURCE = __SOURCE__;
const SOURCE_SHA256 = __SOURCE_SHA256__;

const { readFileSync, renameSync, writeFileSync } = require('node:fs');
const Module = require('node:module');
const vm = require('node:vm');

let cachedData;
try {
  const cache = readFileSync(`${__filename}.cache`);
  if (cache.subarray(0, 32).toString('hex') === SOURCE_SHA256) cachedData = cache.subarray(32);
} catch {
  // no cache: compiled from the source
}
// (the bundle has no dynamic import(): a function compiled from the cache could not run one, even
// with vm's default-loader option; the build turns the node: builtins' into require())
const script = new vm.Script(Module.wrap(SOURCE), { filename: __filename, cachedData });
// the build asks for the cache of what this run compiled, written when it ends
const out = process.env.BARMAN_WRITE_CODE_CACHE;
if (out) {
  process.once('exit', () => {
    writeFileSync(`${out}.tmp`, Buffer.concat([Buffer.from(SOURCE_SHA256, 'hex'), script.createCachedData()]));
    renameSync(`${out}.tmp`, out);
  });
}
script.runInThisContext().call(module.exports, module.exports, require, module, __filename, __dirname);
