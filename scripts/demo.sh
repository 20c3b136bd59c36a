#!/usr/bin/env bash
# The Godwit demo: a live counter is checkpointed, its process ended, then
# restored with the same PID, and seen counting on from where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -q -p godwit-cli
G=target/release/godwit
work=$(mktemp -d /tmp/godwit-demo.XXXXXX)
trap 'kill -9 "$pid" 2>/dev/null || true' EXIT
gcc -O1 -o "$work/counter" tests/progs/counter.c
gcc -O1 -o "$work/launch" tests/progs/launch.c
log="$work/counter.log"
"$work/launch" setsid "$work/counter" "$log" </dev/null >/dev/null 2>&1 &
sleep 0.2
pid=$(pgrep -f "$work/counter" | head -1)
sleep 1
echo "== counter running as PID $pid; last lines of its log:"
tail -n 3 "$log"
echo "== godwit dump --pid $pid --images $work/img"
$G dump --pid "$pid" --images "$work/img"
last=$(tail -n 1 "$log")
echo "== the process is gone (ps -p $pid: $(ps -p "$pid" -o stat= 2>/dev/null || echo none)); log stopped at $last"
sleep 1
echo "== still $(tail -n 1 "$log") one second later. godwit inspect:"
$G inspect "$work/img" | head -n 6
for _ in $(seq 50); do [ -e "/proc/$pid" ] || break; sleep 0.1; done
echo "== godwit restore --images $work/img"
$G restore --images "$work/img"
sleep 1
echo "== PID $pid runs again ($(ps -p "$pid" -o comm=,stat=)); the log continues from $last:"
grep -A 4 -x "$last" "$log" | tr '\n' ' '; echo "... $(tail -n 1 "$log")"
echo "== done; image and log in $work"
