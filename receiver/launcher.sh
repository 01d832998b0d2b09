#!/bin/sh
# barman-receiver (and barman), as installed (scripts/build.mjs copies this file to
# dist/barman-receiver): runs the Node program beside it, dist/barman-receiver.cjs (which may be
# run directly and does the same), with glibc's malloc held to one arena. Each thread that
# allocates gets an arena of its own otherwise: the compression bindings' 1 MiB blocks, made on
# libuv's threads, came from fresh pages again and again, and a `recover` of an 807 MB backup
# took a quarter more system time (1.8-2.6 s against 1.1-2.2 s) and 0.1-0.4 s longer. A caller's
# value wins.
bundle=$(readlink -f -- "$0" 2>/dev/null) || bundle=$0
MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-1}
export MALLOC_ARENA_MAX
exec node "${bundle%/*}/barman-receiver.cjs" "$@"
