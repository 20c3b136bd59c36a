#!/bin/bash
# Simulated Godwit cluster: N nodes, each its own network namespace, joined by veth pairs
# to a bridge in the calling namespace.
#
#   scripts/cluster.sh up   NAME N PREFIX   # e.g. up t1 2 10.213.7 -> nodes 10.213.7.1, .2
#   scripts/cluster.sh down NAME            # removes the namespaces and the bridge
#   scripts/cluster.sh exec NAME I CMD...   # runs CMD in node I
#   scripts/cluster.sh addr NAME I PREFIX   # prints node I's address
#
# The bridge carries PREFIX.254 so the calling namespace (tests, the CLI) reaches every
# node; nodes reach each other through it. Needs root (CAP_NET_ADMIN) and iproute2.
# NAME must be short ([a-z0-9], <= 6 chars) because interface names are limited to 15.
set -euo pipefail

cmd=${1:-}
name=${2:-}
[[ -n "$cmd" && -n "$name" ]] || { echo "usage: $0 up|down|exec|addr NAME ..." >&2; exit 2; }
[[ "$name" =~ ^[a-z0-9]{1,6}$ ]] || { echo "cluster name must be 1-6 chars of [a-z0-9]" >&2; exit 2; }
br="gwbr-$name"

ns() { echo "gw-$name-n$1"; }

case "$cmd" in
  up)
    n=${3:?number of nodes}; prefix=${4:?address prefix like 10.213.7}
    "$0" down "$name" >/dev/null 2>&1 || true
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
    done
    ;;
  down)
    for nsname in $(ip netns list | awk '{print $1}' | grep "^gw-$name-n" || true); do
      # End whatever still runs in the namespace: one pid at a time, never a group.
      for pid in $(ip netns pids "$nsname" 2>/dev/null || true); do
        [[ "$pid" =~ ^[0-9]+$ && "$pid" -gt 1 ]] && kill -s KILL -- "$pid" 2>/dev/null || true
      done
      ip netns del "$nsname" || true
    done
    ip link del "$br" 2>/dev/null || true
    ;;
  exec)
    i=${3:?node index}; shift 3
    exec ip netns exec "$(ns "$i")" "$@"
    ;;
  addr)
    i=${3:?node index}; prefix=${4:?prefix}
    echo "$prefix.$i"
    ;;
  *)
    echo "unknown command $cmd" >&2; exit 2
    ;;
esac
