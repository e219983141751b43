#!/usr/bin/env bash
# End-to-end suite: the units in contrib/systemd and the rsproxyd binary under a real
# systemd (PID 1), booted with systemd-nspawn on a throw-away overlay of this machine's /.
#
# usage: tests/e2e/run.sh [PATH/TO/rsproxyd]     (default: target/release/rsproxyd)
#   E2E_PROXY=ssp  run the same checks with /lib/systemd/systemd-socket-proxyd in place of
#                  rsproxyd (a baseline: several checks are expected to fail)
#   E2E_KEEP=1     keep the work directory (the box's journal.txt, console.log) and print
#                  its path
#
# Needs root and: systemd-container (systemd-nspawn), curl, iproute2 (ss, ip), python3,
# man-db, and cargo (to generate the manual page the units name).
# Exit status: 0 all passed, 1 a check failed, 2 the suite could not run, 77 skipped
# (not root). Output: one "ok N - ..." / "not ok N - ..." line per check, then
# "N passed, M failed" alone on the last line.
#
# The box has its own network namespace (nspawn --private-network), so the fixed ports
# below cannot collide with anything on the machine, and several runs may overlap. curl
# runs from the host's file system, inside that namespace (nsenter -n).

set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
UNITS=$REPO/contrib/systemd

# --- Everything tunable, in one place -----------------------------------------------------
BIN=${1:-$REPO/target/release/rsproxyd}
PROXY_KIND=${E2E_PROXY:-rsproxyd}
SSP=/lib/systemd/systemd-socket-proxyd
# Ports of the shipped example (contrib/systemd/example.*) and of the template instance.
EXAMPLE_PORT=8080
EXAMPLE_BACKEND_PORT=8081
INSTANCE=e2e-second
INSTANCE_PORT=9080
INSTANCE_BACKEND_PORT=9081
# A second address on the box's loopback, to act as a non-local client (IPAddressDeny=).
OTHER_ADDR=10.99.0.1
# The stand-in backend: start delay before it binds, and its idle exit.
BACKEND_DELAY=0.3
BACKEND_IDLE_EXIT=4
# The proxy's idle exit in the box: shorter than the backend's, as the units recommend.
PROXY_EXIT_IDLE=2s
# What the shipped units set, for the broken-backend timing check (keep in sync).
CONNECT_TIMEOUT_S=5
# Large download for the SIGTERM check, and the client's rate (so it lasts a few seconds).
BIG_MB=200
BIG_RATE=40M
CONCURRENT=50
EXPOSURE_MAX=1.5
BOOT_TIMEOUT_S=60
# ------------------------------------------------------------------------------------------

if [[ $(id -u) -ne 0 ]]; then
    echo "SKIPPED: systemd e2e suite needs root (it mounts an overlay, boots systemd-nspawn" \
        "and enters its namespaces); run it as root, e.g. sudo $0 ${1:-}"
    exit 77
fi

die() { echo "e2e: cannot run: $*" >&2; echo "0 passed, 1 failed"; exit 2; }

for tool in systemd-nspawn nsenter curl ss ip sha256sum setsid mount pgrep od awk; do
    command -v "$tool" >/dev/null ||
        die "$tool not found (apt-get install -y systemd-container curl iproute2)"
done
[[ -x /usr/bin/python3 ]] || die "/usr/bin/python3 not found (the stand-in backend needs it)"
case $PROXY_KIND in
rsproxyd)
    [[ -x $BIN ]] || die "rsproxyd binary $BIN not found or not executable (cargo build --release?)"
    "$BIN" --help 2>&1 | grep -q -- --follow-backend ||
        die "$BIN --help does not list --follow-backend, which the shipped units use"
    ;;
ssp) [[ -x $SSP ]] || die "$SSP not found" ;;
*) die "E2E_PROXY must be rsproxyd or ssp, not $PROXY_KIND" ;;
esac

# --- Results ------------------------------------------------------------------------------
declare -A RESULT=()
PASSED=0 FAILED=0
pass() { RESULT[$1]="ok $1 - $2"; PASSED=$((PASSED + 1)); echo "# ok $1" >&2; }
fail() { RESULT[$1]="not ok $1 - $2"; FAILED=$((FAILED + 1)); echo "# not ok $1: $2" >&2; }
report() {
    local n
    for n in $(printf '%s\n' "${!RESULT[@]}" | sort -n); do echo "${RESULT[$n]}"; done
    echo "$PASSED passed, $FAILED failed"
}

# --- The box (tests/e2e/box.sh) ------------------------------------------------------------
# shellcheck source=tests/e2e/box.sh
. "$HERE/box.sh"
# shellcheck source=tests/e2e/checks_journal.sh
. "$HERE/checks_journal.sh"
BOX_BOOT_TIMEOUT_S=$BOOT_TIMEOUT_S
box_setup rsproxyd-e2e

