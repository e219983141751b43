#!/usr/bin/env bash
# kernel-relay-overlaps.sh: the kernel relay's stress run (tests/kernel_relay.rs,
# bulk_both_ways_many_times) in a network namespace of its own, with TCP's counters of that
# namespace before and after, so that the bad exchanges can be set against the partial
# overlaps (retransmissions that start before what the receiver has and end after it) TCP
# received meanwhile. docs/performance.md, "Duplicated segments", has what it found.
#
# Usage, as root, from the repository: bash benches/kernel-relay-overlaps.sh [ROUNDS] [N] [PAR]
#   ROUNDS  rounds, each with its own counters (default 3)
#   N       exchanges of 2.5 MB per run (default 1000)
#   PAR     runs at once in a round, each through its own proxy (default 3)
# Partial overlaps = TcpExtTCPDSACKOldSent - TcpExtDelayedACKLost: TCP counts the first for
# every segment that is wholly or partly old, the second only for wholly old ones (a lower
# bound: an overlapping segment taken from the out-of-order queue is not counted).
set -euo pipefail
ROUNDS=${1:-3}
N=${2:-1000}
PAR=${3:-3}
cd "$(dirname "$0")/.."
[[ $(id -u) == 0 ]] || {
    echo "kernel-relay-overlaps.sh: needs root (network namespace, BPF)" >&2
    exit 1
}
bin=$(cargo test --locked --no-run --features kernel-relay --test kernel_relay 2>&1 |
    grep -o 'target/debug/deps/kernel_relay-[0-9a-f]*' | tail -1)
[[ -x $bin ]] || {
    echo "kernel-relay-overlaps.sh: could not build the kernel_relay tests" >&2
    exit 1
}
ns=rsproxyd-overlaps-$$
work=$(mktemp -d)
ip netns add "$ns"
trap 'ip netns delete "$ns"; rm -rf "$work"' EXIT
ip netns exec "$ns" ip link set lo up
counter() { awk -v k="$1" '$1 == k { print $2 }' "$work/nstat"; }
printf 'round\tbad\texchanges\tpartial_overlaps\tdsack_old_sent\tdelayed_ack_lost\tretrans_segs\n'
for ((r = 1; r <= ROUNDS; r++)); do
    ip netns exec "$ns" nstat -n >/dev/null
    for ((i = 1; i <= PAR; i++)); do
        ip netns exec "$ns" env RSPROXYD_KERNEL_RELAY_STRESS="$N" \
            "$bin" --ignored --exact bulk_both_ways_many_times >"$work/run.$i" 2>&1 &
    done
    wait || true
    ip netns exec "$ns" nstat -z >"$work/nstat"
    bad=0
    for ((i = 1; i <= PAR; i++)); do
        if ! grep -q 'test result: ok' "$work/run.$i"; then
            n=$(grep -oE '^[0-9]+ of [0-9]+ exchanges differ' "$work/run.$i" | cut -d' ' -f1 || true)
            [[ -n $n ]] || {
                echo "kernel-relay-overlaps.sh: run $i of round $r failed otherwise:" >&2
                tail -20 "$work/run.$i" >&2
                exit 1
            }
            bad=$((bad + n))
        fi
    done
    old=$(counter TcpExtTCPDSACKOldSent)
    lost=$(counter TcpExtDelayedACKLost)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$bad" $((N * PAR)) $((old - lost)) "$old" "$lost" \
        "$(counter TcpRetransSegs)"
done
