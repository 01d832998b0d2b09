#!/bin/sh
# barman-agent, as installed (scripts/build.mjs copies this file to dist/barman-agent): answers
# what it can without starting Node, and hands everything else to the Node program beside it,
# dist/barman-agent.cjs, which can do all of it too (and may be run directly).
#
# Without Node:
# - `push <path>` (archive_command) when the daemon has pushed that segment already: its ack in
#   <spool_dir>/acked/<segment> (agent/wal/spool.ts) must name this server and receiver, and the
#   file the daemon read: the same device, inode, size, mtime and ctime (to the nanosecond) as
#   `stat` prints now, and the system identifier in the page header now (a page header that
#   also matches the name: timeline, address, segment size). Anything not acked yet is waited
#   for while a daemon connected to the receiver lives (<spool_dir>/acked/.daemon, and no
#   <segment>.failed); otherwise, and for every mismatch, Node pushes the file itself.
# - `get-wal <segment> <dest>` when the prefetcher fetched that segment ahead into
#   <spool_dir>/prefetch/<segment>-<sha256> (agent/wal/prefetch.ts), or is downloading it (then this
#   waits for it); a segment served is recorded as the one asked for (.requested), which keeps the
#   prefetcher going. The file is moved next to <dest>, checked, and only then renamed to <dest>:
#   its page header (timeline, address, segment size: the bytes must be the segment its name
#   says), and its bytes: where `stat` prints, before the move, exactly what the prefetcher
#   recorded in .<segment>-<sha256>.id once the copy was in place (device, inode, size, mtime,
#   ctime), and after it the same but the ctime the move itself changed, the copy is the file the
#   prefetcher hashed as it arrived, unwritten since; otherwise it is read back against its
#   SHA-256. Anything that does not check out is removed and Node asks the receiver.
# Only POSIX sh and coreutils (sha256sum, od, stat, mv, readlink, sleep, date), and `openssl`
# where it is installed; any configuration or argument this script does not fully understand goes
# to Node, which is always right.

# $1 without leading and trailing blanks, into $trimmed (no subshell: this runs for every line
# of the configuration, on the path PostgreSQL waits on)
trim() {
  trimmed=${1#"${1%%[![:space:]]*}"}
  trimmed=${trimmed%"${trimmed##*[![:space:]]}"}
}

# `[-c FILE] <command> [-c FILE] [<arg1> [<arg2>]]` into config, cmd, arg1, arg2 and nargs; fails
# on any other option or a third argument
parse_args() {
  config='' cmd='' arg1='' arg2='' nargs=0
  while [ $# -gt 0 ]; do
    case $1 in
      -c|--config) [ $# -ge 2 ] || return 1; config=$2; shift ;;
      --config=*) config=${1#--config=} ;;
      -*) return 1 ;;
      *)
        if [ -z "$cmd" ]; then cmd=$1
        elif [ $nargs -eq 0 ]; then arg1=$1 nargs=1
        elif [ $nargs -eq 1 ]; then arg2=$1 nargs=2
        else return 1
        fi ;;
    esac
    shift
  done
}

# $1 is a WAL segment's name: 24 upper-case hex digits
segment_name() {
  case $1 in *[!0-9A-F]*|'') return 1 ;; esac
  [ ${#1} -eq 24 ]
}

# the configuration file as Node finds it: $1 (-c), else $BARMAN_AGENT_CONFIG, ~/.barman-agent.conf,
# /etc/barman-agent.conf; sets cfg_file
find_config() {
  cfg_file=$1
  if [ -z "$cfg_file" ]; then
    if [ -n "${BARMAN_AGENT_CONFIG:-}" ]; then cfg_file=$BARMAN_AGENT_CONFIG
    elif [ -n "${HOME:-}" ] && [ -e "$HOME/.barman-agent.conf" ]; then cfg_file=$HOME/.barman-agent.conf
    elif [ -e /etc/barman-agent.conf ]; then cfg_file=/etc/barman-agent.conf
    else return 1
    fi
  fi
  [ -f "$cfg_file" ] && [ -r "$cfg_file" ]
}

# spool_dir (default /var/lib/barman-agent), server and receiver of the [agent] section of config
# file $1 into cfg_spool, cfg_server, cfg_receiver; fails on anything Node's INI reader might read
# differently (quotes, escapes)
read_config() {
  section='' cfg_spool='' cfg_server='' cfg_receiver=''
  while IFS= read -r line || [ -n "$line" ]; do
    trim "${line%%[;#]*}"; line=$trimmed
    case $line in
      '') ;;
      '['*']') trim "${line#[}"; trim "${trimmed%]}"; section=$trimmed ;;
      *=*)
        [ "$section" = agent ] || continue
        trim "${line%%=*}"; key=$trimmed
        case $key in spool_dir|server|receiver) ;; *) continue ;; esac
        trim "${line#*=}"; value=$trimmed
        case $value in *[\"\'\\]*) return 1 ;; esac
        case $key in
          spool_dir) cfg_spool=$value ;;
          server) cfg_server=$value ;;
          receiver) cfg_receiver=$value ;;
        esac
        ;;
    esac
  done < "$1"
  cfg_spool=${cfg_spool:-/var/lib/barman-agent}
}