state() { box systemctl is-active "$1" 2>/dev/null; }
prop() { box systemctl show -p "$2" --value "$1"; }
is_state() { [[ $(state "$1") == "$2" ]]; }
# dump UNIT...: the last journal lines of each unit, as comments, after a failure.
dump() {
    local u
    for u in "$@"; do
        echo "# --- journal of $u (last 15 lines)" >&2
        box journalctl -u "$u" -o short-monotonic --no-pager -n 15 2>/dev/null | sed 's/^/#   /' >&2
    done
}

# The proxy under test, at the path the units use, and the stand-in backend at the path
# example-backend.service uses. Only the overlay's upper layer (tmpfs) is written.
if [[ $PROXY_KIND == rsproxyd ]]; then
    install -m 0755 "$BIN" "$ROOT/usr/bin/rsproxyd"
else
    # The units must find an executable there to pass `systemd-analyze verify`.
    install -m 0755 "$SSP" "$ROOT/usr/bin/rsproxyd"
fi
install -D -m 0755 "$HERE/backend.py" "$ROOT/usr/local/bin/example-backend"
# The manual page, where the .deb puts it: the units' Documentation=man:rsproxyd(8) must
# resolve for `systemd-analyze verify` (check 10). Generated from the clap definition.
cargo run --locked --quiet --manifest-path "$REPO/Cargo.toml" --example mangen -- "$WORK/man" \
    >/dev/null 2>"$WORK/mangen.err" || die "cannot generate the manual page: $(cat "$WORK/mangen.err")"
mkdir -p "$ROOT/usr/share/man/man8"
gzip -9n <"$WORK/man/rsproxyd.8" >"$ROOT/usr/share/man/man8/rsproxyd.8.gz"

# The shipped units, as they are.
for unit in example.socket example.service example-backend.service \
    rsproxyd@.socket rsproxyd@.service; do
    install -m 0644 "$UNITS/$unit" "$SYSTEMD_ETC/$unit"
done

# Test settings, as drop-ins the way an administrator would override the shipped files.
STATE=/var/lib/rsproxyd-e2e
mkdir -p "$ROOT$STATE"
EXAMPLE_LOG=$STATE/example-backend.log
INSTANCE_LOG=$STATE/$INSTANCE-backend.log
BIG=$STATE/big.bin
drop_in() { # UNIT NAME CONTENT
    mkdir -p "$SYSTEMD_ETC/$1.d"
    printf '%s\n' "$3" >"$SYSTEMD_ETC/$1.d/$2.conf"
}
drop_in example-backend.service e2e "[Service]
Environment=BACKEND_DELAY=$BACKEND_DELAY BACKEND_IDLE_EXIT=$BACKEND_IDLE_EXIT
Environment=BACKEND_LOG=$EXAMPLE_LOG BACKEND_BIG_FILE=$BIG"
drop_in example.service e2e "[Service]
Environment=EXIT_IDLE_TIME=$PROXY_EXIT_IDLE"

# The second, templated service: a config file, a listen drop-in and a backend unit.
mkdir -p "$ROOT/etc/rsproxyd"
printf 'TARGET=127.0.0.1:%s\nEXIT_IDLE_TIME=%s\n' "$INSTANCE_BACKEND_PORT" "$PROXY_EXIT_IDLE" \
    >"$ROOT/etc/rsproxyd/$INSTANCE.conf"
# 0.0.0.0, so the non-local client address on the box's loopback reaches it too.
drop_in "rsproxyd@$INSTANCE.socket" listen "[Socket]
ListenStream=0.0.0.0:$INSTANCE_PORT"
cat >"$SYSTEMD_ETC/$INSTANCE-backend.service" <<EOF
[Unit]
Description=e2e: backend of the templated instance $INSTANCE
StartLimitIntervalSec=0
[Service]
Type=exec
ExecStart=/usr/local/bin/example-backend --listen 127.0.0.1:$INSTANCE_BACKEND_PORT
Environment=BACKEND_DELAY=$BACKEND_DELAY BACKEND_IDLE_EXIT=$BACKEND_IDLE_EXIT
Environment=BACKEND_LOG=$INSTANCE_LOG
Restart=no
EOF

if [[ $PROXY_KIND == ssp ]]; then
    # Baseline: the same units with systemd-socket-proxyd (252 never sends READY=1).
    for unit in example.service rsproxyd@.service; do
        drop_in "$unit" ssp "[Service]
Type=simple
ExecStart=
ExecStart=$SSP --exit-idle-time=\${EXIT_IDLE_TIME} \${TARGET}"
    done
fi

# The payload of the SIGTERM check, and its checksum.
head -c "${BIG_MB}M" /dev/urandom >"$ROOT$BIG" || die "cannot write $ROOT$BIG"
chmod 0644 "$ROOT$BIG"
BIG_SHA=$(sha256sum <"$ROOT$BIG" | cut -d' ' -f1)

# Checks 15-16 (PROXY protocol): their instance and nginx backend unit.
# shellcheck source=tests/e2e/checks_proxy.sh
. "$HERE/checks_proxy.sh"
proxy_protocol_setup

