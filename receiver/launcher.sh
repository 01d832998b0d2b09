#!/bin/sh
# barman-receiver (and barman), as installed (scripts/build.mjs copies this file to
# dist/barman-receiver): runs the Node program beside it, dist/barman-receiver.cjs (which may be
# run directly and does the same), with glibc's malloc held to one arena. Each thread that
# allocates gets an arena of its own otherwise: the compression bindings' 1 MiB blocks, made on
# libuv's threads, came from fresh pages again and again, and a `recover` of an 807 MB backup
# took a quarter more system time (1.8-2.6 s against 1.1-2.2 s) and 0.1-0.4 s longer. It also
# keeps up to 32 MiB freed at the top of its heap (M_TRIM_THRESHOLD) and takes blocks under 4 MiB
# from the heap (M_MMAP_THRESHOLD), where by default it gives memory back to the kernel as soon as
# 128 KiB-2 MiB lie free: a MiB freed and made again came from fresh pages, each one a page fault
# (~14 us on the small VMs we measure on), and that `recover` took 31-53 k faults and 2.6-3.3 s,
# against 25-27 k and 2.5-2.9 s. A caller's values win.
# the folder of the file a link points to (npm's bin directory): readlink, a program (7-8 ms to
# start on the small VMs we measure on), only where $0 is a link or names no folder
case $0 in
  */*) { [ -L "$0" ] && bundle=$(readlink -f -- "$0" 2>/dev/null); } || bundle=$0 ;;
  *) bundle=$(readlink -f -- "$0" 2>/dev/null) || bundle=$0 ;;
esac
MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-1}
MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-33554432}
MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-4194304}
export MALLOC_ARENA_MAX MALLOC_TRIM_THRESHOLD_ MALLOC_MMAP_THRESHOLD_
# No transparent huge pages for malloc's heap (glibc.malloc.hugetlb=1), which an earlier version
# asked for every command but `serve`: a huge page stays resident whole while any block in it
# lives, and a heap that holds the decompressed MiBs of a whole backup only grows. Recovering a
# backup of pgbench -s 200 (3 GB), five interleaved runs each: peak RSS 196-302 MiB with them,
# 193-202 without; wall 2.35-3.24 s against 2.06-2.71 (-s 50: 133-187 MiB against 131-135, 0.89-
# 1.56 s against 1.20-1.43); verify-backup of it 142-201 MiB against 134-149, as fast. (Measured
# with the relation files written with O_DIRECT; with buffered writes they had saved page faults.)
# `recover` and `drill` write a whole backup: every MiB of it decompressed in a buffer of its own,
# which V8 counts against the heap's limit for a full collection. Starting from the default
# limit, a few tens of MiB, a recover of an 807 MB backup ran 29-45 mark-compacts; with an
# initial old generation of 128 MiB, one, and a quarter less user CPU (median 2.06 -> 1.57 s over
# 5 interleaved runs), for 2-11 MiB more at its peak (the young generation's collections free the
# buffers).
# `serve` checks every MiB an agent sends the same way (a backup's frames and WAL's, each
# decompressed in a buffer of its own), and with the default limit (17-18 MiB, 9 of them live) a
# backup of pgbench -s 200 (3 GB) ran 61-156 mark-compacts, one every 20-50 MiB received, each
# started by the allocation limit with under 1.5 MiB allocated on V8's heap since the last: a
# quarter of the service's CPU (perf). With an initial old generation of 32 MiB, backups of -s 50
# and -s 200 took 1.6-1.9 and 4.9-5.0 s of the service's CPU against 2.2-2.6 and 5.9-7.8, and
# 2.8-3.1 and 6.6-6.7 s against 3.1-4.0 and 7.4-9.2 (two runs of two backups each); its peak RSS
# 108-126 MiB against 102-122 (64 MiB: as fast, and 119-143 MiB). Draining a WAL backlog is as
# fast either way. V8 does not take the code cache under another flag: these three compile the
# bundle from source (about 50 ms); every other command runs Node as it comes.
old_space=''
case " $* " in
  *' recover '*|*' drill '*) old_space=128 ;;
  *' serve '*) old_space=32 ;;
esac
exec node ${old_space:+"--initial-old-space-size=$old_space"} "${bundle%/*}/barman-receiver.cjs" "$@"
