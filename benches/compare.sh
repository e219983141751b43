#!/usr/bin/env bash
# Compare rsproxyd with systemd-socket-proxyd, HAProxy and a direct connection (the ceiling)
# in interleaved rounds over the same loopback workloads, then write a markdown table of
# medians and ratios, the peak RSS of each proxy and an SVG chart to bench-results/.
#
# usage: benches/compare.sh            (as root on Debian 12: installs what it misses)
# environment:
#   ROUNDS=3          interleaved rounds; the table shows the median over rounds
#   QUICK=1           short workloads and one round, to check the setup
#   PROXIES="direct rsproxyd ssp haproxy"
#   RSPROXYD_BIN=path use this rsproxyd instead of building target/release/rsproxyd
#   OUT=bench-results where results go
#   SKIP_INSTALL=1    never call apt-get
#   HAPROXY_SPLICE=auto  HAProxy with `option splice-auto` instead of forced
#                     splice-request/response (auto never spliced iperf3 here: see harness)
#   BENCH_WORKLOADS="bulk rr_50conn"  a subset of the workloads below
# A proxy named rsproxyd:KEY=VALUE[,KEY=VALUE...] is a variant of rsproxyd: threads=N adds
# --threads=N, any other key K sets RSPROXYD_TUNE_K=VALUE (honoured only by a build with the
# `tuning` feature: see benches/tuning.sh and src/tuning.rs). Variants get no RSS run.
# proxy=v1|v2 adds --proxy-protocol=v1|v2: that variant runs only http_ka and new_conn, against
# a second nginx port that reads the PROXY protocol (e.g. PROXIES="rsproxyd rsproxyd:proxy=v2"
# BENCH_WORKLOADS=new_conn: the header's cost per new connection).
# bin=PATH runs the rsproxyd at PATH instead (an older build, for before/after in one run).
# `kernel` (rsproxyd:kernel) adds --kernel-relay (needs root; the binary is then built with the cargo feature
# kernel-relay, which the shipped build leaves out): established relays are moved by the
# kernel (BPF sockmap).
# Its work then runs in softirq and in a kernel worker thread, not in the proxy's process,
# so the proxy's CPU figure misses it: compare the whole machine's busy CPU per unit of work
# (machine_cpu_s in raw.tsv, all processes and the kernel), which counts it wherever it runs.
# Besides each workload's figure, the proxy's CPU time (utime+stime of its process) per unit
# of work is recorded: per GB for bulk, per request or connection for the others.
#
# Every proxy gets the same listener the same way (benches/harness via loadgen: fd 3,
# LISTEN_FDS=1, LISTEN_PID) and the same connection limit. Workloads (loopback only):
#   bulk        iperf3, one stream, client to server          Gbit/s
#   rr_1conn    redis-benchmark GET, 1 connection              requests/s
#   rr_50conn   redis-benchmark GET, 50 connections            requests/s
#   http_ka     wrk, 50 keep-alive connections, nginx          requests/s
#   new_conn    wrk, 50 clients, "Connection: close", nginx    connections/s
#   new_conn_ab ab, 20 clients, no keep-alive, nginx           connections/s  (not by default:
#               the second load generator for new_conn)
#   cold_start  loadgen: backend binds 20-120 ms after the client arrives; delay from its
#               bind to the first byte reaching it (rsproxyd vs ssp behind the seed's guard)
#   udp         benches/udp.sh, after the rounds: dnsperf (50 clients, dnsmasq) and
#               iperf3 -u through rsproxyd holding a TCP and a UDP socket, against direct and
#               socat (ssp and HAProxy relay no UDP); its table is appended to results.md
# then, once per proxy, loadgen rss: peak RSS (VmHWM) idle and with 1,000 open connections.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    ROUNDS=${ROUNDS:-1}
    BULK_SECS=2 RR1_N=5000 AB_N=5000 RR50_N=40000 HTTP_SECS=2 COLD_N=6 RSS_CONNS=1000