# The DNS example's units (checks 17-19, tests/e2e/checks_udp.sh).
# shellcheck source=tests/e2e/checks_udp.sh
. "$HERE/checks_udp.sh"
udp_install

# Checks 30-32 (timeouts): tests/e2e/checks_timeouts.sh.
# shellcheck source=tests/e2e/checks_timeouts.sh
. "$HERE/checks_timeouts.sh"

# --- Boot ---------------------------------------------------------------------------------
box_boot
echo "# proxy: $PROXY_KIND" >&2
net ip addr add "$OTHER_ADDR/32" dev lo || die "cannot add $OTHER_ADDR to the box's loopback"

# Does systemd enforce IPAddressDeny= in this box? A unit allowed only localhost connects to
# a closed port on the non-local address: refused (111) means the packet went out.
FIREWALL=$(box systemd-run --wait --pipe --quiet -p IPAddressDeny=any -p IPAddressAllow=localhost \
    /usr/bin/python3 -c 'import socket, sys
try:
    socket.create_connection((sys.argv[1], 1), timeout=1)
    print("open")
except OSError as e:
    print("off" if e.errno == 111 else "on")' "$OTHER_ADDR" 2>&1)
echo "# IPAddressDeny= enforced in the box: $FIREWALL" >&2

# Enable the sockets as an administrator would; nothing else is started.
udp_enable
box systemctl enable --now --quiet example.socket "rsproxyd@$INSTANCE.socket" ||
    die "systemctl enable --now example.socket rsproxyd@$INSTANCE.socket failed"

# --- Helpers for the checks ---------------------------------------------------------------
EX_SOCKET=example.socket
EX_PROXY=example.service
EX_BACKEND=example-backend.service
# get URL [CURL ARGS...]: one request from the host; prints "CODE SECONDS START_NS END_NS":
# curl's own time_total, and the wall clock just before curl started and just after it
# exited (bash's EPOCHREALTIME; the backend logs the same clock).
CURL_TIMED='s=${EPOCHREALTIME//[.,]/}
    curl -s -o /dev/null --max-time 30 -w "%{http_code} %{time_total}" "$@"
    echo " ${s}000 ${EPOCHREALTIME//[.,]/}000"'
get() {
    local url=$1
    shift
    net bash -c "$CURL_TIMED" _ "$@" "$url"
}
secs_to_ms() { awk -v s="$1" 'BEGIN { printf "%.1f", s * 1000 }'; }
# event KIND AFTER_NS LOG: the timestamp of the first KIND line ("bound", "request") at or
# after AFTER_NS in a backend log.
event() { awk -v k="$1" -v t="$2" '$1 == k && $2 >= t { print $2; exit }' "$ROOT$3" 2>/dev/null; }

# Check 4 watches the socket units at every step.
SOCKET_LOG=()
watch_sockets() { # STEP
    local u s
    for u in $EX_SOCKET "rsproxyd@$INSTANCE.socket"; do
        s=$(state "$u")
        SOCKET_LOG+=("$1:$u=$s")
    done
}
listening() { net ss -Htln "sport = :$1" | grep -q LISTEN; }
cold() { # the socket only: proxy and backend both inactive (or failed)
    local u
    for u in "$@"; do
        [[ $(state "$u") == active || $(state "$u") == activating ||
            $(state "$u") == deactivating ]] && return 1
    done
    return 0
}

URL=http://127.0.0.1:$EXAMPLE_PORT/

# --- 1. cold ------------------------------------------------------------------------------
check_cold() {
    if ! is_state $EX_SOCKET active || ! cold $EX_PROXY $EX_BACKEND; then
        fail 1 "cold start: not cold to begin with (socket $(state $EX_SOCKET), proxy $(state $EX_PROXY), backend $(state $EX_BACKEND))"
        return
    fi
    local t0 t1 code secs bound req
    read -r code secs t0 t1 <<<"$(get "$URL")"
    bound=$(event bound "$t0" "$EXAMPLE_LOG")
    req=$(event request "$t0" "$EXAMPLE_LOG")
    if [[ $code == 200 && -n $bound && -n $req ]]; then
        pass 1 "cold start (socket only active): HTTP 200 (measured $(secs_to_ms "$secs") ms; backend bound at +$(ms "$t0" "$bound") ms, request reached it $(ms "$bound" "$req") ms after its bind, curl done $(ms "$bound" "$t1") ms after it)"
    else
        fail 1 "cold start: HTTP $code after $(secs_to_ms "$secs") ms (backend bind ${bound:-not seen})"
        dump $EX_PROXY $EX_BACKEND
    fi
}

# --- 2. warm ------------------------------------------------------------------------------
check_warm() {
    local code secs t0 t1
    read -r code secs t0 t1 <<<"$(get "$URL")"
    if [[ $code == 200 ]] && is_state $EX_PROXY active && is_state $EX_BACKEND active; then
        pass 2 "warm (proxy and backend up): HTTP 200 (measured $(secs_to_ms "$secs") ms)"
    else
        fail 2 "warm: HTTP $code, proxy $(state $EX_PROXY), backend $(state $EX_BACKEND)"
        dump $EX_PROXY $EX_BACKEND
    fi
}

# --- 3. backend stopped under a running proxy ---------------------------------------------
check_backend_stopped() {
    # The proxy must be running when the backend goes, or this is only another cold start.
    if ! is_state $EX_PROXY active; then get "$URL" >/dev/null; fi
    local before t0 t1 code secs after how
    before=$(prop $EX_PROXY InvocationID)
    if ! is_state $EX_PROXY active; then
        fail 3 "backend stopped: could not get the proxy running first ($(state $EX_PROXY))"
        return
    fi
    box systemctl stop $EX_BACKEND
    read -r code secs t0 t1 <<<"$(get "$URL")"
    after=$(prop $EX_PROXY InvocationID)
    if [[ $before != "$after" ]]; then
        how="the proxy followed the backend down and was re-activated"
    else
        how="the same proxy run served it"
    fi
    local bound
    bound=$(event bound "$t0" "$EXAMPLE_LOG")
    if [[ $code == 200 ]]; then
        pass 3 "backend force-stopped (systemctl stop), proxy running: next request HTTP 200 (measured $(secs_to_ms "$secs") ms; $how; backend bound at +$(ms "$t0" "${bound:-$t0}") ms, curl done $(ms "${bound:-$t0}" "$t1") ms after it)"
    else
        fail 3 "backend force-stopped: HTTP $code after $(secs_to_ms "$secs") ms ($how)"
        dump $EX_PROXY $EX_BACKEND
    fi
}

# --- 5. idle exits ------------------------------------------------------------------------
check_idle_exit() {
    local t0 t1 proxy_down='' backend_down='' deadline code secs
    # Make sure both are up, then leave them alone.
    read -r code secs t0 t1 <<<"$(get "$URL")"
    t0=$(now_ns)
    deadline=$((t0 + 30 * 1000000000))
    while (($(now_ns) < deadline)); do
        [[ -z $proxy_down ]] && ! is_state $EX_PROXY active && proxy_down=$(now_ns)
        [[ -z $backend_down ]] && ! is_state $EX_BACKEND active && backend_down=$(now_ns)
        [[ -n $proxy_down && -n $backend_down ]] && break
        sleep 0.02
    done
    if [[ $code != 200 || -z $backend_down || -z $proxy_down ]]; then
        fail 5 "idle exit: primed with HTTP $code; after 30 s proxy $(state $EX_PROXY), backend $(state $EX_BACKEND)"
        dump $EX_PROXY $EX_BACKEND
        return
    fi
    local ps bs ls
    ps=$(state $EX_PROXY)
    bs=$(prop $EX_BACKEND Result)
    ls=no
    listening "$EXAMPLE_PORT" && ls=yes
    local code2 secs2
    read -r code2 secs2 t1 t1 <<<"$(get "$URL")"
    if [[ $ps != active && $bs == success && $ls == yes && $code2 == 200 ]] && is_state $EX_SOCKET active; then
        pass 5 "idle exits: proxy down $(ms "$t0" "$proxy_down") ms and backend down $(ms "$t0" "$backend_down") ms after the last request (backend exit: $bs), port still listening, next request HTTP 200 (measured $(secs_to_ms "$secs2") ms, a cold start)"
    else
        fail 5 "idle exits: proxy $ps, backend result $bs, port listening: $ls, next request HTTP $code2"
        dump $EX_PROXY $EX_BACKEND
    fi
}

# --- 12. the proxy idle-exits first, as configured; the backend is still up -----------------
check_proxy_only_restart() {
    local code secs t0 t1 why=''
    read -r code secs t0 t1 <<<"$(get "$URL")"
    [[ $code == 200 ]] || why+="priming request: HTTP $code; "
    wait_until 10 eval '! is_state '$EX_PROXY' active' || why+="proxy did not idle-exit; "
    if ! is_state $EX_BACKEND active; then
        fail 12 "proxy idle exit before the backend's: backend already $(state $EX_BACKEND) (${why%; })"
        return
    fi
    read -r code secs t0 t1 <<<"$(get "$URL")"
    [[ $code == 200 ]] || why+="HTTP $code; "
    if [[ -z $why ]]; then
        pass 12 "proxy idle-exited, backend still up (the usual state after EXIT_IDLE_TIME): HTTP 200 (measured $(secs_to_ms "$secs") ms: re-activating the hardened proxy)"
    else
        fail 12 "proxy idle-exited, backend up: ${why%; }"
        dump $EX_PROXY $EX_BACKEND
    fi
}

# --- 6. many first requests on a cold backend ---------------------------------------------
check_concurrent() {
    box systemctl stop --quiet $EX_PROXY $EX_BACKEND
    if ! wait_until 10 cold $EX_PROXY $EX_BACKEND; then
        fail 6 "concurrent: could not make the backend cold"
        return
    fi
    local dir=$WORK/concurrent t0
    mkdir -p "$dir"
    t0=$(now_ns)
    net bash -c '
        for i in $(seq "$1"); do
            bash -c "$4" _ "$2" >"$3/$i" &
        done
        wait' _ "$CONCURRENT" "$URL" "$dir" "$CURL_TIMED"
    local ok200 slowest bound last_end
    ok200=$(cat "$dir"/* | awk '$1 == 200' | wc -l)
    slowest=$(cat "$dir"/* | awk '{ if ($2 > m) m = $2 } END { printf "%.1f", m * 1000 }')
    last_end=$(cat "$dir"/* | awk '{ if ($4 > m) m = $4 } END { printf "%.0f", m }')
    bound=$(event bound "$t0" "$EXAMPLE_LOG")
    if [[ $ok200 -eq $CONCURRENT ]]; then
        pass 6 "$CONCURRENT concurrent first requests on a cold backend: all HTTP 200 (measured: slowest $slowest ms; backend bound at +$(ms "$t0" "${bound:-$t0}") ms, last curl done $(ms "${bound:-$t0}" "$last_end") ms after it)"
    else
        fail 6 "$CONCURRENT concurrent first requests: $ok200 got HTTP 200; codes: $(cut -d' ' -f1 "$dir"/* | sort | uniq -c | xargs)"
        dump $EX_PROXY $EX_BACKEND
    fi
}

# --- 7. a backend that fails to start, then is fixed --------------------------------------
check_broken_backend() {
    box systemctl stop --quiet $EX_PROXY $EX_BACKEND
    drop_in $EX_BACKEND zz-broken "[Service]
ExecStart=
ExecStart=/bin/false"
    box systemctl daemon-reload
    wait_until 10 cold $EX_PROXY $EX_BACKEND
    local cursor t0 t1 code1 secs1 code2 secs2 why=''
    cursor=$(box journalctl -q -n 0 --show-cursor | sed -n 's/^-- cursor: //p')
    read -r code1 secs1 t0 t1 <<<"$(get "$URL")"
    # A second client while still broken: the socket must still re-activate the proxy.
    read -r code2 secs2 t0 t1 <<<"$(get "$URL")"
    local limit_ms=$(((CONNECT_TIMEOUT_S + 3) * 1000))
    [[ $code1 == 200 || $code2 == 200 ]] && why+="a broken backend answered 200?; "
    awk -v a="$secs1" -v b="$secs2" -v l="$limit_ms" 'BEGIN { exit !(a * 1000 > l || b * 1000 > l) }' &&
        why+="not prompt (over $limit_ms ms); "
    # The socket must not be failed, nor left readable with a queued client, and each
    # client must have cost one activation, not a re-trigger loop.
    wait_until 10 cold $EX_PROXY
    local sock sres queued starts
    sock=$(state $EX_SOCKET)
    sres=$(prop $EX_SOCKET Result)
    [[ $sock == active && $sres == success ]] || why+="socket is $sock (result $sres); "
    queued=$(net ss -Htln "sport = :$EXAMPLE_PORT" | awk '{ print $2; exit }')
    [[ $queued == 0 ]] || why+="$queued client(s) left queued in the socket; "
    starts=$(box journalctl -u $EX_PROXY --after-cursor="$cursor" -o cat --no-pager 2>/dev/null |
        grep -c '^Started ')
    ((starts <= 2)) || why+="$starts proxy activations for 2 clients; "
    # The journal says why, naming the backend. journald stores what the proxy sent
    # asynchronously, so the line may land a moment after the proxy stopped: look for up to 5 s.
    local line i
    for i in $(seq 50); do
        line=$(box journalctl -u $EX_PROXY --after-cursor="$cursor" -p warning -o cat --no-pager 2>/dev/null |
            grep -m1 "127.0.0.1:$EXAMPLE_BACKEND_PORT")
        [[ -n $line ]] && break
        sleep 0.1
    done
    if [[ -z $line ]]; then
        # Say what the journal holds, for the next look at this (the unit's fields included).
        local seen
        seen=$(box journalctl --after-cursor="$cursor" -t rsproxyd -p warning -o json --no-pager 2>&1 |
            grep -o '"_SYSTEMD_UNIT":"[^"]*"\|"MESSAGE":"[^"]*"\|Failed to [^"]*' | head -4 | tr '\n' ' ')
        why+="no warning of $EX_PROXY names 127.0.0.1:$EXAMPLE_BACKEND_PORT (cursor '${cursor:0:20}...', rsproxyd warnings: ${seen:-none}); "
    fi
    local bstate
    bstate=$(state $EX_BACKEND)
    # Fix the backend: remove the drop-in, reload. No reset-failed, no start.
    rm -f "$SYSTEMD_ETC/$EX_BACKEND.d/zz-broken.conf"
    box systemctl daemon-reload
    local code3 secs3
    read -r code3 secs3 t0 t1 <<<"$(get "$URL")"
    [[ $code3 == 200 ]] || why+="after the fix: HTTP $code3; "
    if [[ -z $why ]]; then
        pass 7 "backend fails to start (ExecStart=/bin/false): clients closed promptly (measured $(secs_to_ms "$secs1") ms and $(secs_to_ms "$secs2") ms, HTTP $code1/$code2, $starts proxy activations, accept queue $queued), socket $sock/$sres, backend $bstate, journal warning: \"$line\"; fixed backend served at once, HTTP 200 (measured $(secs_to_ms "$secs3") ms), no reset-failed"
    else
        fail 7 "broken backend: ${why%; } (requests: HTTP $code1 in $(secs_to_ms "$secs1") ms, $code2 in $(secs_to_ms "$secs2") ms)"
        dump $EX_SOCKET $EX_PROXY $EX_BACKEND
    fi
}

# --- 8. SIGTERM during a large download ---------------------------------------------------
check_sigterm_download() {
    local out=$WORK/download.bin t0 curl_pid
    t0=$(now_ns)
    net curl -s --max-time 120 --limit-rate "$BIG_RATE" -o "$out" "http://127.0.0.1:$EXAMPLE_PORT/big" &
    curl_pid=$!
    # Stop the proxy once a tenth of the file has arrived.
    local tenth=$((BIG_MB * 1024 * 1024 / 10))
    if ! wait_until 30 eval '[[ $(stat -c %s "'"$out"'" 2>/dev/null || echo 0) -ge '"$tenth"' ]]'; then
        kill "$curl_pid" 2>/dev/null
        wait "$curl_pid"
        fail 8 "SIGTERM during download: the download did not get going"
        dump $EX_PROXY $EX_BACKEND
        return
    fi
    local t_term got_at_term
    got_at_term=$(stat -c %s "$out")
    t_term=$(now_ns)
    box systemctl stop --no-block $EX_PROXY
    # A new client while the proxy drains: it waits in the socket's queue, and is served by
    # the next activation once the drain is over.
    local during=$WORK/during-drain late='' lcode lsecs lt0 lt1
    if wait_until 10 is_state $EX_PROXY deactivating; then
        get "$URL" >"$during" &
        late=$!
    fi
    wait "$curl_pid"
    local rc=$? t_done
    t_done=$(now_ns)
    wait_until 60 cold $EX_PROXY
    local pres
    pres=$(prop $EX_PROXY Result)
    if [[ -n $late ]]; then
        wait "$late"
        read -r lcode lsecs lt0 lt1 <"$during"
    fi
    local size sha
    size=$(stat -c %s "$out" 2>/dev/null || echo 0)
    sha=$(sha256sum <"$out" | cut -d' ' -f1)
    rm -f "$out"
    if [[ $rc -eq 0 && $size -eq $((BIG_MB * 1024 * 1024)) && $sha == "$BIG_SHA" && $pres == success && ${lcode:-} == 200 ]]; then
        pass 8 "SIGTERM (systemctl stop) to the proxy during a $BIG_MB MB download at $BIG_RATE/s: completed intact, sha256 matches (measured $(ms "$t0" "$t_done") ms total, $(ms "$t_term" "$t_done") ms of it after the stop, which came at $((got_at_term / 1048576)) MB; proxy result: $pres); a request sent during the drain: HTTP 200 after $(secs_to_ms "$lsecs") ms"
    else
        fail 8 "SIGTERM during download: curl exit $rc, $size of $((BIG_MB * 1048576)) bytes, sha256 $([[ $sha == "$BIG_SHA" ]] && echo matches || echo differs), proxy result $pres, request during the drain: HTTP ${lcode:-not sent}"
        dump $EX_PROXY
    fi
}

# --- 13. a backend that leaves after every request -----------------------------------------
# Each request finds the backend gone under a running proxy: the proxy exits and is
# re-activated (one proxy start per request). With systemd's default start limit on the
# proxy (5 in 10 s) the fifth such request failed it with start-limit-hit and the socket
# with service-start-limit-hit; the units set StartLimitIntervalSec=0 against that.
check_backend_flapping() {
    local n=12 i code secs t0 t1 codes=() slowest=0 why='' proxy_up=0 cursor starts
    cursor=$(box journalctl -q -n 0 --show-cursor | sed -n 's/^-- cursor: //p')
    drop_in $EX_BACKEND zz-flap "[Service]
Environment=BACKEND_IDLE_EXIT=0.05"
    box systemctl daemon-reload
    for ((i = 0; i < n; i++)); do
        # Wait until the backend has left (the proxy stays up: its idle time is longer).
        wait_until 10 eval '! is_state '$EX_BACKEND' active' || why+="backend did not leave; "
        is_state $EX_PROXY active && proxy_up=$((proxy_up + 1))
        read -r code secs t0 t1 <<<"$(get "$URL")"
        codes+=("$code")
        slowest=$(awk -v a="$slowest" -v b="$secs" 'BEGIN { print (b > a ? b : a) }')
    done
    rm -f "$SYSTEMD_ETC/$EX_BACKEND.d/zz-flap.conf"
    box systemctl daemon-reload
    local good
    good=$(printf '%s\n' "${codes[@]}" | grep -c '^200$')
    ((good == n)) || why+="$good of $n got HTTP 200 (${codes[*]}); "
    local sock sres
    sock=$(state $EX_SOCKET)
    sres=$(prop $EX_SOCKET Result)
    [[ $sock == active && $sres == success ]] || why+="socket $sock (result $sres); "
    starts=$(box journalctl -u $EX_PROXY --after-cursor="$cursor" -o cat --no-pager 2>/dev/null |
        grep -c '^Started ')
    if [[ -z $why ]]; then
        pass 13 "backend exits 50 ms after every request: $n requests, $proxy_up of them finding it gone under a running proxy, all HTTP 200 (measured: slowest $(secs_to_ms "$slowest") ms), $starts proxy starts, socket $sock/$sres"
    else
        fail 13 "flapping backend: ${why%; }"
        dump $EX_SOCKET $EX_PROXY $EX_BACKEND
    fi
}

# --- 9. the templated instance ------------------------------------------------------------
check_template() {
    local proxy=rsproxyd@$INSTANCE.service backend=$INSTANCE-backend.service
    local sock=rsproxyd@$INSTANCE.socket url=http://127.0.0.1:$INSTANCE_PORT/ why=''
    if ! is_state "$sock" active || ! cold "$proxy" "$backend"; then
        fail 9 "template: not cold to begin with (socket $(state "$sock"), proxy $(state "$proxy"), backend $(state "$backend"))"
        return
    fi
    local t0 t1 t c1 s1 c2 s2 c3 s3 c4 bound
    read -r c1 s1 t0 t1 <<<"$(get "$url")"
    bound=$(event bound "$t0" "$INSTANCE_LOG")
    [[ $c1 == 200 ]] || why+="cold: HTTP $c1; "
    read -r c2 s2 t t <<<"$(get "$url")"
    [[ $c2 == 200 ]] || why+="warm: HTTP $c2; "
    # A client from a non-local address: IPAddressDeny= must not touch client connections.
    read -r c3 s3 t t <<<"$(get "http://$OTHER_ADDR:$INSTANCE_PORT/" --interface "$OTHER_ADDR")"
    [[ $c3 == 200 ]] || why+="client from $OTHER_ADDR: HTTP $c3; "
    [[ $FIREWALL == on ]] || why+="IPAddressDeny= not enforced in the box ($FIREWALL), the non-local client proves nothing; "
    # The instance's unix socket, from inside the box (it lives in the box's /run).
    c4=$(box curl -s -o /dev/null --max-time 30 -w '%{http_code}' \
        --unix-socket "/run/rsproxyd/$INSTANCE.sock" http://localhost/)
    [[ $c4 == 200 ]] || why+="unix socket: HTTP $c4; "
    if [[ -z $why ]]; then
        pass 9 "template instance rsproxyd@$INSTANCE (+ /etc/rsproxyd/$INSTANCE.conf, $backend): cold HTTP 200 (measured $(secs_to_ms "$s1") ms; backend bound at +$(ms "$t0" "${bound:-$t0}") ms, curl done $(ms "${bound:-$t0}" "$t1") ms after it), warm 200 ($(secs_to_ms "$s2") ms), client from non-local $OTHER_ADDR 200 with IPAddressDeny= enforced ($(secs_to_ms "$s3") ms), unix socket 200"
    else
        fail 9 "template instance: ${why%; }"
        dump "$sock" "$proxy" "$backend"
    fi
}

# --- 14. control: the seed's BindsTo= with the same broken backend --------------------------
# What the shipped Wants= avoids, shown with the same binary: the proxy's start job fails
# with the backend's, the queued client re-triggers the socket until "Trigger limit hit",
# and the port stays dead after the fix. Runs last: it leaves the socket failed (then reset).
check_control_bindsto() {
    box systemctl stop --quiet $EX_PROXY $EX_BACKEND
    drop_in $EX_BACKEND zz-broken "[Service]
ExecStart=
ExecStart=/bin/false"
    drop_in $EX_PROXY zz-bindsto "[Unit]
BindsTo=$EX_BACKEND"
    box systemctl daemon-reload
    wait_until 10 cold $EX_PROXY $EX_BACKEND
    local code secs t0 t1 sres code2
    read -r code secs t0 t1 <<<"$(get "$URL")"
    wait_until 10 eval '[[ $(state '$EX_SOCKET') != active ]]'
    sres=$(prop $EX_SOCKET Result)
    rm -f "$SYSTEMD_ETC/$EX_BACKEND.d/zz-broken.conf" "$SYSTEMD_ETC/$EX_PROXY.d/zz-bindsto.conf"
    box systemctl daemon-reload
    read -r code2 secs t0 t1 <<<"$(get "$URL")"
    box systemctl reset-failed $EX_SOCKET $EX_PROXY $EX_BACKEND
    box systemctl start $EX_SOCKET
    if [[ $sres == trigger-limit-hit && $code2 != 200 ]]; then
        pass 14 "control, not shipped: BindsTo= instead of Wants= with the same broken backend drives the socket to $sres, and the fixed backend is unreachable (HTTP $code2) until reset-failed: what check 7 guards against"
    else
        fail 14 "control: with BindsTo= the socket ended $sres and the fixed backend answered HTTP $code2; expected trigger-limit-hit and no answer (has systemd changed?)"
    fi
}

# --- 4. the sockets, at every step ----------------------------------------------------------
check_sockets() {
    local bad=() entry u
    for entry in "${SOCKET_LOG[@]}"; do
        [[ ${entry##*=} == active ]] || bad+=("$entry")
    done
    for u in $EX_SOCKET "rsproxyd@$INSTANCE.socket"; do
        [[ $(prop "$u" Result) == success ]] || bad+=("end:$u result=$(prop "$u" Result)")
    done
    if [[ ${#bad[@]} -eq 0 ]]; then
        pass 4 "both socket units active at every step (${#SOCKET_LOG[@]} samples), result success at the end"
    else
        fail 4 "socket units not active at: ${bad[*]}"
    fi
}

# --- 10. systemd-analyze verify -------------------------------------------------------------
check_verify() {
    local unit out bad=()
    for unit in example.socket example.service example-backend.service \
        rsproxyd@.socket rsproxyd@.service; do
        # Verify the shipped file itself, not the drop-ins this suite added.
        out=$(box systemd-analyze verify "/usr/local/share/rsproxyd-e2e/$unit" 2>&1) ||
            bad+=("$unit: ${out//$'\n'/ | }")
        [[ -z $out ]] || bad+=("$unit: ${out//$'\n'/ | }")
    done
    if [[ ${#bad[@]} -eq 0 ]]; then
        pass 10 "systemd-analyze verify: all 5 shipped units clean"
    else
        fail 10 "systemd-analyze verify: ${bad[*]}"
    fi
}

# --- 11. systemd-analyze security -----------------------------------------------------------
check_security() {
    local unit score scores=() over=()
    for unit in example.service rsproxyd@.service; do
        score=$(box systemd-analyze security --offline=yes "/usr/local/share/rsproxyd-e2e/$unit" 2>&1 |
            sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
        scores+=("$unit ${score:-?}")
        if [[ -z $score ]] || awk -v s="$score" -v m="$EXPOSURE_MAX" 'BEGIN { exit !(s > m) }'; then
            over+=("$unit ${score:-unknown}")
        fi
    done
    if [[ ${#over[@]} -eq 0 ]]; then
        pass 11 "systemd-analyze security --offline=yes: exposure $(IFS=,; echo "${scores[*]}" | sed 's/,/, /g') (limit $EXPOSURE_MAX)"
    else
        fail 11 "systemd-analyze security: over $EXPOSURE_MAX: ${over[*]}"
    fi
}

# Checks 20-26: rsproxyd-generator (/etc/rsproxyd/NAME.proxy -> units).
# shellcheck source=tests/e2e/checks_generator.sh
. "$HERE/checks_generator.sh"

# A pristine copy of the shipped units for checks 10 and 11, away from the drop-in dirs.
mkdir -p "$ROOT/usr/local/share/rsproxyd-e2e"
cp "$UNITS"/*.socket "$UNITS"/*.service "$ROOT/usr/local/share/rsproxyd-e2e/"

SUITE_START=$(now_ns)
watch_sockets start
check_cold;            watch_sockets 1
check_warm;            watch_sockets 2
check_backend_stopped; watch_sockets 3
check_idle_exit;       watch_sockets 5
check_proxy_only_restart; watch_sockets 12
check_concurrent;      watch_sockets 6
check_broken_backend;  watch_sockets 7
check_sigterm_download; watch_sockets 8
check_backend_flapping; watch_sockets 13
check_template;        watch_sockets 9
check_udp_cold;        watch_sockets 17
check_udp_tcp;         watch_sockets 18
check_udp_idle;        watch_sockets 19
check_silent_client;   watch_sockets 30
check_vanished_client; watch_sockets 31
check_queue_limit;     watch_sockets 32
check_sockets
check_control_bindsto
check_verify
check_security
check_proxy_protocol
check_journal_fields
check_journal_timeout
check_journal_summary
check_gen_units
check_gen_first
check_gen_idle
check_gen_broken
check_gen_override
check_gen_sandbox
check_gen_user
echo "# checks took $(ms "$SUITE_START" "$(now_ns)") ms" >&2

if [[ ${E2E_KEEP:-} == 1 ]]; then
    box journalctl -o short-monotonic --no-pager >"$WORK/journal.txt" 2>&1
fi
report
[[ $FAILED -eq 0 ]]
