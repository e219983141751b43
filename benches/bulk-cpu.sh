#!/usr/bin/env bash
# Where the CPU goes in a bulk transfer: one iperf3 stream on loopback, direct and through
# each proxy, with the CPU share of the iperf3 client, the iperf3 server and the proxy
# (utime+stime from /proc over the middle 3 s of a 5 s run), and how busy the whole machine
# was (percent of one core, so 200% is two cores full). On a 2-core machine this shows
# whether a proxy's bulk rate is limited by the cores the three processes share.
#
# usage: benches/bulk-cpu.sh [PROXY...]   PROXY: direct, a path to a proxy binary taking
#        TARGET as its last argument (default: direct target/release/rsproxyd
#        /lib/systemd/systemd-socket-proxyd). Needs iperf3 and systemd-socket-activate.
set -euo pipefail
cd "$(dirname "$0")/.."
(($#)) || set -- direct target/release/rsproxyd /lib/systemd/systemd-socket-proxyd
HZ=$(getconf CLK_TCK)
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# busy and total jiffies of the whole machine (all cores), from the first line of /proc/stat
machine() { awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t; exit }' /proc/stat; }
share() { echo $(((($2 - $1) * 100) / (3 * HZ))); } # percent of one core over 3 s
OUT=$(mktemp -d)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$OUT"' EXIT

printf '%-40s %8s %8s %8s %8s %14s\n' proxy Gbit/s client server proxy "machine busy"
for proxy in "$@"; do
    sport=$(freeport)
    iperf3 -s -B 127.0.0.1 -p "$sport" -1 >/dev/null 2>&1 &
    server=$!
    PIDS+=("$server")
    sleep 0.3
    pp= port=$sport
    if [[ $proxy != direct ]]; then
        port=$(freeport)
        systemd-socket-activate -l "127.0.0.1:$port" "$proxy" "127.0.0.1:$sport" >/dev/null 2>&1 &
        pp=$!
        PIDS+=("$pp")
        sleep 0.3
    fi
    iperf3 -c 127.0.0.1 -p "$port" -t 5 -O 1 -J >"$OUT/iperf.json" 2>&1 &
    client=$!
    sleep 1.5
    read -r b0 t0 < <(machine)
    s0=$(ticks "$server") c0=$(ticks "$client") p0=0 p1=0
    [[ -n $pp ]] && p0=$(ticks "$pp")
    sleep 3
    s1=$(ticks "$server") c1=$(ticks "$client")
    read -r b1 t1 < <(machine)
    [[ -n $pp ]] && p1=$(ticks "$pp")
    wait "$client" || true
    gbps=$(python3 -c 'import json,sys; print("%.1f" % (json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"] / 1e9))' "$OUT/iperf.json")
    printf '%-40s %8s %7s%% %7s%% %7s%% %13s%%\n' "$proxy" "$gbps" "$(share "$c0" "$c1")" \
        "$(share "$s0" "$s1")" "$(share "$p0" "$p1")" "$(((b1 - b0) * 100 * $(nproc) / (t1 - t0)))"
    [[ -n $pp ]] && { kill "$pp" 2>/dev/null || true; wait "$pp" 2>/dev/null || true; }
    wait "$server" 2>/dev/null || true
done
