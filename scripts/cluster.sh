#!/bin/bash
# Simulated Godwit cluster: N hosts on this machine, each its own network
# namespace AND its own PID and mount namespace (its own /proc, so one PID
# can exist on two hosts at once, as it does mid-migration), joined by veth
# pairs to a bridge in the calling namespace.
#
#   scripts/cluster.sh up   NAME N PREFIX   # e.g. up t1 2 10.213.7 -> hosts 10.213.7.1, .2
#   scripts/cluster.sh down NAME            # ends every process of the hosts, removes them
#   scripts/cluster.sh exec NAME I CMD...   # runs CMD on host I (all three namespaces)
#   scripts/cluster.sh init NAME I          # host PID of host I's init (kill -9 it = the host dies)
#   scripts/cluster.sh revive NAME I        # host I, dead, comes back (nothing runs on it)
#   scripts/cluster.sh addr NAME I PREFIX   # prints host I's address
#
# The bridge carries PREFIX.254 so the calling namespace (tests, the CLI)
# reaches every host; hosts reach each other through it. Each host's PID 1
# is scripts/gw-init.c (a reaper; compiled on first use). The file system is
# shared between hosts, like shared storage. Needs root and iproute2,
# util-linux (unshare, nsenter), gcc. NAME must be short ([a-z0-9], <= 6
# chars) because interface names are limited to 15.
set -euo pipefail

cmd=${1:-}
name=${2:-}
[[ -n "$cmd" && -n "$name" ]] || { echo "usage: $0 up|down|exec|init|addr NAME ..." >&2; exit 2; }
[[ "$name" =~ ^[a-z0-9]{1,6}$ ]] || { echo "cluster name must be 1-6 chars of [a-z0-9]" >&2; exit 2; }
br="gwbr-$name"
here=$(cd "$(dirname "$0")" && pwd)
state="/run/godwit-cluster/$name"

ns() { echo "gw-$name-n$1"; }

init_pid() {
  local f="$state/n$1.init"
  [[ -s "$f" ]] || { echo "host $1 of cluster $name is not up" >&2; exit 1; }
  local pid; pid=$(cat "$f")
  [[ -d "/proc/$pid" ]] || { echo "host $1 of cluster $name is down (its init $pid is gone)" >&2; exit 1; }
  echo "$pid"
}

init_bin() {
  local dir="${TMPDIR:-/tmp}/godwit-cluster-bin"
  local bin="$dir/gw-init"
  mkdir -p -m 0700 "$dir"
  if [[ ! -x "$bin" || "$here/gw-init.c" -nt "$bin" ]]; then
    gcc -O1 -o "$bin.tmp.$$" "$here/gw-init.c" && mv -f "$bin.tmp.$$" "$bin"
  fi
  echo "$bin"
}

# Starts host $1's PID 1 in its network namespace, in its own PID and mount
# namespaces (fresh /proc); records its host PID.
start_init() {
  local i=$1 bin init outer _try
  bin=$(init_bin)
  # The host's PID 1, in its own PID and mount namespaces (fresh /proc).
  # Started again if it does not last (seen rarely when several clusters
  # come up at once); its output goes to n$i.log.
  init=""
  for _try in 1 2 3; do
    setsid ip netns exec "$(ns "$i")" unshare --pid --fork --mount --mount-proc \
      --propagation private "$bin" "$state/n$i.ended" </dev/null >>"$state/n$i.log" 2>&1 &
    outer=$!
    init=""
    for _ in $(seq 200); do
      init=$(cat "/proc/$outer/task/$outer/children" 2>/dev/null | awk '{print $1}')
      [[ -n "$init" ]] && break
      sleep 0.01
    done
    sleep 0.05
    if [[ -n "$init" && -d "/proc/$init" && "$(cat "/proc/$init/comm" 2>/dev/null)" == gw-init ]]; then
      break
    fi
    echo "host $i: its init did not last (try $_try): $(tail -n 3 "$state/n$i.log" 2>/dev/null)" >&2
    init=""
  done
  [[ -n "$init" ]] || { echo "host $i: its init did not start" >&2; exit 1; }
  echo "$init" > "$state/n$i.init"
}

case "$cmd" in
  up)
    n=${3:?number of hosts}; prefix=${4:?address prefix like 10.213.7}
    "$0" down "$name" >/dev/null 2>&1 || true
    mkdir -p -m 0700 "$state"
    ip link add "$br" type bridge
    ip addr add "$prefix.254/24" dev "$br"
    ip link set "$br" up
    for i in $(seq 1 "$n"); do
      ip netns add "$(ns "$i")"
      ip link add "gw$name$i" type veth peer name eth0 netns "$(ns "$i")"
      ip link set "gw$name$i" master "$br" up
      ip -n "$(ns "$i")" addr add "$prefix.$i/24" dev eth0
      ip -n "$(ns "$i")" link set eth0 up
      ip -n "$(ns "$i")" link set lo up
      start_init "$i"
    done
    ;;
  down)
    for f in "$state"/n*.init; do
      [[ -e "$f" ]] || continue
      pid=$(cat "$f")
      # Killing a PID namespace's init ends every process in it.
      [[ "$pid" =~ ^[0-9]+$ && "$pid" -gt 1 ]] && kill -s KILL -- "$pid" 2>/dev/null || true
      rm -f "$f"
    done
    for nsname in $(ip netns list | awk '{print $1}' | grep "^gw-$name-n" || true); do
      # Whatever still runs in the network namespace: one pid at a time, never a group.
      for pid in $(ip netns pids "$nsname" 2>/dev/null || true); do
        [[ "$pid" =~ ^[0-9]+$ && "$pid" -gt 1 ]] && kill -s KILL -- "$pid" 2>/dev/null || true
      done
      ip netns del "$nsname" || true
    done
    ip link del "$br" 2>/dev/null || true
    rm -f "$state"/n*.ended "$state"/n*.log
    rmdir "$state" 2>/dev/null || true
    ;;
  exec)
    i=${3:?host index}; shift 3
    pid=$(init_pid "$i")
    exec nsenter --target "$pid" --pid --mount --net --wd="$PWD" -- "$@"
    ;;
  init)
    init_pid "${3:?host index}"
    ;;
  revive)
    # A host whose init was killed (the host died) comes back: a fresh PID
    # and mount namespace in its old network namespace, nothing running.
    i=${3:?host index}
    pid=$(cat "$state/n$i.init" 2>/dev/null || true)
    if [[ "$pid" =~ ^[0-9]+$ && -d "/proc/$pid" && "$(cat "/proc/$pid/comm" 2>/dev/null)" == gw-init ]]; then
      echo "host $i is alive (init $pid)" >&2; exit 1
    fi
    rm -f "$state/n$i.ended"
    start_init "$i"
    ;;
  addr)
    i=${3:?host index}; prefix=${4:?prefix}
    echo "$prefix.$i"
    ;;
  *)
    echo "unknown command $cmd" >&2; exit 2
    ;;
esac
