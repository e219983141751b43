#!/usr/bin/env bash
# Quick start: build rsproxyd, put it in front of a backend that is still starting, and
# fetch a page through it. Everything runs on 127.0.0.1 and is cleaned up on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
bin=target/release/rsproxyd
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
front=$(free_port)
back=$(free_port)
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "hello from the backend" > "$work/index.html"
# The proxy: systemd-socket-activate plays systemd, passing 127.0.0.1:$front as fd 3.
systemd-socket-activate -l "127.0.0.1:$front" "$bin" "127.0.0.1:$back" &
pids+=($!)
# The backend: starts listening only 0.5 s after the first request arrives.
(sleep 0.5; exec python3 -m http.server "$back" --bind 127.0.0.1 --directory "$work") >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$front") 2>/dev/null && break; sleep 0.01; done

echo "GET http://127.0.0.1:$front/ (backend 127.0.0.1:$back is still starting)"
curl -sS --max-time 15 -o "$work/got" -w 'HTTP %{http_code} in %{time_total}s\n' "http://127.0.0.1:$front/index.html"
cat "$work/got"
curl -sS --max-time 5 -o /dev/null -w 'warm: HTTP %{http_code} in %{time_total}s\n' "http://127.0.0.1:$front/index.html"
