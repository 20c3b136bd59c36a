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

# The service: answers every connection with a running count and its PID.
cat > "$work/service.py" <<'PY'
import os, socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((os.environ["ADDR"], 8080))
s.listen(16)
n = 0
while True:
    c, _ = s.accept()
    n += 1
    c.sendall(b"answer %d from PID %d\n" % (n, os.getpid()))
    c.close()
PY
"$C" exec "$name" 1 ip addr add "$service/24" dev eth0
pid=$("$C" exec "$name" 1 sh -c "echo 4999 > /proc/sys/kernel/ns_last_pid; ADDR=$service $work/launch python3 $work/service.py </dev/null >/dev/null 2>&1 & echo \$!")
echo "== the service runs on host 1 as PID $pid, at $service:8080"

# The client, on host 3: asks every 200 ms and prints what it hears.
"$C" exec "$name" 3 python3 -u -c "
import socket, time
while True:
    try:
        s = socket.create_connection(('$service', 8080), timeout=2)
        print('   client on host 3 hears:', s.recv(100).decode().strip(), flush=True)
    except OSError as e:
        print('   client on host 3: no answer:', e, flush=True)
    time.sleep(0.2)
" &
client=$!
sleep 1.5
echo "== godwit migrate --pid $pid --to $prefix.2:7420 --mode pre-copy --move-ip $service/24   (run on host 1)"
"$C" exec "$name" 1 "$G" migrate --pid "$pid" --to "$prefix.2:7420" --token-file "$work/token" \
    --mode pre-copy --move-ip "$service/24"
sleep 1.5
echo "== on host 1: $("$C" exec "$name" 1 sh -c "ps -o pid=,comm= -p $pid || echo no process $pid")"
echo "== on host 2: $("$C" exec "$name" 2 ps -o pid=,stat=,args= -p "$pid")"
echo "== host 2's agent lists it:"
"$G" node --agent "$prefix.2:7420" --token-file "$work/token" ps
kill "$client" 2>/dev/null || true
wait "$client" 2>/dev/null || true
client=

echo
echo "== and on one host: a checkpoint of the service into host 2's store, then a restore from it"
"$G" node --agent "$prefix.2:7420" --token-file "$work/token" checkpoint --pid "$pid" --id demo --stop
"$G" node --agent "$prefix.2:7420" --token-file "$work/token" images
"$G" node --agent "$prefix.2:7420" --token-file "$work/token" restore demo
"$C" exec "$name" 3 python3 -c "import socket; print('   client on host 3 hears:', socket.create_connection(('$service', 8080), timeout=2).recv(100).decode().strip())"
echo "== done; logs in $work"
