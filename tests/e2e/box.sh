# shellcheck shell=bash
# A real systemd (PID 1) in a container, for the e2e suites (run.sh, deb.sh): booted with
# systemd-nspawn on a throw-away tmpfs overlay of this machine's /, in a network namespace of
# its own. Source this file, then:
#
#   box_setup NAME   work directory /tmp/NAME.XXXXXX, the overlay at $ROOT (the box's /,
#                    writable; writes land in $UPPER, a tmpfs), the host's services masked,
#                    teardown on exit. Put units and files under $ROOT before booting.
#   box_boot         start systemd-nspawn (NSPAWN_PID) and wait until the box's systemd
#                    (PID1, host pid) is running or degraded.
#   box CMD...       run CMD inside the box (all of its namespaces).
#   net CMD...       run the host's CMD in the box's network namespace only.
#
# The caller defines `die MESSAGE` (the suite cannot run) before calling these. E2E_KEEP=1
# keeps the work directory (the nspawn console in console.log) and prints its path.
# Needs root, systemd-nspawn, nsenter, setsid, pgrep, od.

# --- Time ---------------------------------------------------------------------------------
now_ns() { date +%s%N; }
# ms A B: milliseconds from ns timestamp A to B, one decimal.
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) / 1e6 }'; }
# wait_until SECONDS CMD...: poll CMD every 20 ms until it succeeds; 1 if the deadline passes.
wait_until() {
    local deadline=$(($(now_ns) + $1 * 1000000000))
    shift
    until "$@"; do
        (($(now_ns) > deadline)) && return 1
        sleep 0.02
    done
}

# --- The box ------------------------------------------------------------------------------
BOX_BOOT_TIMEOUT_S=${BOX_BOOT_TIMEOUT_S:-60}
BOX_NAME=
WORK=
TMPFS=
UPPER=
ROOT=
SYSTEMD_ETC=
NSPAWN_PID=
PID1=
MOUNTED_TMPFS=
MOUNTED_ROOT=

box() { nsenter -t "$PID1" -a "$@"; }
net() { nsenter -t "$PID1" -n "$@"; }

# Runs on exit: ends the background jobs this script started, powers the box off (SIGTERM
# to the nspawn process this script started, then SIGKILL after 30 s), unmounts, and
# removes the work directory. Keeps the script's exit status.
box_teardown() {
    local rc=$? job
    trap - EXIT INT TERM
    # Background clients this script started (an interrupted check), then the box.
    for job in $(jobs -p); do
        [[ $job == "$NSPAWN_PID" ]] || kill "$job" 2>/dev/null
    done
    if [[ -n $NSPAWN_PID ]] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        # SIGTERM makes nspawn power the box off cleanly; wait for that, with a deadline.
        kill -TERM "$NSPAWN_PID" 2>/dev/null
        if ! wait_until 30 eval '! kill -0 '"$NSPAWN_PID"' 2>/dev/null'; then
            echo "e2e: nspawn $NSPAWN_PID did not stop in 30 s, killing it" >&2
            kill -KILL "$NSPAWN_PID" 2>/dev/null
            [[ -n $PID1 ]] && kill -KILL "$PID1" 2>/dev/null
        fi
        wait "$NSPAWN_PID" 2>/dev/null
    fi
    if [[ -n $MOUNTED_ROOT ]]; then
        umount "$ROOT" 2>/dev/null || umount -l "$ROOT" || echo "e2e: could not unmount $ROOT" >&2
    fi
    if [[ -n $MOUNTED_TMPFS ]]; then
        umount "$TMPFS" 2>/dev/null || umount -l "$TMPFS" || echo "e2e: could not unmount $TMPFS" >&2
    fi
    if [[ ${E2E_KEEP:-} == 1 ]]; then
        echo "# kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}

box_setup() { # NAME
    BOX_NAME=$1
    WORK=$(mktemp -d "/tmp/$BOX_NAME.XXXXXX") || die "mktemp failed"
    TMPFS=$WORK/tmpfs
    UPPER=$TMPFS/upper
    ROOT=$WORK/root
    SYSTEMD_ETC=$ROOT/etc/systemd/system
    trap box_teardown EXIT
    trap 'echo "e2e: interrupted" >&2; exit 130' INT TERM

    mkdir -p "$TMPFS" "$ROOT"
    mount -t tmpfs -o mode=0755 tmpfs "$TMPFS" || die "cannot mount a tmpfs on $TMPFS"
    MOUNTED_TMPFS=1
    mkdir "$UPPER" "$TMPFS/work"
    mount -t overlay overlay -o "lowerdir=/,upperdir=$UPPER,workdir=$TMPFS/work" "$ROOT" ||
        die "cannot mount an overlay of / on $ROOT"
    MOUNTED_ROOT=1

    # Keep the boot small: mask every service and timer this machine enables, and the consoles.
    local link name
    for link in "$SYSTEMD_ETC"/*.wants/*; do
        name=${link##*/}
        case $name in *.service | *.timer) ln -sfn /dev/null "$SYSTEMD_ETC/$name" ;; esac
    done
    for name in console-getty.service getty@tty1.service container-getty@0.service \
        systemd-timesyncd.service systemd-networkd.service systemd-resolved.service; do
        ln -sfn /dev/null "$SYSTEMD_ETC/$name"
    done
}

box_find_pid1() {
    kill -0 "$NSPAWN_PID" 2>/dev/null || return 2
    PID1=$(pgrep -P "$NSPAWN_PID" -x systemd | head -n1)
    [[ -n $PID1 ]]
}
box_booted() {
    kill -0 "$NSPAWN_PID" 2>/dev/null || return 2
    local s
    s=$(box systemctl is-system-running 2>/dev/null)
    [[ $s == running || $s == degraded ]]
}
box_boot_failed() {
    echo "e2e: $1; console output:" >&2
    sed 's/^/#   /' "$WORK/console.log" >&2
    die "$1"
}

box_boot() {
    local uuid start
    uuid=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    start=$(now_ns)
    # A unified (v2) cgroup hierarchy in the box, as on a stock Debian 12, even when this
    # machine mounts the v1 controllers; and bpf(2) let through nspawn's seccomp filter. Both
    # are needed for systemd to enforce units' IPAddressDeny=. --keep-unit --register=no: no
    # D-Bus or machined on the host; --uuid: the overlay shares the host's machine id.
    SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 setsid systemd-nspawn -q -D "$ROOT" \
        --machine="$BOX_NAME-$$" --keep-unit --register=no --link-journal=no --uuid="$uuid" \
        --private-network --system-call-filter=bpf -b \
        </dev/null >"$WORK/console.log" 2>&1 &
    NSPAWN_PID=$!
    wait_until "$BOX_BOOT_TIMEOUT_S" box_find_pid1 ||
        box_boot_failed "no systemd process under nspawn $NSPAWN_PID"
    wait_until "$BOX_BOOT_TIMEOUT_S" box_booted || box_boot_failed "the box did not reach running/degraded"
    echo "# box up: systemd PID $PID1 (host view), nspawn PID $NSPAWN_PID," \
        "booted in $(ms "$start" "$(now_ns)") ms" >&2
    if [[ $(box systemctl is-system-running) == degraded ]]; then
        echo "# (degraded: $(box systemctl --failed --no-legend --plain | awk '{print $1}' | xargs))" >&2
    fi
}
