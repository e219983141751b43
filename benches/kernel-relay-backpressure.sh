#!/usr/bin/env bash
# How much a client can push through rsproxyd to a backend that accepts and never reads:
# the user-space relay against --kernel-relay (docs/performance.md, "Backpressure: a credit per direction").
# As root (the kernel relay needs CAP_BPF and CAP_NET_ADMIN); loopback only; about 20 s.
#
# usage: benches/kernel-relay-backpressure.sh [RSPROXYD_BINARY]   (default target/kernel-relay/release/rsproxyd)
# The binary must be built with the cargo feature kernel-relay (off in the shipped build):
#   cargo build --release --features kernel-relay --target-dir target/kernel-relay
# For each mode it prints how many bytes the client's writes got rid of within 2 s of the
# backend not reading (the proxy and the kernel hold them), and how MemAvailable moved.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/kernel-relay/release/rsproxyd}
[[ -x $BIN ]] || { echo "no rsproxyd at $BIN (cargo build --release --features kernel-relay --target-dir target/kernel-relay)" >&2; exit 1; }
[[ $("$BIN" --help) == *--kernel-relay* ]] || { echo "$BIN was built without the cargo feature kernel-relay" >&2; exit 1; }
command -v systemd-socket-activate >/dev/null || { echo "needs systemd-socket-activate" >&2; exit 1; }

run() { # MODE FLAGS...
    local mode=$1
    shift
    python3 - "$BIN" "$mode" "$@" <<'PY'
import os, socket, subprocess, sys, time
binary, mode, flags = sys.argv[1], sys.argv[2], sys.argv[3:]
backend = socket.socket()
backend.bind(("127.0.0.1", 0))
backend.listen(8)
listen = socket.socket()
listen.bind(("127.0.0.1", 0))
port = listen.getsockname()[1]
listen.close()
# --kernel-relay is refused unless asked for as unsafe (docs/performance.md, "The kernel relay")
proxy = subprocess.Popen(["systemd-socket-activate", "-E", "RSPROXYD_KERNEL_RELAY_UNSAFE=1",
                          "-l", f"127.0.0.1:{port}", binary, *flags,
                          "127.0.0.1:%d" % backend.getsockname()[1]], stderr=subprocess.DEVNULL)
def mem_available():
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
try:
    for _ in range(200):
        try:
            client = socket.create_connection(("127.0.0.1", port))
            break
        except OSError:
            time.sleep(0.01)
    held, _ = backend.accept()  # accepted, never read
    time.sleep(0.3)
    before = mem_available()
    client.settimeout(2)
    sent, chunk, start = 0, b"x" * 65536, time.time()
    try:
        while sent < 1_000_000_000 and time.time() - start < 10:
            sent += client.send(chunk)
    except socket.timeout:
        pass
    after = mem_available()
    print(f"{mode}: the client got rid of {sent / 1e6:.1f} MB while the backend read nothing; "
          f"MemAvailable {(after - before) / 1024:+.0f} MiB")
finally:
    proxy.terminate()
    proxy.wait()
PY
}
run user-space
run kernel --kernel-relay
