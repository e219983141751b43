# shellcheck shell=bash
# e2e checks 17-19: the DNS example (contrib/systemd/dns.*): one .socket with ListenStream=
# and ListenDatagram= on one port, rsproxyd, and dnsmasq started on demand. Sourced by
# run.sh, which calls udp_install before the boot, udp_enable after it and the checks.
# Needs dnsmasq (dnsmasq-base) and dig (bind9-dnsutils) on the host (the box is its overlay).

DNS_PORT=5300
DNS_SOCKET=dns.socket
DNS_PROXY=dns.service
DNS_BACKEND=dns-backend.service
DNS_NAME=example.test
DNS_ANSWER=127.0.0.42

# Installs the shipped DNS units, with the suite's short idle exit as a drop-in.
udp_install() {
    local unit
    for tool in dig /usr/sbin/dnsmasq; do
        command -v "$tool" >/dev/null || die "$tool not found (apt-get install -y dnsmasq-base bind9-dnsutils)"
    done
    for unit in dns.socket dns.service dns-backend.service; do
        install -m 0644 "$UNITS/$unit" "$SYSTEMD_ETC/$unit"
    done
    drop_in $DNS_PROXY e2e "[Service]
Environment=EXIT_IDLE_TIME=$PROXY_EXIT_IDLE"
    # dnsmasq binds in milliseconds, before rsproxyd has even read the query; a start-up
    # delay like the stand-in backend's makes the query meet a port nobody has bound yet,
    # so the cold start (refused datagram kept and sent again) is what is checked.
    local cmd
    cmd=$(sed -n 's/^ExecStart=//p' "$UNITS/dns-backend.service")
    drop_in $DNS_BACKEND e2e "[Service]
ExecStart=
ExecStart=/bin/sh -c 'sleep $BACKEND_DELAY; exec $cmd'"
}

udp_enable() {
    box systemctl enable --now --quiet $DNS_SOCKET || die "systemctl enable --now $DNS_SOCKET failed"
}

# dig_timed [DIG ARGS...]: one query from the host, in the box's network namespace; prints
# "ANSWER MILLISECONDS" (ANSWER "-" when there was none).
dig_timed() {
    local t0 out t1
    t0=$(now_ns)
    out=$(net dig @127.0.0.1 -p $DNS_PORT +short +tries=1 +time=10 "$@" $DNS_NAME A 2>&1 | head -n1)
    t1=$(now_ns)
    echo "${out:--} $(ms "$t0" "$t1")"
}

# Problems `systemd-analyze verify` finds in the shipped DNS units (pristine copies, without
# the suite's drop-ins), one line; empty when clean.
udp_verify() {
    local unit out
    for unit in dns.socket dns.service dns-backend.service; do
        out=$(box systemd-analyze verify "/usr/local/share/rsproxyd-e2e/$unit" 2>&1) || out="${out:-exit $?}"
        [[ -z $out ]] || printf '%s: %s; ' "$unit" "${out//$'\n'/ | }"
    done
}

# --- 17. cold UDP query -------------------------------------------------------------------
check_udp_cold() {
    if ! is_state $DNS_SOCKET active || ! cold $DNS_PROXY $DNS_BACKEND; then
        fail 17 "DNS cold start: not cold to begin with (socket $(state $DNS_SOCKET), proxy $(state $DNS_PROXY), dnsmasq $(state $DNS_BACKEND))"
        return
    fi
    local answer msecs
    read -r answer msecs <<<"$(dig_timed)"
    local verify
    verify=$(udp_verify)
    if [[ $answer == "$DNS_ANSWER" && -z $verify ]] && is_state $DNS_PROXY active && is_state $DNS_BACKEND active; then
        pass 17 "DNS over UDP, cold (socket only active, dnsmasq binding ${BACKEND_DELAY}s after its start): dig +tries=1 answered $answer (measured $msecs ms, dnsmasq and rsproxyd started by the query); systemd-analyze verify: dns.socket, dns.service, dns-backend.service clean"
    else
        fail 17 "DNS over UDP, cold: dig +tries=1 got '$answer' after $msecs ms; proxy $(state $DNS_PROXY), dnsmasq $(state $DNS_BACKEND); verify: ${verify:-clean}"
        dump $DNS_PROXY $DNS_BACKEND
    fi
}

# --- 18. TCP through the same proxy -------------------------------------------------------
check_udp_tcp() {
    local before after answer msecs
    before=$(prop $DNS_PROXY InvocationID)
    read -r answer msecs <<<"$(dig_timed +tcp)"
    after=$(prop $DNS_PROXY InvocationID)
    if [[ $answer == "$DNS_ANSWER" && -n $before && $before == "$after" ]]; then
        pass 18 "DNS over TCP through the same rsproxyd run (stream and datagram socket on port $DNS_PORT): dig +tcp answered $answer (measured $msecs ms)"
    else
        fail 18 "DNS over TCP: dig +tcp got '$answer' after $msecs ms; proxy invocation ${before:-none} -> ${after:-none}"
        dump $DNS_PROXY $DNS_BACKEND
    fi
}

# --- 19. idle exit of proxy and dnsmasq, then the next query ------------------------------
check_udp_idle() {
    local t0 proxy_down='' backend_down='' deadline why=''
    t0=$(now_ns)
    deadline=$((t0 + 30 * 1000000000))
    while (($(now_ns) < deadline)); do
        [[ -z $proxy_down ]] && ! is_state $DNS_PROXY active && proxy_down=$(now_ns)
        [[ -z $backend_down ]] && ! is_state $DNS_BACKEND active && backend_down=$(now_ns)
        [[ -n $proxy_down && -n $backend_down ]] && break
        sleep 0.02
    done
    [[ -n $proxy_down ]] || why+="proxy still $(state $DNS_PROXY) after 30 s; "
    [[ -n $backend_down ]] || why+="dnsmasq still $(state $DNS_BACKEND) after 30 s; "
    local pres
    pres=$(prop $DNS_PROXY Result)
    [[ $pres == success ]] || why+="proxy result $pres; "
    is_state $DNS_SOCKET active || why+="socket $(state $DNS_SOCKET); "
    net ss -Hlun "sport = :$DNS_PORT" | grep -q . || why+="UDP port $DNS_PORT not bound; "
    net ss -Htln "sport = :$DNS_PORT" | grep -q LISTEN || why+="TCP port $DNS_PORT not listening; "
    local answer msecs
    read -r answer msecs <<<"$(dig_timed)"
    [[ $answer == "$DNS_ANSWER" ]] || why+="next dig got '$answer' after $msecs ms; "
    if [[ -z $why ]]; then
        pass 19 "DNS idle exit: rsproxyd down $(ms "$t0" "$proxy_down") ms and dnsmasq (StopWhenUnneeded=) $(ms "$t0" "$backend_down") ms after the last query (result $pres), socket still listening on TCP and UDP, next dig +tries=1 answered $answer (measured $msecs ms, a cold start)"
    else
        fail 19 "DNS idle exit: ${why%; }"
        dump $DNS_SOCKET $DNS_PROXY $DNS_BACKEND
    fi
}
