# Checks 27-29 of tests/e2e/run.sh (sourced by it): the journal fields rsproxyd writes
# through the journal's native protocol when stderr is the journal.
#
# 27: with RUST_LOG=debug on example.service (a drop-in), a relayed connection's end is one
#     journal entry with CLIENT=, BACKEND=, BYTES_TO_BACKEND=, BYTES_TO_CLIENT=,
#     DURATION_USEC=, CLOSE=eof at PRIORITY=7, field names exactly so (no prefix).
# 28: a proxy whose backend never listens: the timeout warning carries BACKEND=,
#     WAITED_USEC=, CLIENTS_CLOSED= at PRIORITY=4, and `journalctl BACKEND=ADDR` returns
#     that proxy's entries and none of the other backend's (and the other way round).
# 29: the exit summary (PRIORITY=6) of each: CONNECTIONS=, BYTES_TO_BACKEND=,
#     BYTES_TO_CLIENT=, PEAK_CONNECTIONS=, EXIT_REASON=.
#
# Uses run.sh's helpers (box, get, drop_in, wait_until, pass, fail, dump) and settings.

# The proxy of check 28 and its backend address, where nothing ever listens.
JOURNAL_UNIT=journal-e2e
JOURNAL_PORT=9270
JOURNAL_BACKEND=127.0.0.1:9271
JOURNAL_CONNECT_TIMEOUT=500ms
# When the checks began (microseconds since the epoch; the box shares the host's clock).
JOURNAL_SINCE_US=
# The pid of the example proxy run that check 27 saw, whose summary check 29 reads.
JOURNAL_EX_PID=

# jfields FILTER...: the journal entries matching FILTER (journalctl arguments) since the
# checks began, one JSON object a line. Not --after-cursor: journalctl 252 with a cursor and
# matches on two fields returns nothing.
jfields() {
    box journalctl -o json --no-pager "$@" 2>/dev/null | python3 -c '
import json, sys
for l in sys.stdin:
    if l.strip() and int(json.loads(l).get("__REALTIME_TIMESTAMP", 0)) >= int(sys.argv[1]):
        sys.stdout.write(l)' "$JOURNAL_SINCE_US"
}

# jcheck SCRIPT: runs a python3 test on the JSON lines on stdin; prints what is wrong, if
# anything. `entries` is the list of entries; `want(e, name, test)` notes a bad field.
jcheck() {
    python3 -c '
import json, re, sys
entries = [json.loads(l) for l in sys.stdin if l.strip()]
bad = []
def want(e, name, test, what):
    v = e.get(name)
    if not isinstance(v, str) or not test(v):
        bad.append("%s=%r (want %s)" % (name, v, what))
num = lambda v: v.isdigit()
pos = lambda v: v.isdigit() and int(v) > 0
'"$1"'
print("; ".join(bad))' 2>&1 | {
        # The "# " lines are notes for the log; the rest says what is wrong.
        local out
        out=$(cat)
        grep '^# ' <<<"$out" >&2
        grep -v '^# ' <<<"$out"
    }
}

# has_entries FILTER...: true when at least one entry matches.
has_entries() { [[ -n $(jfields "$@" | head -c1) ]]; }
# has_summary FILTER...: true when an entry matching FILTER has EXIT_REASON=.
has_summary() { jfields "$@" PRIORITY=6 | grep -q '"EXIT_REASON"'; }

