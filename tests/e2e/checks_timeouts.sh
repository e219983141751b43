# shellcheck shell=bash
# e2e checks 30-32 (issue 15): nothing holds or waits forever, under the real systemd of
# run.sh, with the shipped example units and drop-ins that shorten their timeouts so the
# checks take seconds:
#   30  a client that goes silent mid-request: CONNECTION_IDLE_TIMEOUT ends its relay with
#       a FIN, proxy and backend both stop, the socket keeps listening, the next client is
#       served;
#   31  a client that vanishes (nftables drops everything to and from its address in the
#       box's network namespace): the keepalive of example.socket (a drop-in with 1 s
#       timings) frees the relay, with no idle timeout set; then the same as 30;
#   32  as systemd's own socket-proxyd test: --connections-max=1 with one connection held,
#       the next client is closed unserved within --queue-timeout, the journal says "Hit
#       connection limit", and the held connection still gets its answer.
# Sourced by run.sh, which defines box, net, state, prop, get, drop_in, dump, pass, fail,
# wait_until, now_ns, ms, cold, listening and the EX_* names.

# The shortened timeouts the checks use (the shipped values are minutes).
TO_IDLE=2s
TO_KEEPALIVE_S=1
TO_QUEUE=1s
TO_QUEUE_S=1
# The address of the client that vanishes, on the box's loopback.
VANISHING_ADDR=127.0.0.9

# A client that sends the first line of an HTTP request and then goes silent. Arguments:
# SOURCE_ADDR ('' for any) PORT OUT_FILE FINISH_AFTER_S. If the connection ends first, it
# writes "eof MS" (a FIN), "reset MS" or "error-ERRNO MS" to OUT_FILE, MS counted from the
# send. After FINISH_AFTER_S (0: never) it finishes the request and writes "http CODE MS".
# It writes its pid to OUT_FILE.open once its first line is sent.
SILENT_CLIENT='import signal, socket, sys, time
# SIGTERM (check 31 ends its vanished client) is a normal exit: no "Terminated" in the output.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
src, port, out, finish = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
s = socket.socket()
if src:
    s.bind((src, 0))
s.connect(("127.0.0.1", port))
s.sendall(b"GET / HTTP/1.0\r\n")
t0 = time.monotonic()
open(out + ".open", "w").write("%d\n" % __import__("os").getpid())
el = lambda: int((time.monotonic() - t0) * 1000)
s.settimeout(finish if finish > 0 else 120)
try:
    d = s.recv(1)
    res = ("eof %d" % el()) if not d else ("data %d" % el())
except socket.timeout:
    if finish > 0:
        s.settimeout(10)
        s.sendall(b"\r\n")
        got = b""
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
                got += d
        except OSError:
            pass
        code = got.split(b" ")[1].decode() if got.startswith(b"HTTP/") else "000"
        res = "http %s %d" % (code, el())
    else:
        res = "open %d" % el()
except ConnectionResetError:
    res = "reset %d" % el()
except OSError as e:
    res = "error-%d %d" % (e.errno, el())
open(out, "w").write(res + "\n")'

# silent_client NAME SOURCE FINISH_AFTER: starts the client in the box's network namespace
# in the background (its job's pid in CLIENT_JOB); its result lands in $WORK/NAME.
CLIENT_JOB=
silent_client() {
    rm -f "$WORK/$1" "$WORK/$1.open"
    net /usr/bin/python3 -c "$SILENT_CLIENT" "$2" "$EXAMPLE_PORT" "$WORK/$1" "$3" &
    CLIENT_JOB=$!
}

# after_silence CHECK WHAT T0: the common end of checks 30 and 31: proxy and backend both
# stop, the socket keeps listening, the next client is served. Appends to $why.
after_silence() {
    local code secs t t1
    wait_until 20 cold $EX_PROXY $EX_BACKEND ||
        why+="after $(ms "$3" "$(now_ns)") ms proxy $(state $EX_PROXY), backend $(state $EX_BACKEND); "
    down_ms=$(ms "$3" "$(now_ns)")
    is_state $EX_SOCKET active || why+="socket $(state $EX_SOCKET); "
    listening "$EXAMPLE_PORT" || why+="port $EXAMPLE_PORT not listening; "
    read -r code secs t t1 <<<"$(get "$URL")"
    next_code=$code next_ms=$(secs_to_ms "$secs")
    [[ $code == 200 ]] || why+="next client: HTTP $code; "
}

