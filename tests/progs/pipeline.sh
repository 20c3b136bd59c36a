# A shell job: a background sleep and a two-stage pipeline of subshells,
# counting into DIR/count. Used by Godwit's process-tree tests.
cd "$1" || exit 1
sleep 1000 &
(n=0; while :; do echo $n; n=$((n+1)); sleep 0.02; done) |
    (while read -r l; do echo "$l" > count.tmp; mv count.tmp count; done) &
wait