check_journal_fields() {
    drop_in $EX_PROXY zz-journal "[Service]
Environment=RUST_LOG=debug"
    box systemctl daemon-reload
    box systemctl stop --quiet $EX_PROXY
    JOURNAL_SINCE_US=$(date +%s%6N)
    local code secs t0 t1 why=''
    read -r code secs t0 t1 <<<"$(get "$URL")"
    [[ $code == 200 ]] || why+="HTTP $code; "
    local backend=127.0.0.1:$EXAMPLE_BACKEND_PORT
    if ! wait_until 10 has_entries -u $EX_PROXY "BACKEND=$backend" CLOSE=eof; then
        fail 27 "no entry of $EX_PROXY with BACKEND=$backend CLOSE=eof in the journal (${why%; })"
        dump $EX_PROXY
        return
    fi
    JOURNAL_EX_PID=$(jfields -u $EX_PROXY "BACKEND=$backend" CLOSE=eof |
        python3 -c 'import json, sys; print(json.loads(sys.stdin.readline()).get("_PID", ""))')
    local bad
    bad=$(jfields -u $EX_PROXY "BACKEND=$backend" CLOSE=eof | jcheck '
e = entries[0]
want(e, "CLIENT", lambda v: re.fullmatch(r"127\.0\.0\.1:\d+", v), "the client address")
want(e, "BYTES_TO_BACKEND", pos, "> 0")
want(e, "BYTES_TO_CLIENT", pos, "> 0")
want(e, "DURATION_USEC", num, "microseconds")
want(e, "PRIORITY", lambda v: v == "7", "7, debug")
want(e, "SYSLOG_IDENTIFIER", lambda v: v == "rsproxyd", "rsproxyd")
prefixed = [k for k in e if k.startswith("F_")]
if prefixed: bad.append("prefixed fields %s" % prefixed)
print("# connection ended:", {k: e[k] for k in ("CLIENT", "BYTES_TO_BACKEND", "BYTES_TO_CLIENT", "DURATION_USEC", "CLOSE") if k in e}, file=sys.stderr)')
    [[ -z $bad ]] || why+="$bad; "
    if [[ -z $why ]]; then
        pass 27 "journal fields of a relayed connection (RUST_LOG=debug): journalctl -u $EX_PROXY BACKEND=$backend CLOSE=eof finds it with CLIENT=, BYTES_TO_BACKEND=, BYTES_TO_CLIENT=, DURATION_USEC=, PRIORITY=7"
    else
        fail 27 "journal fields of a relayed connection: ${why%; }"
        dump $EX_PROXY
    fi
}

check_journal_timeout() {
    cat >"$SYSTEMD_ETC/$JOURNAL_UNIT.socket" <<EOF
[Socket]
ListenStream=127.0.0.1:$JOURNAL_PORT
EOF
    cat >"$SYSTEMD_ETC/$JOURNAL_UNIT.service" <<EOF
[Unit]
Requires=$JOURNAL_UNIT.socket
After=$JOURNAL_UNIT.socket
[Service]
Type=notify
Environment=RUST_LOG=debug
ExecStart=/usr/bin/rsproxyd --connect-timeout=$JOURNAL_CONNECT_TIMEOUT --exit-idle-time=1s $JOURNAL_BACKEND
EOF
    box systemctl daemon-reload
    box systemctl start $JOURNAL_UNIT.socket
    local code secs t0 t1 why=''
    read -r code secs t0 t1 <<<"$(get "http://127.0.0.1:$JOURNAL_PORT/")"
    [[ $code == 200 ]] && why+="HTTP 200 from a backend that does not exist; "
    if ! wait_until 10 has_entries -u $JOURNAL_UNIT.service "BACKEND=$JOURNAL_BACKEND" -p warning; then
        fail 28 "no warning of $JOURNAL_UNIT.service with BACKEND=$JOURNAL_BACKEND (curl: $code after $(secs_to_ms "$secs") ms)"
        dump $JOURNAL_UNIT.service
        return
    fi
    local bad
    bad=$(jfields -u $JOURNAL_UNIT.service "BACKEND=$JOURNAL_BACKEND" -p warning | jcheck '
e = entries[0]
want(e, "WAITED_USEC", lambda v: v.isdigit() and int(v) >= 500000, ">= 500000 (--connect-timeout=500ms)")
want(e, "CLIENTS_CLOSED", pos, ">= 1")
want(e, "PRIORITY", lambda v: v == "4", "4, warning")
want(e, "MESSAGE", lambda v: v.startswith("Failed to connect to remote host"), "the warning text")
print("# backend timeout:", {k: e.get(k) for k in ("BACKEND", "WAITED_USEC", "CLIENTS_CLOSED")}, file=sys.stderr)')
    [[ -z $bad ]] || why+="$bad; "
    # The match alone (no -u): this backend's entries, only this unit's; and the example's
    # backend match finds none of them.
    local ex_backend=127.0.0.1:$EXAMPLE_BACKEND_PORT
    bad=$(jfields "BACKEND=$JOURNAL_BACKEND" | jcheck '
if not entries: bad.append("journalctl BACKEND= matched nothing")
for e in entries:
    want(e, "BACKEND", lambda v: v == "'"$JOURNAL_BACKEND"'", "'"$JOURNAL_BACKEND"'")
    want(e, "_SYSTEMD_UNIT", lambda v: v == "'"$JOURNAL_UNIT"'.service", "'"$JOURNAL_UNIT"'.service")')
    [[ -z $bad ]] || why+="BACKEND=$JOURNAL_BACKEND: $bad; "
    bad=$(jfields "BACKEND=$ex_backend" | jcheck '
if not entries: bad.append("journalctl BACKEND= matched nothing")
for e in entries:
    want(e, "_SYSTEMD_UNIT", lambda v: v == "'"$EX_PROXY"'", "'"$EX_PROXY"'")')
    [[ -z $bad ]] || why+="BACKEND=$ex_backend: $bad; "
    if [[ -z $why ]]; then
        pass 28 "journal fields of a backend timeout: WAITED_USEC=, CLIENTS_CLOSED=, PRIORITY=4; journalctl BACKEND=$JOURNAL_BACKEND and BACKEND=$ex_backend each find only their own proxy's entries"
    else
        fail 28 "journal fields of a backend timeout: ${why%; }"
        dump $JOURNAL_UNIT.service
    fi
}

check_journal_summary() {
    local why='' unit bad match
    for unit in $EX_PROXY $JOURNAL_UNIT.service; do
        match=(-u "$unit")
        [[ $unit == "$EX_PROXY" ]] && match+=("_PID=$JOURNAL_EX_PID")
        if ! wait_until 15 has_summary "${match[@]}"; then
            why+="no exit summary (EXIT_REASON=) from $unit ${match[*]:2}; "
            dump "$unit"
            continue
        fi
        bad=$(jfields "${match[@]}" PRIORITY=6 | jcheck '
entries = [e for e in entries if "EXIT_REASON" in e]
e = entries[-1]
for k in ("CONNECTIONS", "BYTES_TO_BACKEND", "BYTES_TO_CLIENT", "PEAK_CONNECTIONS"):
    want(e, k, num, "a count")
want(e, "PRIORITY", lambda v: v == "6", "6, info")
want(e, "EXIT_REASON", lambda v: v != "", "why it exited")
if "'"$unit"'" == "'"$EX_PROXY"'":
    want(e, "CONNECTIONS", pos, ">= 1")
    want(e, "BYTES_TO_CLIENT", pos, "> 0")
    want(e, "PEAK_CONNECTIONS", pos, ">= 1")
print("# summary of '"$unit"':", {k: e.get(k) for k in ("CONNECTIONS", "BYTES_TO_BACKEND", "BYTES_TO_CLIENT", "PEAK_CONNECTIONS", "EXIT_REASON")}, file=sys.stderr)')
        [[ -z $bad ]] || why+="$unit: $bad; "
    done
    rm -f "$SYSTEMD_ETC/$EX_PROXY.d/zz-journal.conf"
    box systemctl stop --quiet $JOURNAL_UNIT.socket
    box systemctl daemon-reload
    if [[ -z $why ]]; then
        pass 29 "exit summary in the journal (PRIORITY=6): CONNECTIONS=, BYTES_TO_BACKEND=, BYTES_TO_CLIENT=, PEAK_CONNECTIONS=, EXIT_REASON= for both proxies"
    else
        fail 29 "exit summary: ${why%; }"
    fi
}
