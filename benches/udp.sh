#!/usr/bin/env bash
# UDP through rsproxyd against a direct connection and socat, in interleaved rounds:
#   dns    dnsperf, 50 clients, against dnsmasq (one A record)         queries/s (and lost)
#   iperf  iperf3 -u -b 0 -l 1400, one stream, through one proxy holding both a TCP and a UDP
#          socket on one port (iperf3's control connection is TCP)     received Gbit/s (loss)
# Ratios are taken within each round; the medians are reported. Run by benches/compare.sh
# (workload `udp`), or alone.
#
# usage: benches/udp.sh [OUT_DIR]     (needs dnsmasq, dnsperf, iperf3, socat, python3)
# environment: ROUNDS=3, QUICK=1 (1 round, 2 s runs), RSPROXYD_BIN=path (else
#   target/release/rsproxyd, built if missing), UDP_PROXIES="direct rsproxyd socat"
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${1:-$ROOT/bench-results/udp}
QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then ROUNDS=${ROUNDS:-1} SECS=2; else ROUNDS=${ROUNDS:-3} SECS=5; fi
read -r -a PROXIES <<<"${UDP_PROXIES:-direct rsproxyd socat}"
RSPROXYD=${RSPROXYD_BIN:-$ROOT/target/release/rsproxyd}
DNS_CLIENTS=50

log() { printf '[udp %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
for tool in dnsperf iperf3 socat python3; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install dnsperf iperf3 socat python3)"
done
command -v dnsmasq >/dev/null || [[ -x /usr/sbin/dnsmasq ]] || die "dnsmasq not found (apt-get install dnsmasq-base)"
export PATH=$PATH:/usr/sbin
if [[ ! -x $RSPROXYD ]]; then
    log "building rsproxyd (release)"
    cargo build --release --quiet --bin rsproxyd
fi

mkdir -p "$OUT/logs"
WORK=$(mktemp -d /tmp/rsproxyd-udp.XXXXXX)
PIDS=()
PROXY_PIDS=()
cleanup() {
    local pid
    for pid in "${PROXY_PIDS[@]}" "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PROXY_PIDS[@]}" "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A port free for both TCP and UDP on 127.0.0.1 (nothing holds it when this returns).
freeport() {
    python3 -c 'import socket
while True:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
    p = u.getsockname()[1]; t = socket.socket()
    try:
        t.bind(("127.0.0.1", p)); print(p); break
    except OSError:
        pass'
}

# activate PORTFILE CMD...: binds a TCP listener and a UDP socket on one free port, passes
# them as fds 3 and 4 (LISTEN_FDS=2, LISTEN_PID = the command's pid) and writes the port.
ACTIVATE='import fcntl, os, socket, sys
t = socket.socket(); u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
while True:
    u.bind(("127.0.0.1", 0)); p = u.getsockname()[1]
    try:
        t.bind(("127.0.0.1", p)); break
    except OSError:
        u.close(); u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
t.listen(1024)
# above 3 and 4 first, so that neither dup2 overwrites the other socket
hi = [fcntl.fcntl(s.fileno(), fcntl.F_DUPFD_CLOEXEC, 100) for s in (t, u)]
os.dup2(hi[0], 3); os.dup2(hi[1], 4)
os.set_inheritable(3, True); os.set_inheritable(4, True)
os.environ.update(LISTEN_FDS="2", LISTEN_PID=str(os.getpid()))
open(sys.argv[1] + ".tmp", "w").write(str(p)); os.rename(sys.argv[1] + ".tmp", sys.argv[1])
os.execvp(sys.argv[2], sys.argv[2:])'

# --- backends -------------------------------------------------------------------------------
DNS_PORT=$(freeport)
dnsmasq --keep-in-foreground --conf-file=/dev/null --pid-file= --port="$DNS_PORT" \
    --listen-address=127.0.0.1 --bind-interfaces --no-resolv --no-hosts \
    --address=/example.test/127.0.0.42 --user=root >"$OUT/logs/dnsmasq.log" 2>&1 &
PIDS+=($!)
IPERF_PORT=$(freeport)
iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT" >"$OUT/logs/iperf3-server.log" 2>&1 &
PIDS+=($!)
printf 'example.test A\n' >"$WORK/queries"
sleep 0.5 # the backends bind; the first measurement starts with a warm-up anyway

PORT=
proxy_up() { # NAME BACKEND_PORT
    PROXY_PIDS=()
    case $1 in
    direct) PORT=$2 ;;
    rsproxyd)
        rm -f "$WORK/port"
        python3 -c "$ACTIVATE" "$WORK/port" "$RSPROXYD" "127.0.0.1:$2" >>"$OUT/logs/rsproxyd.log" 2>&1 &
        PROXY_PIDS+=($!)
        local i
        for i in $(seq 200); do [[ -s $WORK/port ]] && break; sleep 0.01; done
        PORT=$(cat "$WORK/port")
        ;;
    socat)
        PORT=$(freeport)
        socat "UDP4-LISTEN:$PORT,bind=127.0.0.1,fork,reuseaddr" "UDP4:127.0.0.1:$2" 2>>"$OUT/logs/socat.log" &
        PROXY_PIDS+=($!)
        socat "TCP4-LISTEN:$PORT,bind=127.0.0.1,fork,reuseaddr" "TCP4:127.0.0.1:$2" 2>>"$OUT/logs/socat.log" &
        PROXY_PIDS+=($!)
        sleep 0.2
        ;;
    *) die "unknown proxy $1" ;;
    esac
}
proxy_down() {
    local pid
    for pid in "${PROXY_PIDS[@]}"; do
        pkill -KILL -P "$pid" 2>/dev/null || true # socat's forked children
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PROXY_PIDS=()
}

