#!/usr/bin/env bash
# System calls per new connection, by call, for rsproxyd (and the proxies it is compared
# with), counted with `strace -c -f` while ab fetches a small page from nginx without
# keep-alive. The count is exact where timings are noise on a shared machine, so it shows
# what a change to the connection path removed.
#
# usage: benches/syscalls.sh                 (as root; needs strace, ab, nginx, haproxy)
# environment:
#   PROXIES="rsproxyd haproxy ssp"   what to count; rsproxyd@PATH counts the binary at PATH
#                                    (e.g. an older build, for before/after)
#   RSPROXYD_BIN=target/release/rsproxyd
#   REQUESTS=5000 CLIENTS=20         the ab run
#   BACKEND_HOST=127.0.0.1           how the proxies name nginx (localhost: a name to resolve)
# Prints one table: calls per connection for each proxy, by call, and the total; then the TCP
# segments per connection that a second ab run, without strace, sent on the whole machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/sbin

read -r -a PROXIES <<<"${PROXIES:-rsproxyd haproxy ssp}"
RSPROXYD_BIN=${RSPROXYD_BIN:-target/release/rsproxyd}
REQUESTS=${REQUESTS:-5000}
CLIENTS=${CLIENTS:-20}
BACKEND_HOST=${BACKEND_HOST:-127.0.0.1}
SSP=/lib/systemd/systemd-socket-proxyd

die() { echo "syscalls.sh: $*" >&2; exit 1; }
for t in strace ab nginx nstat systemd-socket-activate python3; do
    command -v "$t" >/dev/null || die "$t is not installed"
done

freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_listen() {
    local i
    for i in $(seq 100); do
        ss -tln | grep -q "127.0.0.1:$1 " && return 0
        sleep 0.05
    done
    die "nothing listens on 127.0.0.1:$1"
}

WORK=$(mktemp -d /tmp/rsproxyd-syscalls.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

NGINX_PORT=$(freeport)
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 8192; }
http {
    access_log off;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / { return 200 "hello\n"; }
    }
}
EOF
nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
wait_listen "$NGINX_PORT"

# Counts one proxy's calls during one ab run; writes "call count" lines to $2.
count() { # NAME OUTFILE
    local name=$1 out=$2 port argv pid tracer tag
    tag=$(tr -c 'A-Za-z0-9\n' _ <<<"$name")
    port=$(freeport)
    case $name in
    rsproxyd) argv=("$RSPROXYD_BIN" -c 4096 "$BACKEND_HOST:$NGINX_PORT") ;;
    rsproxyd@*) argv=("${name#rsproxyd@}" -c 4096 "$BACKEND_HOST:$NGINX_PORT") ;;
    ssp) argv=("$SSP" -c 4096 "$BACKEND_HOST:$NGINX_PORT") ;;
    haproxy)
        cat >"$WORK/haproxy.cfg" <<EOF
global
    maxconn 8192
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
listen relay
    bind fd@3
    server backend $BACKEND_HOST:$NGINX_PORT
EOF
        argv=(haproxy -db -q -f "$WORK/haproxy.cfg")
        ;;
    *) die "unknown proxy $name" ;;
    esac
    systemd-socket-activate -l "127.0.0.1:$port" -- "${argv[@]}" >"$WORK/$tag.log" 2>&1 &
    pid=$!
    wait_listen "$port"
    # one request first, so the proxy has started (systemd-socket-activate execs it on the
    # first connection) and its start-up calls are not counted
    curl -fsS "http://127.0.0.1:$port/" >/dev/null || die "$name: no answer through it"
    strace -c -f -o "$WORK/strace.$tag" -p "$pid" 2>"$WORK/attach.$tag" &
    tracer=$!
    local i
    for i in $(seq 100); do
        grep -q attached "$WORK/attach.$tag" 2>/dev/null && break
        sleep 0.05
    done
    ab -q -n "$REQUESTS" -c "$CLIENTS" "http://127.0.0.1:$port/" >"$WORK/ab.$tag" 2>&1 ||
        die "$name: ab failed: $(tail -3 "$WORK/ab.$tag")"
    grep -q "^Failed requests: *0" "$WORK/ab.$tag" || die "$name: ab saw failed requests"
    kill -INT "$tracer"
    wait "$tracer" 2>/dev/null || true
    # The same ab run again, without strace: TCP segments sent on the whole machine (nstat's
    # TcpOutSegs over the run; anything else on the machine counts too, so keep it quiet).
    nstat -n >/dev/null
    ab -q -n "$REQUESTS" -c "$CLIENTS" "http://127.0.0.1:$port/" >"$WORK/ab2.$tag" 2>&1 ||
        die "$name: ab failed: $(tail -3 "$WORK/ab2.$tag")"
    nstat 2>/dev/null | awk '$1 == "TcpOutSegs" { print $2 }' >"$out.segments"
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    # strace -c: "% time seconds usecs/call calls errors syscall"
    awk 'NF >= 5 && $1 ~ /^[0-9.]+$/ && $NF != "total" { print $NF, $4 }' "$WORK/strace.$tag" >"$out"
}

i=0
for p in "${PROXIES[@]}"; do
    count "$p" "$WORK/calls.$i"
    i=$((i + 1))
done

python3 - "$REQUESTS" "$WORK" "${PROXIES[@]}" <<'EOF'
import sys
n = int(sys.argv[1]); work = sys.argv[2]; names = sys.argv[3:]
tables = {}
for i, p in enumerate(names):
    t = {}
    for line in open(f"{work}/calls.{i}"):
        call, count = line.split()
        t[call] = int(count)
    tables[p] = t
calls = sorted({c for t in tables.values() for c in t},
               key=lambda c: -max(t.get(c, 0) for t in tables.values()))
label = lambda p: p if not p.startswith("rsproxyd@") else "rsproxyd@" + p.rsplit("/", 1)[-1]
print(f"calls per connection ({n} connections, ab without keep-alive)")
print("| call | " + " | ".join(label(p) for p in names) + " |")
print("|---|" + "---:|" * len(names))
for c in calls:
    print(f"| {c} | " + " | ".join(f"{tables[p].get(c, 0) / n:.2f}" for p in names) + " |")
print("| **total** | " + " | ".join(f"**{sum(tables[p].values()) / n:.2f}**" for p in names) + " |")
segments = [open(f"{work}/calls.{i}.segments").read().strip() or "0" for i in range(len(names))]
print("| TCP segments sent, whole machine (a second run, without strace) | "
      + " | ".join(f"{int(s) / n:.2f}" for s in segments) + " |")
EOF
