#!/usr/bin/env bash
# How long rsproxyd-generator takes at daemon-reload: N .proxy files (100 by default), each
# with a drop-in, generated into a fresh output directory, ROUNDS times; against the same
# binary with no file at all (process start-up, the floor), in the same run.
#
# usage: benches/generator-time.sh [PATH/TO/rsproxyd-generator]
#        (default target/release/rsproxyd-generator; build it with cargo build --release)
# Knobs: FILES=100 ROUNDS=50, OUT_BASE=/dev/shm. Prints the median and the fastest run of
# each, and the per-file cost. Needs only bash and coreutils.
#
# The output directory is on a tmpfs (OUT_BASE), as systemd's /run/systemd/generator is:
# on a disk file system, creating 400 files costs what the disk makes it cost (about 5 ms a
# file on this project's VM), which says nothing about the generator.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=${1:-target/release/rsproxyd-generator}
FILES=${FILES:-100}
ROUNDS=${ROUNDS:-50}
OUT_BASE=${OUT_BASE:-/dev/shm}

[[ -x $BIN ]] || { echo "generator-time: $BIN not found (cargo build --release)" >&2; exit 2; }

WORK=$(mktemp -d /tmp/rsproxyd-gen-time.XXXXXX)
OUT=$(mktemp -d "$OUT_BASE/rsproxyd-gen-time.XXXXXX")
trap 'rm -rf "$WORK" "$OUT"' EXIT
mkdir -p "$WORK/etc" "$WORK/empty"
for ((i = 0; i < FILES; i++)); do
    cat >"$WORK/etc/svc$i.proxy" <<EOF
[Unit]
Description=service $i
[Socket]
ListenStream=127.0.0.1:$((20000 + i))
[Proxy]
Target=127.0.0.1:$((30000 + i))
ExitIdleTime=5min
ConnectTimeout=10s
[Backend]
ExecStart=/usr/local/bin/svc$i --listen 127.0.0.1:$((30000 + i))
Environment=SVC=$i
User=svc
[Install]
WantedBy=sockets.target
EOF
    mkdir -p "$WORK/etc/svc$i.proxy.d"
    printf '[Proxy]\nDrainTimeout=1min\n' >"$WORK/etc/svc$i.proxy.d/10-drain.conf"
done

# run SEARCH_DIR: one generator run into a fresh directory; prints its wall time in µs.
run() {
    local out=$OUT/out.$RANDOM$RANDOM t0 t1
    mkdir "$out"
    t0=${EPOCHREALTIME//[.,]/}
    RSPROXYD_GENERATOR_PATH=$1 RSPROXYD_GENERATOR_LOG=stderr SYSTEMD_SCOPE=system \
        "$BIN" "$out" "$out" "$out"
    t1=${EPOCHREALTIME//[.,]/}
    echo $((t1 - t0))
    rm -rf "$out"
}

full=() empty=()
for ((r = 0; r < ROUNDS; r++)); do
    full+=("$(run "$WORK/etc")")
    empty+=("$(run "$WORK/empty")")
done
stats() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { printf "%d %d", a[int((NR + 1) / 2)], a[1] }'; }
read -r full_med full_min <<<"$(stats "${full[@]}")"
read -r empty_med empty_min <<<"$(stats "${empty[@]}")"
n_units=$((FILES * 3))
echo "rsproxyd-generator, $FILES files (+1 drop-in each) -> $n_units units + $FILES symlinks into $OUT_BASE, $ROUNDS rounds:"
printf '  %d files: median %.2f ms, fastest %.2f ms\n' "$FILES" "$(awk -v v="$full_med" 'BEGIN { print v / 1000 }')" "$(awk -v v="$full_min" 'BEGIN { print v / 1000 }')"
printf '  no file:  median %.2f ms, fastest %.2f ms (process start-up)\n' "$(awk -v v="$empty_med" 'BEGIN { print v / 1000 }')" "$(awk -v v="$empty_min" 'BEGIN { print v / 1000 }')"
awk -v f="$full_med" -v e="$empty_med" -v n="$FILES" \
    'BEGIN { printf "  ratio %.1fx the empty run; %.1f us per file beyond start-up\n", f / e, (f - e) / n }'