VALUE= EXTRA=
measure() { # WORKLOAD PROXY LOG
    VALUE= EXTRA=
    case $1 in
    dns)
        proxy_up "$2" "$DNS_PORT"
        # a short warm-up: the sessions (and socat's children) exist before the timed run
        dnsperf -s 127.0.0.1 -p "$PORT" -d "$WORK/queries" -c "$DNS_CLIENTS" -l 1 >/dev/null 2>&1 || true
        timeout $((SECS + 30)) dnsperf -s 127.0.0.1 -p "$PORT" -d "$WORK/queries" \
            -c "$DNS_CLIENTS" -l "$SECS" >"$3" 2>&1 || true
        VALUE=$(awk '/Queries per second:/ { print $4 }' "$3")
        EXTRA=$(awk '/Queries lost:/ { print $3 }' "$3")
        ;;
    iperf)
        proxy_up "$2" "$IPERF_PORT"
        timeout $((SECS + 30)) iperf3 -c 127.0.0.1 -p "$PORT" -u -b 0 -l 1400 -t "$SECS" -O 1 -J >"$3" 2>&1 || true
        read -r VALUE EXTRA < <(python3 -c 'import json, sys
e = json.load(open(sys.argv[1]))["end"]
got, sent = e["sum_received"], e["sum_sent"]
# loss from the bytes sent and received (iperf3 -O counts lost_percent oddly)
print("%.3f %.1f%%" % (got["bits_per_second"] / 1e9, 100 * (1 - got["bytes"] / max(sent["bytes"], 1))))' "$3" 2>/dev/null) || true
        ;;
    esac
    proxy_down
}

RAW=$OUT/raw.tsv
printf 'round\tworkload\tproxy\tvalue\textra\n' >"$RAW"
n=${#PROXIES[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    log "round $r of $ROUNDS"
    for w in dns iperf; do
        for ((k = 0; k < n; k++)); do
            p=${PROXIES[$(((k + r - 1) % n))]}
            measure "$w" "$p" "$OUT/logs/r$r-$w-$p.log"
            log "  $w $p ${VALUE:-FAILED} (${EXTRA:-?} lost)"
            printf '%s\t%s\t%s\t%s\t%s\n' "$r" "$w" "$p" "${VALUE:-nan}" "${EXTRA:-nan}" >>"$RAW"
        done
    done
done

python3 - "$RAW" "$OUT/udp.md" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
val = {}
for r in rows:
    val.setdefault((r["workload"], r["round"]), {})[r["proxy"]] = (float(r["value"]), r["extra"])
proxies = sorted({r["proxy"] for r in rows}, key=["direct", "rsproxyd", "socat"].index)
names = {"dns": "dnsperf, 50 clients, dnsmasq: queries/s (queries lost)",
         "iperf": "iperf3 -u -b 0 -l 1400: received Gbit/s (lost)"}
out = ["| workload | " + " | ".join(proxies) + " | rsproxyd / direct | rsproxyd / socat |",
       "|---" * (len(proxies) + 3) + "|"]
for w in ["dns", "iperf"]:
    rounds = [v for (wl, _), v in sorted(val.items()) if wl == w]
    cells = []
    for p in proxies:
        xs = [r[p][0] for r in rounds if p in r]
        lost = [r[p][1] for r in rounds if p in r]
        cells.append("%s (%s)" % (format(statistics.median(xs), ",.3f" if w == "iperf" else ",.0f"), "/".join(lost)) if xs else "-")
    def ratio(a, b):
        xs = [r[a][0] / r[b][0] for r in rounds if a in r and b in r and r[b][0] > 0]
        return "%.2fx" % statistics.median(xs) if xs else "-"
    out.append("| %s | %s | %s | %s |" % (names[w], " | ".join(cells), ratio("rsproxyd", "direct"), ratio("rsproxyd", "socat")))
open(sys.argv[2], "w").write("\n".join(out) + "\n")
print("\n".join(out))
EOF
log "wrote $OUT/udp.md"
