# shellcheck shell=bash
# Checks 15 and 16 of tests/e2e/run.sh (sourced by it): --proxy-protocol=v2 under the real
# systemd, through the template instance rsproxyd@e2e-pp configured by
# /etc/rsproxyd/e2e-pp.conf (PROXY_PROTOCOL=), in front of nginx as the backend unit
# (`listen ... proxy_protocol;`, answering `$proxy_protocol_addr $proxy_protocol_port`).
#
#   proxy_protocol_setup   before box_boot: the instance's config, socket drop-in, and the
#                          nginx backend unit, written under $ROOT
#   check_proxy_protocol   after boot: checks 15 and 16

PP_INSTANCE=e2e-pp
PP_PORT=9180
PP_BACKEND_PORT=9181
PP_NGINX=/usr/sbin/nginx
PP_DIR=/var/lib/rsproxyd-e2e/pp-nginx
PP_ERROR_LOG=$PP_DIR/error.log

proxy_protocol_setup() {
    mkdir -p "$ROOT$PP_DIR/tmp" "$ROOT/etc/rsproxyd"
    printf 'TARGET=127.0.0.1:%s\nEXIT_IDLE_TIME=%s\nPROXY_PROTOCOL=--proxy-protocol=v2\n' \
        "$PP_BACKEND_PORT" "$PROXY_EXIT_IDLE" >"$ROOT/etc/rsproxyd/$PP_INSTANCE.conf"
    # 0.0.0.0, so the non-local client address on the box's loopback reaches it too.
    drop_in "rsproxyd@$PP_INSTANCE.socket" listen "[Socket]
ListenStream=0.0.0.0:$PP_PORT"
    cat >"$ROOT$PP_DIR/nginx.conf" <<EOF
daemon off;
master_process off;
pid $PP_DIR/nginx.pid;
error_log $PP_ERROR_LOG info;
events { worker_connections 64; }
http {
    access_log off;
    default_type text/plain;
    client_body_temp_path $PP_DIR/tmp;
    proxy_temp_path $PP_DIR/tmp;
    fastcgi_temp_path $PP_DIR/tmp;
    uwsgi_temp_path $PP_DIR/tmp;
    scgi_temp_path $PP_DIR/tmp;
    server {
        listen 127.0.0.1:$PP_BACKEND_PORT proxy_protocol;
        return 200 "\$proxy_protocol_addr \$proxy_protocol_port";
    }
}
EOF
    cat >"$SYSTEMD_ETC/$PP_INSTANCE-backend.service" <<EOF
[Unit]
Description=e2e: nginx reading the PROXY protocol behind rsproxyd@$PP_INSTANCE
StartLimitIntervalSec=0
[Service]
Type=exec
ExecStart=$PP_NGINX -p $PP_DIR -c $PP_DIR/nginx.conf -e $PP_ERROR_LOG
Restart=no
EOF
}

# pp_get URL [CURL ARGS...]: "BODY|CODE LOCAL_IP LOCAL_PORT" of one request from the host,
# in the box's network namespace.
pp_get() {
    local url=$1
    shift
    net curl -s --max-time 30 -w '|%{http_code} %{local_ip} %{local_port}' "$@" "$url"
}

check_proxy_protocol() {
    local sock=rsproxyd@$PP_INSTANCE.socket proxy=rsproxyd@$PP_INSTANCE.service
    local backend=$PP_INSTANCE-backend.service why='' out body code ip port
    if [[ ! -x $PP_NGINX ]]; then
        fail 15 "PROXY protocol: $PP_NGINX not installed (apt-get install nginx-light)"
        fail 16 "PROXY protocol: $PP_NGINX not installed (apt-get install nginx-light)"
        return
    fi
    box systemctl enable --now --quiet "$sock" || why+="systemctl enable --now $sock failed; "
    cold "$proxy" "$backend" || why+="not cold to begin with (proxy $(state "$proxy"), backend $(state "$backend")); "
    # Cold start, from the non-local client address: nginx must name that client.
    out=$(pp_get "http://$OTHER_ADDR:$PP_PORT/" --interface "$OTHER_ADDR")
    body=${out%|*}
    read -r code ip port <<<"${out##*|}"
    [[ $code == 200 && $body == "$ip $port" && $ip == "$OTHER_ADDR" ]] ||
        why+="cold, from $OTHER_ADDR: HTTP $code, nginx saw \"$body\", client was $ip $port; "
    local cold_answer=$body
    # Warm, from 127.0.0.1.
    out=$(pp_get "http://127.0.0.1:$PP_PORT/")
    body=${out%|*}
    read -r code ip port <<<"${out##*|}"
    [[ $code == 200 && $body == "$ip $port" ]] ||
        why+="warm, from 127.0.0.1: HTTP $code, nginx saw \"$body\", client was $ip $port; "
    [[ $FIREWALL == on ]] || why+="IPAddressDeny= not enforced in the box ($FIREWALL); "
    if [[ -z $why ]]; then
        pass 15 "--proxy-protocol=v2 from PROXY_PROTOCOL= in /etc/rsproxyd/$PP_INSTANCE.conf, nginx (proxy_protocol) as $backend: cold start from non-local $OTHER_ADDR answered \"$cold_answer\" (the client's own address and port), warm from 127.0.0.1 likewise"
    else
        fail 15 "PROXY protocol through rsproxyd@$PP_INSTANCE: ${why%; }"
        dump "$sock" "$proxy" "$backend"
    fi

    why=''
    # The instance's unix socket, from inside the box: a LOCAL header, nginx has no address.
    out=$(box curl -s --max-time 30 -w '|%{http_code}' --unix-socket "/run/rsproxyd/$PP_INSTANCE.sock" http://localhost/)
    body=${out%|*}
    [[ ${out##*|} == 200 && -z ${body// /} ]] || why+="unix-socket client: \"$out\"; "
    local log bad
    log=$(cat "$ROOT$PP_ERROR_LOG" 2>/dev/null)
    [[ -n $log ]] || why+="no nginx error log at $PP_ERROR_LOG (did nginx run?); "
    bad=$(grep -E 'broken header|\[(error|crit|alert|emerg)\]' <<<"$log")
    [[ -z $bad ]] || why+="nginx error log: ${bad//$'\n'/ | }; "
    if [[ -z $why ]]; then
        pass 16 "nginx's error log clean across the cold start (no broken header, nothing at error level; $(grep -c '' <<<"$log") lines at info/notice), unix-socket client answered 200 with no address (v2 LOCAL)"
    else
        fail 16 "PROXY protocol: ${why%; }"
        dump "$proxy" "$backend"
    fi
    box systemctl stop --quiet "$sock" "$proxy" "$backend"
}
