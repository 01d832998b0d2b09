#!/bin/sh
# barman-agent, as installed (scripts/build.mjs copies this file to dist/barman-agent): answers
# what it can without starting Node, and hands everything else to the Node program beside it,
# dist/barman-agent.cjs, which can do all of it too (and may be run directly).
#
# Without Node: `get-wal <segment> <dest>` when the prefetcher fetched that segment ahead into
# <spool_dir>/prefetch/<segment>-<sha256> (agent/wal/prefetch.ts), or is downloading it (then this
# waits for it); a segment served is recorded as the one asked for (.requested), which keeps the
# prefetcher going. The file is moved next to <dest>,
# read back against its SHA-256 and its page header (timeline, address, segment size: the bytes
# must be the segment its name says), and only then renamed to <dest>; anything that does not
# check out is removed and Node asks the receiver. Only POSIX sh and coreutils (sha256sum, od,
# stat, mv, readlink); any configuration or argument this script does not fully understand goes
# to Node, which is always right.

bundle=$(readlink -f -- "$0" 2>/dev/null) || bundle=$0
bundle="${bundle%/*}/barman-agent.cjs"

# trim leading and trailing blanks of $1
trim() {
  set -- "${1#"${1%%[![:space:]]*}"}"
  printf '%s' "${1%"${1##*[![:space:]]}"}"
}

# spool_dir of the [agent] section of config file $1 (default /var/lib/barman-agent); fails on
# anything Node's INI reader might read differently (quotes, escapes)
spool_dir_of() {
  section='' spool=''
  while IFS= read -r line || [ -n "$line" ]; do
    line=$(trim "${line%%[;#]*}")
    case $line in
      '') ;;
      '['*']') section=$(trim "${line#[}"); section=$(trim "${section%]}") ;;
      *=*)
        [ "$section" = agent ] || continue
        [ "$(trim "${line%%=*}")" = spool_dir ] || continue
        spool=$(trim "${line#*=}")
        case $spool in *[\"\'\\]*) return 1 ;; esac
        ;;
    esac
  done < "$1"
  printf '%s' "${spool:-/var/lib/barman-agent}"
}

# file $1 has SHA-256 $3 and is a whole WAL segment named $2
segment_ok() {
  file=$1 name=$2 sum=$3
  actual=$(sha256sum -b < "$file") || return 1
  [ "${actual%% *}" = "$sum" ] || return 1
  # long page header, host byte order as PostgreSQL writes it: magic|info, tli, pageaddr lo, hi,
  # rem_len, pad, sysid lo, hi, seg_size, blcksz
  # shellcheck disable=SC2046
  set -- $(od -An -v -tu4 -N40 -- "$file") || return 1
  [ $# -eq 10 ] || return 1
  magic=$(($1 & 65535)) info=$(($1 >> 16)) tli=$2 lo=$3 hi=$4 segsize=$9
  [ $((magic >> 12)) -eq 13 ] && [ $((info & 2)) -eq 2 ] || return 1
  [ "$segsize" -ge 1048576 ] && [ "$segsize" -le 1073741824 ] && [ $((segsize & (segsize - 1))) -eq 0 ] || return 1
  [ "$(stat -c %s -- "$file")" = "$segsize" ] || return 1
  rest=${name#????????} ; ntli=${name%"$rest"} ; nseg=${rest#????????} ; nlog=${rest%"$nseg"}
  [ "$tli" -eq $((0x$ntli)) ] || return 1
  [ $((0x$nseg)) -lt $((4294967296 / segsize)) ] || return 1
  addr=$((0x$nseg * segsize))
  [ "$hi" -eq $((0x$nlog + addr / 4294967296)) ] && [ "$lo" -eq $((addr % 4294967296)) ]
}

# get-wal from the spool; returns (to hand over to Node) unless it served the segment
get_wal_from_spool() {
  config='' cmd='' name='' dest='' n=0
  while [ $# -gt 0 ]; do
    case $1 in
      -c|--config) [ $# -ge 2 ] || return 1; config=$2; shift ;;
      --config=*) config=${1#--config=} ;;
      -*) return 1 ;;
      *)
        if [ -z "$cmd" ]; then cmd=$1
        elif [ $n -eq 0 ]; then name=$1 n=1
        elif [ $n -eq 1 ]; then dest=$1 n=2
        else return 1
        fi ;;
    esac
    shift
  done
  [ "$cmd" = get-wal ] && [ $n -eq 2 ] && [ -n "$dest" ] || return 1
  case $name in *[!0-9A-F]*|'') return 1 ;; esac
  [ ${#name} -eq 24 ] || return 1
  if [ -z "$config" ]; then
    if [ -n "${BARMAN_AGENT_CONFIG:-}" ]; then config=$BARMAN_AGENT_CONFIG
    elif [ -n "${HOME:-}" ] && [ -e "$HOME/.barman-agent.conf" ]; then config=$HOME/.barman-agent.conf
    elif [ -e /etc/barman-agent.conf ]; then config=/etc/barman-agent.conf
    else return 1
    fi
  fi
  [ -f "$config" ] && [ -r "$config" ] || return 1
  spool=$(spool_dir_of "$config") || return 1
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
    mv -f -- "$entry" "$tmp" 2>/dev/null || return 2
    if segment_ok "$tmp" "$2" "$sum" 2>/dev/null && mv -f -- "$tmp" "$3"; then
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
  pid=$(cat -- "$1/.prefetcher" 2>/dev/null) || return 1
  case $pid in ''|*[!0-9]*) return 1 ;; esac
  [ $(($(date +%s) - $(stat -c %Y -- "$1/.prefetcher" 2>/dev/null || echo 0))) -le 10 ] || return 1
  kill -0 "$pid" 2>/dev/null
}

case " $* " in
  *' get-wal '*) get_wal_from_spool "$@" ;;
esac
exec node "$bundle" "$@"