else
    ROUNDS=${ROUNDS:-3}
    BULK_SECS=4 RR1_N=20000 AB_N=20000 RR50_N=200000 HTTP_SECS=4 COLD_N=10 RSS_CONNS=1000
fi
PROXIES_SET=${PROXIES:-}
read -r -a PROXIES <<<"${PROXIES:-direct rsproxyd ssp haproxy}"
read -r -a WORKLOADS <<<"${BENCH_WORKLOADS:-bulk rr_1conn rr_50conn http_ka new_conn cold_start udp}"
# udp runs on its own (benches/udp.sh), after the rounds
UDP=0
for i in "${!WORKLOADS[@]}"; do [[ ${WORKLOADS[$i]} == udp ]] && UDP=1 && unset 'WORKLOADS[i]'; done
WORKLOADS=("${WORKLOADS[@]}")
OUT=${OUT:-$ROOT/bench-results}
SSP=/lib/systemd/systemd-socket-proxyd
LOADGEN=$ROOT/target/bench-tools/loadgen

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
has_proxy() { local p; for p in "${PROXIES[@]}"; do [[ $p == "$1" || $p == "$1":* ]] && return 0; done; return 1; }

# --- what we need, installed only if missing -------------------------------------------
install_missing() {
    local pkgs=() need
    declare -A provides=(
        [haproxy]=haproxy [iperf3]=iperf3 [redis-server]=redis-server
        [redis-benchmark]=redis-tools [nginx]=nginx-light [wrk]=wrk [ss]=iproute2
        [python3]=python3
    )
    # the udp workload (benches/udp.sh)
    ((UDP)) && provides+=([dnsperf]=dnsperf [socat]=socat [dnsmasq]=dnsmasq-base)
    for need in "${!provides[@]}"; do
        command -v "$need" >/dev/null 2>&1 || [[ -x /usr/sbin/$need ]] || pkgs+=("${provides[$need]}")
    done
    [[ -x $SSP ]] || pkgs+=(systemd)
    ((${#pkgs[@]})) || return 0
    [[ ${SKIP_INSTALL:-0} == 1 ]] && die "missing packages and SKIP_INSTALL=1: ${pkgs[*]}"
    [[ $(id -u) == 0 ]] || die "missing packages, run as root to install: ${pkgs[*]}"
    log "installing: ${pkgs[*]}"
    # the daemons must not start on install (they would take ports 80/6379); keep an
    # existing policy, else add one for the duration of the install
    local policy=/usr/sbin/policy-rc.d added=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && added=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
    ((added)) && rm -f "$policy"
    return 0
}
install_missing
export PATH=$PATH:/usr/sbin

# --- builds ------------------------------------------------------------------------------
if has_proxy rsproxyd; then
    if [[ -n ${RSPROXYD_BIN:-} ]]; then
        RSPROXYD=$RSPROXYD_BIN
    else
        variants=0 kernel=0
        # (a variant that only adds --proxy-protocol needs no tuning build)
        for p in "${PROXIES[@]}"; do
            [[ $p == rsproxyd:* && ! ${p#rsproxyd:} =~ ^(proxy=[^,]*|kernel|bin=[^,]*)(,(proxy=[^,]*|kernel|bin=[^,]*))*$ ]] && variants=1
            [[ $p == rsproxyd:* && ,${p#rsproxyd:}, == *,kernel,* ]] && kernel=1
        done
        if ((variants)); then
            # one binary for rsproxyd and its variants, so only the settings differ
            features=tuning
            ((kernel)) && features=tuning,kernel-relay
            log "building rsproxyd (release, features $features, in target/tuning)"
            cargo build --release --quiet --features "$features" --target-dir "$ROOT/target/tuning" --bin rsproxyd
            RSPROXYD=$ROOT/target/tuning/release/rsproxyd
        elif ((kernel)); then
            # --kernel-relay exists only with the cargo feature kernel-relay (off in the
            # shipped build); rsproxyd and rsproxyd:kernel both run this one binary
            log "building rsproxyd (release, feature kernel-relay, in target/kernel-relay)"
            cargo build --release --quiet --features kernel-relay --target-dir "$ROOT/target/kernel-relay" --bin rsproxyd
            RSPROXYD=$ROOT/target/kernel-relay/release/rsproxyd
        else
            log "building rsproxyd (release)"
            cargo build --release --quiet --bin rsproxyd
            RSPROXYD=$ROOT/target/release/rsproxyd
        fi
    fi
    [[ -x $RSPROXYD ]] || die "no rsproxyd binary at $RSPROXYD"
    export RSPROXYD_BIN=$RSPROXYD
fi
export GUARD_SH=$ROOT/benches/guard.sh
if [[ ! -x $LOADGEN || $LOADGEN -ot benches/loadgen/loadgen.rs || $LOADGEN -ot benches/harness/mod.rs ]]; then
    log "building loadgen"
    mkdir -p "$(dirname "$LOADGEN")"
    rustc -O --edition 2021 --crate-name loadgen benches/loadgen/loadgen.rs -o "$LOADGEN"
fi

# --- scratch space, process bookkeeping ----------------------------------------------------
mkdir -p "$OUT/logs"
rm -f "$OUT"/logs/*.log
WORK=$(mktemp -d /tmp/rsproxyd-compare.XXXXXX)
export TMPDIR=$WORK
RAW=$OUT/raw.tsv
NOTES=$OUT/notes.txt
: >"$NOTES"
RSS=$OUT/rss.tsv
PIDS=()      # the backends, ended by pid on exit
PROXY_PID=   # the proxy running now, if any (reaped as soon as its workload ends)

cleanup() {
    local pid i
    [[ -n $PROXY_PID ]] && PIDS+=("$PROXY_PID")
    # SIGTERM first: nginx's master takes its worker down with it only then (a SIGKILLed
    # master leaves the worker running, still listening)
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for i in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# Waits until something listens on 127.0.0.1:$1 (bounded).
wait_listen() {
    local i
    for i in $(seq 100); do
        ss -tln | grep -q "127.0.0.1:$1 " && return 0
        sleep 0.05
    done
    die "nothing listens on 127.0.0.1:$1"
}

# --- backends, started once ----------------------------------------------------------------
IPERF_PORT=$("$LOADGEN" freeport)
iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT" >"$OUT/logs/iperf3-server.log" 2>&1 &
PIDS+=($!)
REDIS_PORT=$("$LOADGEN" freeport)
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --daemonize no --dir "$WORK" --logfile "$OUT/logs/redis.log" &
PIDS+=($!)
NGINX_PORT=$("$LOADGEN" freeport)
NGINX_PP_PORT=$("$LOADGEN" freeport) # the same server, expecting a PROXY protocol header
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $OUT/logs/nginx-error.log;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / { return 200 "hello from nginx\n"; }
    }
    server {
        listen 127.0.0.1:$NGINX_PP_PORT proxy_protocol;
        location / { return 200 "hello from nginx\n"; }
    }
}
EOF
nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
wait_listen "$IPERF_PORT"
wait_listen "$REDIS_PORT"
wait_listen "$NGINX_PORT"
wait_listen "$NGINX_PP_PORT"
log "backends: iperf3 :$IPERF_PORT, redis :$REDIS_PORT, nginx :$NGINX_PORT"

# --- one proxy at a time, in front of one backend --------------------------------------------
PROXY_PORT=
proxy_up() { # NAME BACKEND_PORT
    local name=$1 backend=127.0.0.1:$2 argv=()
    case $name in
    direct) PROXY_PID= PROXY_PORT=$2; return 0 ;;
    rsproxyd) argv=("$RSPROXYD" -c 4096 "$backend") ;;
    rsproxyd:*)
        local kv kvs
        argv=(env)
        IFS=, read -r -a kvs <<<"${name#rsproxyd:}"
        for kv in "${kvs[@]}"; do
            case $kv in
            threads=* | proxy=* | bin=*) ;;
            # --kernel-relay is refused unless asked for as unsafe (docs/performance.md)
            kernel) argv+=(RSPROXYD_KERNEL_RELAY_UNSAFE=1) ;;
            ?*=*) argv+=("RSPROXYD_TUNE_$(tr a-z A-Z <<<"${kv%%=*}")=${kv#*=}") ;;
            *) die "bad variant $name: '$kv' is not KEY=VALUE" ;;
            esac
        done
        local bin=$RSPROXYD
        [[ ,${name#rsproxyd:}, =~ ,bin=([^,]+), ]] && bin=${BASH_REMATCH[1]}
        argv+=("$bin" -c 4096)
        [[ ,${name#rsproxyd:}, =~ ,threads=([0-9]+), ]] && argv+=("--threads=${BASH_REMATCH[1]}")
        [[ ,${name#rsproxyd:}, =~ ,proxy=([^,]+), ]] && argv+=("--proxy-protocol=${BASH_REMATCH[1]}")
        [[ ,${name#rsproxyd:}, == *,kernel,* ]] && argv+=(--kernel-relay)
        argv+=("$backend")
        ;;
    ssp) argv=("$SSP" -c 4096 "$backend") ;;
    haproxy)
        "$LOADGEN" haproxy-config "$backend" >"$WORK/haproxy-$2.cfg"
        argv=(haproxy -db -q -f "$WORK/haproxy-$2.cfg")
        ;;
    *) die "unknown proxy $name" ;;
    esac
    local tag=${name//\//_}
    local portfile=$WORK/port.$tag.$2
    rm -f "$portfile"
    "$LOADGEN" activate "$portfile" -- "${argv[@]}" >>"$OUT/logs/proxy-$tag.log" 2>&1 &
    PROXY_PID=$!
    local i
    for i in $(seq 200); do
        [[ -s $portfile ]] && break
        sleep 0.01
    done
    PROXY_PORT=$(cat "$portfile" 2>/dev/null) || die "$name did not start"
}
proxy_down() {
    [[ -n $PROXY_PID ]] || return 0
    kill -KILL "$PROXY_PID" 2>/dev/null || true
    wait "$PROXY_PID" 2>/dev/null || true
    PROXY_PID=
}

# --- workloads: each sets VALUE to one number (empty on failure) and logs the tool's output ---
# (not run in a $(subshell): the proxy's pid must stay known to this shell for cleanup)
# CPU_S: the proxy's CPU seconds over the workload; WORK: units of work done (bytes for
# bulk, requests or connections for the others); both empty when not known.
VALUE= CPU_S= WORK= MACHINE_CPU_S=
CLK_TCK=$(getconf CLK_TCK)
# busy CPU seconds of the whole machine so far (all cores: user, nice, system, irq, softirq,
# steal; not idle or iowait)
machine_busy() { awk -v hz="$CLK_TCK" '$1 == "cpu" { printf "%.2f", ($2 + $3 + $4 + $7 + $8 + $9) / hz }' /proc/stat; }
measure() { # WORKLOAD PROXY LOGFILE
    local w=$1 p=$2 logf=$3
    VALUE= CPU_S= WORK= MACHINE_CPU_S=
    local busy0
    busy0=$(machine_busy)
    case $w in
    bulk)
        proxy_up "$p" "$IPERF_PORT"
        timeout $((BULK_SECS + 20)) iperf3 -c 127.0.0.1 -p "$PROXY_PORT" -t "$BULK_SECS" -O 1 -J >"$logf" 2>&1 || true
        VALUE=$(python3 -c 'import json,sys; print("%.3f" % (json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"] / 1e9))' "$logf" 2>/dev/null) || true
        # every interval, the omitted warm-up second too: the proxy's CPU covers it
        WORK=$(python3 -c 'import json,sys; print(sum(i["sum"]["bytes"] for i in json.load(open(sys.argv[1]))["intervals"]))' "$logf" 2>/dev/null) || true
        ;;
    rr_1conn | rr_50conn)
        local conns=1 n=$RR1_N
        [[ $w == rr_50conn ]] && conns=50 n=$RR50_N
        proxy_up "$p" "$REDIS_PORT"
        timeout 120 redis-benchmark -h 127.0.0.1 -p "$PROXY_PORT" -c "$conns" -n "$n" -t get --csv >"$logf" 2>&1 || true
        VALUE=$(awk -F'"' '$2 == "GET" { print $4 }' "$logf")
        [[ -n $VALUE ]] && WORK=$n
        ;;
    http_ka | new_conn)
        local hdr=()
        [[ $w == new_conn ]] && hdr=(-H 'Connection: close')
        local port=$NGINX_PORT
        [[ $p == *proxy=* ]] && port=$NGINX_PP_PORT
        proxy_up "$p" "$port"
        timeout $((HTTP_SECS + 20)) wrk -t1 -c50 -d"${HTTP_SECS}s" "${hdr[@]}" "http://127.0.0.1:$PROXY_PORT/" >"$logf" 2>&1 || true
        VALUE=$(awk '/^Requests\/sec:/ { print $2 }' "$logf")
        WORK=$(awk '/ requests in / { print $1 }' "$logf")
        grep -E 'Socket errors|Non-2xx' "$logf" | sed "s|^ *|$w/$p round $r: wrk: |" >>"$NOTES" || true
        ;;
    new_conn_ab)
        # the second load generator for new connections: ab, 20 clients, no keep-alive
        proxy_up "$p" "$NGINX_PORT"
        timeout 120 ab -q -n "$AB_N" -c 20 "http://127.0.0.1:$PROXY_PORT/" >"$logf" 2>&1 || true
        if grep -q '^Failed requests: *0$' "$logf"; then
            VALUE=$(awk '/^Requests per second:/ { print $4 }' "$logf")
            WORK=$(awk '/^Complete requests:/ { print $3 }' "$logf")
        else
            grep -E '^Failed requests' "$logf" | sed "s|^|$w/$p round $r: ab: |" >>"$NOTES" || true
        fi
        ;;
    cold_start)
        local name=$p
        case $p in ssp) name=ssp+guard ;; rsproxyd) ;; *) return 0 ;; esac
        timeout 300 "$LOADGEN" coldstart "$COLD_N" 20 120 "$name" >"$logf" 2>&1 || true
        VALUE=$(sed -n 's/^median_ms=\([0-9.]*\).*/\1/p' "$logf")
        ;;
    esac
    if [[ -n $PROXY_PID && -r /proc/$PROXY_PID/stat ]]; then
        # fields 14 and 15: utime and stime of the whole process (all threads), in ticks
        CPU_S=$(awk -v hz="$CLK_TCK" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$PROXY_PID/stat")
    fi
    [[ $w != cold_start ]] && MACHINE_CPU_S=$(awk -v a="$busy0" -v b="$(machine_busy)" 'BEGIN { printf "%.2f", b - a }')
    proxy_down
}

# --- the rounds ---------------------------------------------------------------------------
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
printf 'round\tworkload\tproxy\tvalue\tcpu_s\twork\tmachine_cpu_s\n' >"$RAW"
n=${#PROXIES[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    log "round $r of $ROUNDS"
    for w in "${WORKLOADS[@]}"; do
        for ((k = 0; k < n; k++)); do
            p=${PROXIES[$(((k + r - 1) % n))]} # rotate the order every round
            [[ $w == cold_start && $p != rsproxyd && $p != ssp ]] && continue
            [[ $p == *proxy=* && $w != http_ka && $w != new_conn ]] && continue
            measure "$w" "$p" "$OUT/logs/r$r-$w-${p//\//_}.log"
            v=$VALUE
            [[ -n $v ]] || echo "$w/$p round $r failed: see logs/r$r-$w-${p//\//_}.log" | tee -a "$NOTES" >&2
            log "  $w $p ${v:-FAILED}${CPU_S:+ (proxy CPU ${CPU_S} s)}"
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$w" "$p" "${v:-nan}" "${CPU_S:-nan}" "${WORK:-nan}" "${MACHINE_CPU_S:-nan}" >>"$RAW"
        done
    done
done

printf 'proxy\tidle_kib\tloaded_kib\tconns\n' >"$RSS"
for p in "${PROXIES[@]}"; do
    [[ $p == direct || $p == *:* ]] && continue
    if line=$("$LOADGEN" rss "$RSS_CONNS" "$p" 2>>"$OUT/logs/rss-$p.log"); then
        idle=${line#idle_kib=} idle=${idle%% *}
        loaded=${line#*loaded_kib=}
        log "  rss $p idle ${idle} KiB, ${RSS_CONNS} conns ${loaded} KiB"
        printf '%s\t%s\t%s\t%s\n' "$p" "$idle" "$loaded" "$RSS_CONNS" >>"$RSS"
    else
        log "  rss $p failed, see $OUT/logs/rss-$p.log"
    fi
done

# --- the machine, for the README ------------------------------------------------------------
{
    printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    printf 'cpu\t%s\n' "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    printf 'cores\t%s\n' "$(nproc)"
    printf 'memory\t%s\n' "$(free -h | awk '/^Mem:/ { print $2 }')"
    printf 'kernel\t%s\n' "$(uname -r)"
    printf 'os\t%s\n' "$(. /etc/os-release && echo "$PRETTY_NAME")"
    printf 'rounds\t%s\n' "$ROUNDS"
    printf 'quick\t%s\n' "$QUICK"
    rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || rev="$rev with uncommitted changes"
    has_proxy rsproxyd && printf 'rsproxyd\t%s (commit %s)\n' "$("$RSPROXYD" --version 2>&1 | head -1)" "$rev"
    printf 'ssp\t%s\n' "$("$SSP" --version | head -1)"
    printf 'haproxy\t%s (%s)\n' "$(haproxy -v | head -1 | cut -d' ' -f1-3)" \
        "$([[ ${HAPROXY_SPLICE:-} == auto ]] && echo splice-auto || echo splice-request/response)"
    printf 'tools\t%s; %s; %s; %s\n' "$(iperf3 --version | head -1 | cut -d' ' -f1-2)" \
        "$(redis-benchmark --version)" "$(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)" "$(nginx -v 2>&1 | cut -d' ' -f3)"
    printf 'load\t%s before, %s after (1/5/15 min)\n' "$LOAD_BEFORE" "$(cut -d' ' -f1-3 /proc/loadavg)"
    cmd="benches/compare.sh"
    [[ $QUICK == 1 ]] && cmd="QUICK=1 $cmd"
    [[ $ROUNDS != 3 ]] && cmd="ROUNDS=$ROUNDS $cmd"
    [[ ${HAPROXY_SPLICE:-} == auto ]] && cmd="HAPROXY_SPLICE=auto $cmd"
    [[ -n ${BENCH_WORKLOADS:-} ]] && cmd="BENCH_WORKLOADS=\"$BENCH_WORKLOADS\" $cmd"
    [[ -n ${PROXIES_SET:-} ]] && cmd="PROXIES=\"${PROXIES[*]}\" $cmd"
    printf 'command\t%s\n' "$cmd"
} >"$OUT/machine.tsv"

python3 benches/report.py "$OUT"
if ((UDP)); then
    log "udp: benches/udp.sh"
    QUICK=$QUICK ROUNDS=$ROUNDS RSPROXYD_BIN=${RSPROXYD:-} bash benches/udp.sh "$OUT/udp" ||
        log "udp: failed, see $OUT/udp/logs"
    if [[ -s $OUT/udp/udp.md ]]; then
        printf '\n### UDP (benches/udp.sh)\n\n' >>"$OUT/results.md"
        cat "$OUT/udp/udp.md" >>"$OUT/results.md"
    fi
fi
log "wrote $OUT/results.md and $OUT/chart.svg"
