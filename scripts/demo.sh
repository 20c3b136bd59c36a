#!/usr/bin/env bash
# The Godwit demo: a live service, and a client talking to it, moved between
# two simulated hosts (scripts/cluster.sh: each host its own network, PID and
# mount namespace), visibly continuing. Then a checkpoint and restore on one
# host.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -q -p godwit-cli -p godwitd
G=$PWD/target/release/godwit
D=$PWD/target/release/godwitd
C=$PWD/scripts/cluster.sh
work=$(mktemp -d /tmp/godwit-demo.XXXXXX)
name=demo$$
name=${name:0:6}
prefix=10.215.$(( $$ % 200 ))
service=$prefix.100
cleanup() {
    [ -n "${client:-}" ] && kill "$client" 2>/dev/null || true
    disown -a 2>/dev/null || true
    "$C" down "$name" >/dev/null 2>&1 || true
}
trap cleanup EXIT
gcc -O1 -o "$work/launch" tests/progs/launch.c
umask 077
echo "demo-token-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')" > "$work/token"

echo "== three simulated hosts: $prefix.1, $prefix.2, $prefix.3 (scripts/cluster.sh up $name 3 $prefix)"
"$C" up "$name" 3 "$prefix"
for h in 1 2; do
    "$C" exec "$name" $h "$D" --listen "$prefix.$h:7420" --data "$work/node$h" \
        --token-file "$work/token" > "$work/agent$h.out" 2> "$work/agent$h.log" &
done
for h in 1 2; do
    for _ in $(seq 100); do grep -q GODWITD_READY "$work/agent$h.out" 2>/dev/null && break; sleep 0.1; done
done
echo "== godwitd runs on host 1 and host 2 (TLS, authenticated by $work/token)"

# The service: counts the lines a client sends on its connection and answers each.
cat > "$work/service.py" <<'PY'
import os, socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((os.environ["ADDR"], 8080))
s.listen(1)
while True:  # one client after another; it runs on when one leaves
    c, _ = s.accept()
    f = c.makefile("rb")
    n = 0
    for line in f:
        n += 1
        c.sendall(b"line %d received by PID %d\n" % (n, os.getpid()))
    f.close()
    c.close()
PY
"$C" exec "$name" 1 ip addr add "$service/24" dev eth0
pid=$("$C" exec "$name" 1 sh -c "echo 4999 > /proc/sys/kernel/ns_last_pid; ADDR=$service $work/launch python3 $work/service.py </dev/null >/dev/null 2>&1 & echo \$!")
echo "== the service runs on host 1 as PID $pid, at $service:8080"

# The client, on host 3 (its network namespace): ONE connection, a line every
# 200 ms, prints each answer.
ip netns exec "gw-$name-n3" python3 -u -c "
import socket, time
for _ in range(100):
    try:
        s = socket.create_connection(('$service', 8080), timeout=30); break
    except OSError:
        time.sleep(0.1)
f = s.makefile('rb')
t = time.monotonic()
while True:
    s.sendall(b'hello\n')
    answer = f.readline().decode().strip()
    now = time.monotonic()
    print('   client on host 3 (one connection): %s  (%.0f ms since the last)' % (answer, (now - t) * 1e3), flush=True)
    t = now
    time.sleep(0.2)
" &
client=$!
sleep 1.5
# stop-copy: pre-copy with --tcp-established loses the python service in about half the
# runs (a known bug, open; see the issue note), stop-copy passed every run.
echo "== godwit migrate --pid $pid --to $prefix.2:7420 --mode stop-copy --tcp-established --move-ip $service/24   (run on host 1)"
"$C" exec "$name" 1 "$G" migrate --pid "$pid" --to "$prefix.2:7420" --token-file "$work/token" \
    --mode stop-copy --tcp-established --move-ip "$service/24"
sleep 1.5
echo "== on host 1: $("$C" exec "$name" 1 sh -c "ps -o pid=,comm= -p $pid || echo no process $pid")"
echo "== on host 2: $("$C" exec "$name" 2 ps -o pid=,stat=,args= -p "$pid")"
echo "== host 2's agent lists it:"
"$G" node --agent "$prefix.2:7420" --token-file "$work/token" ps
kill "$client" 2>/dev/null || true
wait "$client" 2>/dev/null || true
client=

echo
echo "== and a checkpoint of it into host 2's store, while it keeps running:"
"$G" node --agent "$prefix.2:7420" --token-file "$work/token" checkpoint --pid "$pid" --id demo --tcp-established
"$G" node --agent "$prefix.2:7420" --token-file "$work/token" images
echo "== done; logs in $work"