# file $1 starts with the long page header of the WAL segment named $2, of $3 bytes (the header
# says the segment size); sets hdr_sysid_hi and hdr_sysid_lo (the system identifier's two halves,
# decimal: no `printf` subshell, a fork, on the path PostgreSQL waits on)
header_ok() {
  file=$1 name=$2 size=$3
  # long page header, host byte order as PostgreSQL writes it: magic|info, tli, pageaddr lo, hi,
  # rem_len, pad, sysid lo, hi, seg_size, blcksz
  # shellcheck disable=SC2046
  set -- $(od -An -v -tu4 -N40 -- "$file") || return 1
  [ $# -eq 10 ] || return 1
  magic=$(($1 & 65535)) info=$(($1 >> 16)) tli=$2 lo=$3 hi=$4 segsize=$9
  hdr_sysid_hi=$8 hdr_sysid_lo=$7
  [ $((magic >> 12)) -eq 13 ] && [ $((info & 2)) -eq 2 ] || return 1
  [ "$segsize" -ge 1048576 ] && [ "$segsize" -le 1073741824 ] && [ $((segsize & (segsize - 1))) -eq 0 ] || return 1
  [ "$size" = "$segsize" ] || return 1
  rest=${name#????????} ; ntli=${name%"$rest"} ; nseg=${rest#????????} ; nlog=${rest%"$nseg"}
  [ "$tli" -eq $((0x$ntli)) ] || return 1
  [ $((0x$nseg)) -lt $((4294967296 / segsize)) ] || return 1
  addr=$((0x$nseg * segsize))
  [ "$hi" -eq $((0x$nlog + addr / 4294967296)) ] && [ "$lo" -eq $((addr % 4294967296)) ]
}

# what file $1 is now, as agent/wal/spool.ts spells a file's identity, into ident (size=... dev=...
# ino=... mtime=... ctime=..., to the nanosecond) and ident_size
identity_of() {
  # shellcheck disable=SC2046
  set -- $(stat -L -c '%s %d %i %.9Y %.9Z' -- "$1" 2>/dev/null) || return 1
  [ $# -eq 5 ] || return 1
  ident_size=$1
  ident="size=$1 dev=$2 ino=$3 mtime=$4 ctime=$5"
}

# file $1 has SHA-256 $3 and is a whole WAL segment named $2. OpenSSL hashes it where its command
# is installed: it uses the CPU's SHA instructions where there are some, and coreutils' sha256sum
# does not (a get-wal of a 16 MiB segment took 15-17 ms instead of 39-41 on the machine we
# measure on, and PostgreSQL's replay waits for each one). Where openssl is missing, fails, or
# prints no matching digest first, sha256sum decides: a copy is refused only when sha256sum
# finds it differs, so a damaged copy is hashed twice, and an odd openssl costs time, never a
# segment.
segment_ok() {
  { command -v openssl >/dev/null 2>&1 && actual=$(openssl dgst -sha256 -r < "$1" 2>/dev/null) && [ "${actual%% *}" = "$3" ]; } ||
    { actual=$(sha256sum -b < "$1") && [ "${actual%% *}" = "$3" ]; } || return 1
  identity_of "$1" && header_ok "$1" "$2" "$ident_size"
}

# get-wal from the spool; returns (to hand over to Node) unless it served the segment
get_wal_from_spool() {
  parse_args "$@" || return 1
  [ "$cmd" = get-wal ] && [ $nargs -eq 2 ] && [ -n "$arg2" ] || return 1
  name=$arg1 dest=$arg2
  segment_name "$name" || return 1
  find_config "$config" || return 1
  read_config "$cfg_file" || return 1
  spool=$cfg_spool
  dir=$spool/prefetch
  [ -d "$dir" ] || return 1
  serve_from "$dir" "$name" "$dest"
  [ $? -eq 1 ] || return 1
  # not there yet, but the prefetcher is downloading it: wait for it (at most 30 s)
  i=0
  while [ $i -lt 3000 ] && downloading "$dir" "$name" && prefetcher_alive "$dir"; do
    sleep 0.01
    i=$((i + 1))
  done
  serve_from "$dir" "$name" "$dest"
  return 1
}

# serves segment $2 from spool folder $1 into $3 and exits 0; returns 1 when the spool has no copy,
# 2 when its copy did not check out (it is removed)
serve_from() {
  for entry in "$1/$2"-*; do
    [ -f "$entry" ] && [ ! -L "$entry" ] || continue
    sum=${entry##*-}
    case $sum in *[!0-9a-f]*) continue ;; esac
    [ ${#sum} -eq 64 ] || continue
    case $3 in */*) tmp=${3%/*} ;; *) tmp=. ;; esac
    tmp="$tmp/.$2.$$.spool"
    # what the prefetcher recorded of its copy, and whether the copy still is that file
    recorded='' unchanged='' record="$1/.${entry##*/}.id"
    [ -f "$record" ] && { read -r recorded < "$record"; } 2>/dev/null
    [ -n "$recorded" ] && identity_of "$entry" && [ "$ident" = "$recorded" ] && unchanged=1
    mv -f -- "$entry" "$tmp" 2>/dev/null || return 2
    # the same file after the move (its ctime is the move's)
    [ -n "$unchanged" ] && identity_of "$tmp" && [ "${ident% ctime=*}" = "${recorded% ctime=*}" ] || unchanged=''
    if { if [ -n "$unchanged" ]; then header_ok "$tmp" "$2" "$ident_size"; else segment_ok "$tmp" "$2" "$sum"; fi; } 2>/dev/null && mv -f -- "$tmp" "$3"; then
      # what PostgreSQL asked for: the prefetcher keeps the segments after it coming (on a miss, Node records it)
      printf '%s\n' "$2" > "$1/.requested.$$" 2>/dev/null && mv -f -- "$1/.requested.$$" "$1/.requested"
      exit 0
    fi
    rm -f -- "$tmp"
    return 2
  done
  return 1
}

# a download of segment $2 is under way in spool folder $1
downloading() {
  for t in "$1/.$2".*.tmp; do
    [ -e "$t" ] && return 0
  done
  return 1
}

# the prefetcher of spool folder $1 runs (its pid alive, its lock refreshed within 10 s)
prefetcher_alive() {
  pid_file_alive "$1/.prefetcher"
}

# the pid in file $1 is alive and, unless $2 is `quick`, the file was refreshed within 10 s (a pid
# reused by another process after a crash does not pass for long); `quick` runs no program (the
# freshness takes `date` and `stat`, four forks), for a wait that checks often
pid_file_alive() {
  [ -f "$1" ] || return 1
  pid=''
  read -r pid < "$1" 2>/dev/null || return 1
  case $pid in ''|*[!0-9]*) return 1 ;; esac
  kill -0 "$pid" 2>/dev/null || return 1
  [ "${2:-}" = quick ] && return 0
  [ $(($(date +%s) - $(stat -c %Y -- "$1" 2>/dev/null || echo 0))) -le 10 ]
}

# push from the daemon's ack; returns (to hand over to Node) unless the segment is acked
push_from_ack() {
  parse_args "$@" || return 1
  [ "$cmd" = push ] && [ $nargs -eq 1 ] && [ -n "$arg1" ] || return 1
  path=$arg1 name=${arg1##*/}
  segment_name "$name" || return 1
  find_config "$config" || return 1
  read_config "$cfg_file" || return 1
  [ -n "$cfg_server" ] && [ -n "$cfg_receiver" ] || return 1
  dir=$cfg_spool/acked
  [ -d "$dir" ] && [ -f "$path" ] || return 1
  # no ack and no daemon to wait for (archive_command without the daemon): straight to Node, without
  # the two programs below (7-8 ms each to start here)
  [ -f "$dir/$name" ] || daemon_alive "$dir" quick || return 1
  # what the file is now; the ack must say the same of the file the daemon read
  identity_of "$path" || return 1
  header_ok "$path" "$name" "$ident_size" || return 1
  now="name=$name $ident"
  acked "$dir/$name" && exit 0
  # not acked (yet): wait while a daemon connected to the receiver lives and has not given up on
  # it (at most 60 s; the daemon pushes the oldest segments first, as PostgreSQL asks for them).
  # Every poll starts a `sleep` (about 2 ms of CPU here, taken from the daemon that does the work):
  # the first after 10 ms, then every 25, then every 50. Before each, the daemon's pid must be
  # alive (no program run); that it refreshed its pid file too (`date`, `stat`) is checked once
  # the wait passes 100 ms, then every 500 ms: a daemon gone is noticed at the next poll, a pid
  # reused after a crash within 100 ms
  waited=0 step=10 fresh_at=100
  while [ $waited -lt 60000 ]; do
    [ -e "$dir/$name.failed" ] && return 1
    if [ $waited -ge $fresh_at ]; then
      daemon_alive "$dir" || return 1
      fresh_at=$((waited + 500))
    else
      daemon_alive "$dir" quick || return 1
    fi
    case $step in 10) sleep 0.01 ;; 25) sleep 0.025 ;; *) sleep 0.05 ;; esac
    waited=$((waited + step))
    case $step in 10) step=25 ;; *) step=50 ;; esac
    acked "$dir/$name" && exit 0
  done
  return 1
}