# Stops proxy and backend and waits until both are down.
make_cold() {
    box systemctl stop --quiet $EX_PROXY $EX_BACKEND
    wait_until 10 cold $EX_PROXY $EX_BACKEND
}

# --- 30. a client that goes silent: the idle timeout ----------------------------------------
check_silent_client() {
    local why='' t0 res how took down_ms next_code next_ms
    make_cold
    drop_in $EX_PROXY zz-timeouts "[Service]
Environment=CONNECTION_IDLE_TIMEOUT=$TO_IDLE"
    box systemctl daemon-reload
    t0=$(now_ns)
    silent_client silent30 '' 0
    wait_until 30 test -s "$WORK/silent30" || why+="the silent client was never closed; "
    read -r how took <"$WORK/silent30" 2>/dev/null
    [[ $how == eof ]] || why+="the client saw '${how:-nothing}', not a FIN; "
    # The request's first line moved at the activation (about 0.4 s); the FIN comes 2 s later.
    [[ ${took:-0} -ge 1900 && ${took:-0} -lt 6000 ]] || why+="closed after ${took:-?} ms, want about 2 s + the cold start; "
    after_silence 30 "silent client" "$t0"
    make_cold
    rm -f "$SYSTEMD_ETC/$EX_PROXY.d/zz-timeouts.conf"
    box systemctl daemon-reload
    wait "$CLIENT_JOB" 2>/dev/null
    if [[ -z $why ]]; then
        pass 30 "a client silent mid-request, CONNECTION_IDLE_TIMEOUT=$TO_IDLE: closed with a FIN $took ms after it sent its last byte (the cold start included), proxy and backend both down $down_ms ms after it connected, socket listening, next request HTTP $next_code ($next_ms ms)"
    else
        fail 30 "silent client: ${why%; }"
        dump $EX_PROXY $EX_BACKEND
    fi
}

# --- 31. a client that vanishes: keepalive from the socket unit -----------------------------
check_vanished_client() {
    local why='' t0 t_drop res how took down_ms next_code next_ms timer
    make_cold
    drop_in $EX_SOCKET zz-keepalive "[Socket]
KeepAlive=yes
KeepAliveTimeSec=$TO_KEEPALIVE_S
KeepAliveIntervalSec=$TO_KEEPALIVE_S
KeepAliveProbes=2"
    # No idle timeout: only keepalive can free this relay.
    drop_in $EX_PROXY zz-timeouts "[Service]
Environment=CONNECTION_IDLE_TIMEOUT=infinity HALF_CLOSE_TIMEOUT=infinity"
    box systemctl daemon-reload
    box systemctl restart $EX_SOCKET
    t0=$(now_ns)
    silent_client vanish31 "$VANISHING_ADDR" 0
    wait_until 10 test -e "$WORK/vanish31.open" || why+="the client did not connect; "
    # Relayed: the proxy runs and holds a connection to the backend.
    wait_until 10 eval 'net ss -Htn state established "( dport = :$EXAMPLE_BACKEND_PORT )" | grep -q .' ||
        why+="the client was not relayed; "
    # The unit's keepalive, inherited by the accepted connection.
    timer=$(net ss -Htno state established "( sport = :$EXAMPLE_PORT and dst $VANISHING_ADDR )" |
        grep -o 'timer:([^)]*)' | head -n1)
    [[ $timer == *keepalive* ]] || why+="no keepalive timer on the accepted connection (${timer:-none}); "
    net nft -f - <<EOF || why+="nft failed; "
table inet e2e_vanish {
    chain out {
        type filter hook output priority 0;
        ip saddr $VANISHING_ADDR drop
        ip daddr $VANISHING_ADDR drop
    }
}
EOF
    t_drop=$(now_ns)
    wait_until 20 eval '! net ss -Htn state established "( dport = :$EXAMPLE_BACKEND_PORT )" | grep -q .' ||
        why+="the backend connection was still open 20 s after the drop; "
    local freed_ms
    freed_ms=$(ms "$t_drop" "$(now_ns)")
    after_silence 31 "vanished client" "$t_drop"
    net nft delete table inet e2e_vanish
    make_cold
    rm -f "$SYSTEMD_ETC/$EX_SOCKET.d/zz-keepalive.conf" "$SYSTEMD_ETC/$EX_PROXY.d/zz-timeouts.conf"
    box systemctl daemon-reload
    box systemctl restart $EX_SOCKET
    # The vanished client never hears of the end (every packet to it was dropped): end it,
    # quietly (a disowned job is not reported as "Terminated").
    disown "$CLIENT_JOB" 2>/dev/null
    kill "$(cat "$WORK/vanish31.open" 2>/dev/null)" 2>/dev/null
    if [[ -z $why ]]; then
        pass 31 "a client that vanished (nftables drops $VANISHING_ADDR, no FIN or reset), socket KeepAlive=yes with ${TO_KEEPALIVE_S}s/${TO_KEEPALIVE_S}s/2 probes (accepted connection: $timer), no idle timeout: relay and backend connection freed $freed_ms ms after the drop, proxy and backend both down $down_ms ms after it, socket listening, next request HTTP $next_code ($next_ms ms)"
    else
        fail 31 "vanished client: ${why%; }"
        dump $EX_SOCKET $EX_PROXY $EX_BACKEND
    fi
}

# --- 32. the connection limit, as systemd's TEST-74-AUX-UTILS.socket-proxyd -----------------
# hit_lines: the proxy's "Hit connection limit" warnings in the box's journal.
hit_lines() {
    box journalctl -u $EX_PROXY -p warning -o cat --no-pager 2>/dev/null | grep 'Hit connection limit'
}
check_queue_limit() {
    local why='' hits code secs t0 t1 how held took line
    make_cold
    drop_in $EX_PROXY zz-limit "[Service]
ExecStart=
ExecStart=/usr/bin/rsproxyd --follow-backend --connect-timeout=\${CONNECT_TIMEOUT} --exit-idle-time=\${EXIT_IDLE_TIME} --connections-max=1 --queue-timeout=$TO_QUEUE \${TARGET}"
    box systemctl daemon-reload
    # Warnings of this kind so far (a cursor taken here missed later lines in the box's
    # journal: counting is simpler and does not depend on it).
    hits=$(hit_lines | wc -l)
    # The held connection: relayed, and it finishes its request 8 s later.
    silent_client held32 '' 8
    wait_until 10 eval 'net ss -Htn state established "( dport = :$EXAMPLE_BACKEND_PORT )" | grep -q .' ||
        why+="the held client was not relayed; "
    read -r code secs t0 t1 <<<"$(get "$URL")"
    [[ $code == 000 ]] || why+="the client over the limit got HTTP $code; "
    local limit_ms=$((TO_QUEUE_S * 1000))
    awk -v s="$secs" -v l="$limit_ms" 'BEGIN { exit !(s * 1000 >= l * 0.9 && s * 1000 < l + 3000) }' ||
        why+="closed after $(secs_to_ms "$secs") ms, want about $limit_ms ms; "
    wait_until 20 test -s "$WORK/held32" || why+="the held client never finished; "
    read -r how held took <"$WORK/held32" 2>/dev/null
    [[ $how == http && $held == 200 ]] || why+="the held connection got '${how:-nothing} ${held:-}'; "
    local now
    now=$(hit_lines | wc -l)
    line=$(hit_lines | tail -n1)
    ((now == hits + 1)) || why+="$((now - hits)) new 'Hit connection limit' warnings in the journal, want 1; "
    make_cold
    rm -f "$SYSTEMD_ETC/$EX_PROXY.d/zz-limit.conf"
    box systemctl daemon-reload
    wait "$CLIENT_JOB" 2>/dev/null
    if [[ -z $why ]]; then
        pass 32 "--connections-max=1 --queue-timeout=$TO_QUEUE, one connection held: the next client closed unserved (HTTP $code after $(secs_to_ms "$secs") ms), journal: \"$line\"; the held connection then got HTTP $held"
    else
        fail 32 "connection limit: ${why%; }"
        dump $EX_PROXY $EX_BACKEND
    fi
}