# ack file $1 is for this server and receiver and for the file as it is now ($now, and the system
# identifier of its page header)
acked() {
  [ -f "$1" ] || return 1
  line=''
  read -r line < "$1" 2>/dev/null || return 1
  sum=${line##* sha256=}
  case $sum in *[!0-9a-f]*) return 1 ;; esac
  [ ${#sum} -eq 64 ] || return 1
  # the system identifier as the ack spells it (16 hex digits), equal to the header's halves
  sysid=${line##* sysid=}; sysid=${sysid%% *}
  case $sysid in *[!0-9a-f]*) return 1 ;; esac
  [ ${#sysid} -eq 16 ] || return 1
  [ $((0x${sysid%????????})) -eq "$hdr_sysid_hi" ] && [ $((0x${sysid#????????})) -eq "$hdr_sysid_lo" ] || return 1
  # the receiver as Node spells it (URL.href) or as the configuration does
  for r in "$cfg_receiver/" "$cfg_receiver"; do
    [ "$line" = "barman-ack-1 server=$cfg_server receiver=$r $now sysid=$sysid sha256=$sum" ] && return 0
  done
  return 1
}

# a daemon connected to the receiver runs: the pid in spool folder $1/.daemon is alive and it
# refreshed the file within 10 s (unless $2 is `quick`)
daemon_alive() {
  pid_file_alive "$1/.daemon" "${2:-}"
}

case " $* " in
  *' push '*) push_from_ack "$@" ;;
  *' get-wal '*) get_wal_from_spool "$@" ;;
esac
# the folder of the file a link points to (npm's bin directory): readlink, a program (7-8 ms to
# start on the small VMs we measure on), only where $0 is a link or names no folder
case $0 in
  */*) { [ -L "$0" ] && bundle=$(readlink -f -- "$0" 2>/dev/null); } || bundle=$0 ;;
  *) bundle=$(readlink -f -- "$0" 2>/dev/null) || bundle=$0 ;;
esac
# glibc gives each thread that allocates its own malloc arena and keeps what was freed there: the
# zstd binding compressing a backup's files on libuv's four threads made the daemon 30 MiB larger
# (106-122 MiB at the end of a backup); with one arena 89-93 MiB, as fast. The commands that run
# and exit also keep up to 32 MiB freed in the heap, and take blocks under 4 MiB from it, as the
# receiver does (receiver/launcher.sh says why): an agent `restore` of an 807 MB backup took 38-41 k
# page faults, 25-28 k so. Not the daemon: it lives on, and kept so its peak during a backup of
# pgbench -s 200 went from 108 to 113-124 MiB. A caller's values win.
# The daemon's V8 young generation is held to 2 MiB semi-spaces (16 by default): at its peak RSS
# during a backup of pgbench -s 200, V8 had committed 44 MiB of heap for 11 MiB of objects; so
# 13-15 MiB. The rest of that peak was native memory, and it grew from one backup to the next
# (the zstd binding takes 1.3 MiB of workspace for every frame it compresses, on libuv's threads,
# and glibc's heap fragments around the buffers V8 has not collected yet). --optimize-for-size has
# V8 collect more often (17 full collections over two backups of pgbench -s 200, not 8; external
# memory peaked at 19 MiB, not 30) and glibc gives more back. Three backups of pgbench -s 200 in a
# row peaked at 86-95 MiB, not 108-116 (eight runs each, interleaved); six of pgbench -s 50 at
# 82-89, not 99-112. The price is page faults (161-388 k, not 62-66 k; two runs each) and CPU:
# 17-26 s for those three backups, not 15-21.5 (medians of seven runs 21.2 and 15.9), and the
# third one took 6.8 s, not 6.2 (medians). A backlog of 64 segments drained as fast (10.9
# against 11.0 segments/s, medians of four runs each), with the daemon at 74-78 MiB, not 85-86.
# (Both flags are part of what V8's code cache is checked against: the daemon compiles its bundle
# from source, once, as it starts.)
# And the daemon takes every block of 128 KiB or more with mmap, given back as it is freed
# (MALLOC_MMAP_THRESHOLD_; glibc's own threshold rises with the largest mapped block freed, up to
# 32 MiB). Draining a backlog of 70 segments, then backing up pgbench -s 200, four rounds each,
# interleaved: glibc's heap ([heap] in smaps) kept 41 MiB resident after the drain while V8's
# heap was 8 MiB, so the daemon sat at 88-95 MiB idle and peaked at 94-105 during the backups
# that followed; with the threshold at 128 KiB 58-60 idle and 82-83 at the peak (256 KiB: 65-79
# and 83-92). The price is CPU: the drains took 4.0-4.4 s of the daemon's CPU, not
# 3.1-3.5, and the backups 5.5-6.3 s, not 4.1-5.3; drains ended as soon (9.3-9.8 s against
# 9.5-11.1), backups 5.6-6.7 s against 4.6-6.2. Collecting V8's garbage after each segment sent
# gave nothing back (115-132 MiB after the drain).
MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-1}
export MALLOC_ARENA_MAX
case " $* " in
  *' daemon '*)
    MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-131072}
    export MALLOC_MMAP_THRESHOLD_
    exec node --max-semi-space-size=2 --optimize-for-size "${bundle%/*}/barman-agent.cjs" "$@" ;;
esac
MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-33554432}
MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-4194304}
export MALLOC_TRIM_THRESHOLD_ MALLOC_MMAP_THRESHOLD_
# and their heap grows in transparent huge pages (glibc.malloc.hugetlb=1: glibc 2.35 and later,
# ignored before, and where THP is off), a huge page per fault, not a 4 KiB one: 64 pushes took
# 256 k page faults instead of 333 k and 15.0 s of CPU instead of 16.6 (three interleaved runs
# each). Not the daemon, whose peak memory counts more than its faults, nor `restore`: a huge page
# stays resident whole while any block in it lives, and restoring a backup of pgbench -s 200
# (3 GB) peaked at 173-253 MiB with them, 172-192 without, and took 2.82-3.70 s against
# 2.81-3.15 (four interleaved runs each; the relation files written with O_DIRECT, so the page
# faults they once saved are gone). A caller's GLIBC_TUNABLES wins.
case " $* " in
  *' restore '*) ;;
  *)
    GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}
    export GLIBC_TUNABLES
    ;;
esac
exec node "${bundle%/*}/barman-agent.cjs" "$@"
