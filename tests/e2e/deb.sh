#!/usr/bin/env bash
# End-to-end test of the Debian package, as a Debian 12 administrator uses it: `apt install
# ./rsproxyd_*.deb` into a real systemd (PID 1) booted with systemd-nspawn on a throw-away
# overlay of this machine's / (tests/e2e/box.sh); a service from one .proxy file
# (rsproxyd-generator), the worked example and a templated service set up by running the
# shell blocks of the installed /usr/share/doc/rsproxyd/examples/README.md as they are;
# HTTP 200 through each from a cold backend; the README's removal steps; `apt purge
# rsproxyd`; and a check that nothing is left behind.
#
# usage: tests/e2e/deb.sh [PATH/TO/rsproxyd_VERSION_ARCH.deb]
#   without a path, scripts/build-deb.sh builds the package first.
#   E2E_KEEP=1  keep the work directory (the README steps' output in steps/, console.log)
#
# Needs root and: systemd-container (systemd-nspawn), curl, man-db, bsdextrautils (col),
# python3 (the README's stand-in daemon), dpkg-dev (dpkg-parsechangelog). Exit status: 0 all passed, 1 a check failed, 2 the
# test could not run, 77 skipped (not root). Output: one "ok N - ..." / "not ok N - ..." line
# per check, then "N passed, M failed" alone on the last line.
#
# The box has its own network namespace, so the README's fixed ports (8080, 9000) cannot
# collide with anything on this machine. apt runs offline: the package needs nothing that
# is not installed already.

set -u -o pipefail
# C collation for sort and comm; plain ASCII from man.
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

# --- Everything tunable, in one place -----------------------------------------------------
PKG=rsproxyd
DOC=/usr/share/doc/$PKG/examples
README=$DOC/README.md
UNIT_DIR=/usr/lib/systemd/system
# README sections whose shell blocks are run, and the instance name their steps use.
SECTION_ONEFILE='One file per service: rsproxyd-generator'
SECTION_EXAMPLE='The worked example'
SECTION_TEMPLATES='A second service with the templates'
INSTANCE=myapp
# Blocks for a clone of the repository, not for the package: skipped.
CLONE_ONLY='contrib/systemd|target/release'
# The daemon the README's template steps expect at /usr/local/bin/myapp; the test plays the
# administrator, who has one: the stand-in the package ships.
STAND_IN=$DOC/example-backend.py
# Where the test stages the .deb, the README steps and curl's results inside the box (removed
# before the final comparison).
STAGE=/var/tmp/rsproxyd-deb-test
# Paths new after purge that are package-manager bookkeeping, not the package's: logs and
# caches, dpkg's and apt's state, and PackageKit's (its apt hook wakes it on every install).
BOOKKEEPING='^\./var/(log|cache)/|^\./var/lib/(dpkg|apt|PackageKit)/'
# Names that must appear nowhere new after purge, bookkeeping included, except man-db's
# cache of formatted pages: `systemd-analyze verify` runs man(1) for the units'
# Documentation=man:rsproxyd(8), and man-db (not the package) owns and expires that cache.
OURS='rsproxyd|myapp|example'
MAN_CACHE='^\./var/cache/man/'
# Tolerated in /run after the removal steps and the purge: rsproxyd@.socket leaves its unix
# socket file (systemd's RemoveOnStop= defaults to no) and the directory systemd made for
# it. Both are on tmpfs and gone at the next boot, and systemd unlinks a stale socket file
# when it binds the path again. Drop these once the template sets RemoveOnStop=yes (the
# directory would then be the only one left).
RUN_TOLERATED="/run/rsproxyd"
ENV_VARS='LISTEN_PID LISTEN_FDS LISTEN_FDNAMES NOTIFY_SOCKET WATCHDOG_USEC WATCHDOG_PID SYSTEMD_LOG_LEVEL RUST_LOG JOURNAL_STREAM'
MAN_SECTIONS='NAME|SYNOPSIS|DESCRIPTION|OPTIONS|TARGET|EXIT STATUS|ENVIRONMENT|EXAMPLES|SEE ALSO'
# ------------------------------------------------------------------------------------------

if [[ $(id -u) -ne 0 ]]; then
    echo "SKIPPED: the package e2e test needs root (it mounts an overlay, boots systemd-nspawn" \
        "and installs the package inside); run it as root, e.g. sudo $0 ${1:-}"
    exit 77
fi

die() { echo "deb e2e: cannot run: $*" >&2; echo "0 passed, 1 failed"; exit 2; }

for tool in systemd-nspawn nsenter curl setsid mount pgrep od awk dpkg-deb dpkg-parsechangelog col; do
    command -v "$tool" >/dev/null ||
        die "$tool not found (apt-get install -y systemd-container curl dpkg-dev bsdextrautils)"
done
for tool in /usr/bin/python3 /usr/bin/man /usr/bin/apt; do
    [[ -x $tool ]] || die "$tool not found in this machine's / (the box is an overlay of it)"
done

T0=$(date +%s%N)
if [[ $# -ge 1 ]]; then
    DEB=$1
else
    echo "# no .deb given: building one with scripts/build-deb.sh" >&2
    DEB=$(bash "$REPO/scripts/build-deb.sh" | tail -n1) || die "scripts/build-deb.sh failed"
fi
[[ -f $DEB ]] || die "no package at $DEB"
DEB=$(realpath "$DEB")
VERSION=$(dpkg-deb -f "$DEB" Version)
[[ $(dpkg-deb -f "$DEB" Package) == "$PKG" ]] || die "$DEB is not the $PKG package"
echo "# package: $DEB ($VERSION)" >&2

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
# why: reasons a check fails, collected with `note`; each check starts with an empty list.
WHY=()
note() { WHY+=("$*"); }
verdict() { # N TEXT-IF-PASSED
    if [[ ${#WHY[@]} -eq 0 ]]; then pass "$1" "$2"; else fail "$1" "$(IFS=';'; echo "${WHY[*]}" | sed 's/;/; /g')"; fi
    WHY=()
}

# --- The box ------------------------------------------------------------------------------
# shellcheck source=tests/e2e/box.sh
. "$HERE/box.sh"
box_setup rsproxyd-deb

state() { box systemctl is-active "$1" 2>/dev/null; }
# dump UNIT...: the last journal lines of each unit, as comments, after a failure.
dump() {
    local u
    for u in "$@"; do
        echo "# --- journal of $u (last 15 lines)" >&2
        box journalctl -u "$u" -o short-monotonic --no-pager -n 15 2>/dev/null | sed 's/^/#   /' >&2
    done
}
cursor() { box journalctl -q -n 0 --show-cursor | sed -n 's/^-- cursor: //p'; }
# The upper layer of the overlay: every path the box created or changed, relative to its /.
snapshot() { (cd "$UPPER" && find . -mindepth 1 | LC_ALL=C sort); }

box_boot

# The package's paths (dpkg-deb's view, before anything is installed), and which of them
# the box already has: the shared directories (/usr, /usr/bin, ...) and nothing else.
PKG_PATHS=$(dpkg-deb --fsys-tarfile "$DEB" | tar -t | sed 's|^\./|/|; s|/$||' | grep -v '^/\?$' | LC_ALL=C sort)
declare -A EXISTED=()
for p in $PKG_PATHS; do
    [[ -e $ROOT$p || -L $ROOT$p ]] && EXISTED[$p]=1
done

mkdir -p "$ROOT$STAGE"
chmod 0755 "$ROOT$STAGE"
install -m 0644 "$DEB" "$ROOT$STAGE/"
DEB_NAME=${DEB##*/}
BEFORE=$(snapshot)

# --- 1. apt install -----------------------------------------------------------------------
check_install() {
    local p out rc=0 depends status
    for p in $PKG_PATHS; do
        [[ -d $ROOT$p && ! -L $ROOT$p ]] && continue
        [[ -n ${EXISTED[$p]:-} ]] && note "$p exists before the install: the box is not clean"
    done
    out=$(box env DEBIAN_FRONTEND=noninteractive bash -c \
        "cd $STAGE && apt install -y ./$DEB_NAME" 2>&1) || rc=$?
    printf '%s\n' "$out" >"$WORK/apt-install.log"
    ((rc == 0)) || note "apt install exited $rc: $(tail -n 3 <<<"$out" | xargs)"
    status=$(box dpkg-query -W -f '${db:Status-Abbrev}${Version}' "$PKG" 2>/dev/null)
    [[ $status == "ii $VERSION" ]] || note "dpkg-query says '$status', want 'ii $VERSION'"
    depends=$(dpkg-deb -f "$DEB" Depends)
    [[ $depends =~ ^libc6(\ \([^\)]*\))?$ ]] || note "Depends: $depends (want libc6 only)"
    verdict 1 "apt install ./$DEB_NAME in the box, offline: installed ($status), Depends: $depends"
}

# --- 2. contents, units installed and not enabled -----------------------------------------
check_contents() {
    local listed missing want f enabled links loaded verify version
    listed=$(box dpkg -L "$PKG" | LC_ALL=C sort)
    DPKG_LIST=$listed
    for want in /usr/bin/rsproxyd /usr/share/man/man8/rsproxyd.8.gz \
        /usr/lib/systemd/system-generators/rsproxyd-generator \
        /usr/lib/systemd/user-generators/rsproxyd-user-generator "$DOC/example.proxy" \
        "$UNIT_DIR/rsproxyd@.socket" "$UNIT_DIR/rsproxyd@.service" \
        /usr/share/doc/$PKG/copyright /usr/share/doc/$PKG/changelog.Debian.gz "$README" \
        "$DOC/example.socket" "$DOC/example.service" "$DOC/example-backend.service" \
        "$DOC/example.conf" "$STAND_IN" \
        "$DOC/dns.socket" "$DOC/dns.service" "$DOC/dns-backend.service"; do
        grep -qxF "$want" <<<"$listed" || note "dpkg -L lacks $want"
        [[ -e $ROOT$want ]] || note "$want not on disk"
    done
    missing=$(comm -13 <(printf '%s\n' "$listed") <(printf '%s\n' "$PKG_PATHS"))
    [[ -z $missing ]] || note "in the .deb but not in dpkg -L: $(xargs <<<"$missing")"
    version=$(box rsproxyd --version 2>&1)
    [[ $version == "rsproxyd ${VERSION%-*}" ]] || note "rsproxyd --version says '$version'"
    # Known to systemd and not enabled (the socket has an [Install] section, the service
    # none: it is started by its socket), nothing of ours loaded or linked anywhere.
    local states=()
    for f in rsproxyd@.socket rsproxyd@.service; do
        enabled=$(box systemctl is-enabled "$f" 2>&1)
        states+=("$f $enabled")
        [[ $enabled == disabled || $enabled == static ]] ||
            note "systemctl is-enabled $f: $enabled (want disabled or static)"
    done
    # (The user generator is a link to the system generator, not to a unit.)
    links=$(find "$ROOT/etc/systemd" "$ROOT/usr/lib/systemd" -lname '*rsproxyd*' \
        ! -name rsproxyd-user-generator 2>/dev/null | xargs)
    [[ -z $links ]] || note "symlinks to our units: $links"
    loaded=$(box systemctl list-units --all --no-legend --plain 'rsproxyd*' | xargs)
    [[ -z $loaded ]] || note "units loaded after install: $loaded"
    verify=$(box systemd-analyze verify "$UNIT_DIR/rsproxyd@.socket" "$UNIT_DIR/rsproxyd@.service" 2>&1) ||
        note "systemd-analyze verify failed: ${verify//$'\n'/ | }"
    [[ -z $verify ]] || note "systemd-analyze verify: ${verify//$'\n'/ | }"
    verdict 2 "dpkg -L lists $(wc -l <<<"$listed") paths, every one the .deb holds; rsproxyd --version: $version; templates in $UNIT_DIR known to systemd and not enabled (${states[*]}), not linked or loaded, systemd-analyze verify clean"
}

# --- 3. man page, copyright, changelog ------------------------------------------------------
check_docs() {
    local where page opt v sec changelog copyright
    where=$(box man -w rsproxyd 2>&1)
    [[ $where == /usr/share/man/man8/rsproxyd.8.gz ]] || note "man -w rsproxyd: $where"
    # No hyphenation or justification, so every option stays whole on its line.
    page=$(box env MANWIDTH=200 man --nh --nj -P cat -l /usr/share/man/man8/rsproxyd.8.gz 2>&1 | col -b)
    # Every long option --help lists, every environment variable, every section.
    local opts
    opts=$(box rsproxyd --help | grep -oE -- '--[a-z][a-z-]+' | sort -u)
    for opt in $opts; do
        grep -qF -- "$opt" <<<"$page" || note "man page lacks $opt"
    done
    for v in $ENV_VARS; do
        grep -qw -- "$v" <<<"$page" || note "man page lacks $v"
    done
    while IFS= read -r sec; do
        grep -qx "$sec" <<<"$page" || note "man page lacks section $sec"
    done < <(tr '|' '\n' <<<"$MAN_SECTIONS")
    grep -q 'ExecStart=/usr/bin/rsproxyd' <<<"$page" || note "man page has no unit example"
    changelog=$(box sh -c "zcat /usr/share/doc/$PKG/changelog.Debian.gz | dpkg-parsechangelog -l- -S Version" 2>&1)
    [[ $changelog == "$VERSION" ]] || note "changelog.Debian.gz version '$changelog', package $VERSION"
    copyright=$(head -n1 "$ROOT/usr/share/doc/$PKG/copyright")
    [[ $copyright == Format:* ]] || note "copyright is not machine-readable: $copyright"
    verdict 3 "man rsproxyd ($where): all $(wc -w <<<"$opts") options of --help, $(wc -w <<<"$ENV_VARS") environment variables, sections ${MAN_SECTIONS//|/, }, a unit example; copyright (DEP-5) and changelog.Debian.gz ($changelog)"
}

# --- The README, step by step ----------------------------------------------------------------
# blocks SECTION: writes each ```sh block of that section of the installed README to
# $WORK/steps/<n>.sh and prints their paths, in order.
BLOCK_N=0
STEPS_RAN=0
blocks() {
    local out=$WORK/steps
    mkdir -p "$out"
    awk -v want="$1" -v dir="$out" -v first="$BLOCK_N" '
        /^## / { sec = substr($0, 4) }
        sec == want && /^```sh[ \t]*$/ { inb = 1; n++; f = sprintf("%s/%02d.sh", dir, first + n); print f; next }
        inb && /^```/ { inb = 0; next }
        inb { print > f }
    ' "$ROOT$README"
}
# run_step FILE: runs one README block inside the box as an administrator would paste it
# (bash -e), with curl recording its HTTP code, timing and start time in $STAGE/curl.log.
run_step() {
    local step=$1 name=${1##*/}
    {
        cat <<EOF
set -euo pipefail
curl() {
    local start=\${EPOCHREALTIME/[.,]/} rc=0 out
    out=\$(command curl -sS --max-time 30 -o $STAGE/body -w '%{http_code} %{time_total}' "\$@") || rc=\$?
    echo "\$start \${out:-000 0} \$rc \$*" >>$STAGE/curl.log
    cat $STAGE/body 2>/dev/null || true
    return \$rc
}
EOF
        cat "$step"
    } >"$ROOT$STAGE/$name"
    box bash "$STAGE/$name" >"$step.out" 2>&1
}
# steps SECTION KIND: runs the section's blocks of KIND: setup (all but removal), or
# removal (the blocks that disable or stop what setup started). Blocks for a clone are skipped.
# Prints what ran; 1 if a block failed (its output goes to the journal of failures).
steps() {
    local f ran=0 kind
    for f in $(blocks "$1"); do
        BLOCK_N=$((BLOCK_N + 1))
        grep -qE "$CLONE_ONLY" "$f" && continue
        if grep -qE 'disable --now|systemctl stop' "$f"; then kind=removal; else kind=setup; fi
        [[ $kind == "$2" ]] || continue
        ran=$((ran + 1))
        if ! run_step "$f"; then
            note "README block ${f##*/} ($1, $2) failed: $(tail -n 3 "$f.out" | xargs)"
            sed 's/^/#   /' "$f.out" >&2
            return 1
        fi
    done
    ((ran > 0)) || { note "README section '$1' has no $2 block"; return 1; }
    STEPS_RAN=$ran
}
# last_curl URL_PART: "START_US CODE SECONDS RC" of the last curl to a URL containing it.
last_curl() { awk -v u="$1" 'index($0, u) { l = $1 " " $2 " " $3 " " $4 } END { print l }' "$ROOT$STAGE/curl.log" 2>/dev/null; }
# bound_ns UNIT AFTER_NS: when the stand-in behind UNIT first bound its port at or after
# AFTER_NS (it logs "bound <epoch ns> ..."; an earlier section may have run a unit of the
# same name).
bound_ns() { box journalctl -u "$1" -o cat --no-pager | awk -v t="$2" '$1 == "bound" && $2 >= t { print $2; exit }'; }

# check_readme N SECTION URL PROXY BACKEND: the section's setup blocks, then a cold-start proof.
check_readme() {
    local n=$1 section=$2 url=$3 proxy=$4 backend=$5
    local was start=0 code=000 secs=0 rc bound=0 body fragment
    was="$(state "$proxy")/$(state "$backend")"
    [[ $was == inactive/inactive ]] || note "before the steps: proxy/backend $was (want inactive/inactive)"
    if steps "$section" setup; then
        read -r start code secs rc <<<"$(last_curl "$url")"
        start=${start:-0}
        bound=$(bound_ns "$backend" "$((start * 1000))")
        bound=${bound:-0}
        body=$(cat "$ROOT$STAGE/body" 2>/dev/null)
        [[ ${code:-} == 200 ]] || note "the README's curl $url: HTTP ${code:-none} (curl exit ${rc:-?})"
        [[ $body == "hello from backend"* ]] || note "body: ${body:0:60}"
        # Cold: the backend bound its port after the request was sent.
        ((start > 0 && bound > start * 1000)) ||
            note "backend bind at ${bound} ns not after the request at ${start} us: not a cold start"
        # Debian 12's systemd finds it as /lib/systemd/system/..., the same file (/lib is
        # a link to /usr/lib).
        fragment=$(box systemctl show -p FragmentPath --value "$proxy")
        if [[ $proxy == rsproxyd@* && $(box realpath "$fragment") != "$UNIT_DIR/rsproxyd@.service" ]]; then
            note "$proxy comes from $fragment, not the package's template"
        fi
    fi
    if [[ ${#WHY[@]} -gt 0 ]]; then dump "$proxy" "$backend"; fi
    verdict "$n" "README '$section', $STEPS_RAN block(s) run as written: HTTP $code from a cold backend (measured $(awk -v s="$secs" 'BEGIN { printf "%.1f", s * 1000 }') ms; the backend bound $(ms "$((start * 1000))" "$bound") ms after the request was sent), $proxy from ${fragment:-?}"
}

# check_removal N SECTION UNIT... FILE...: the section's removal block; nothing of it remains.
check_removal() {
    local n=$1 section=$2 u left=()
    shift 2
    if steps "$section" removal; then
        for u in "$@"; do
            if [[ $u == /* ]]; then
                [[ -e $ROOT$u ]] && left+=("$u")
            else
                [[ $(state "$u") == inactive ]] || left+=("$u $(state "$u")")
                [[ $(box systemctl is-enabled "$u" 2>/dev/null) == enabled ]] && left+=("$u enabled")
            fi
        done
        [[ ${#left[@]} -eq 0 ]] || note "left after the README's removal steps: ${left[*]}"
    fi
    verdict "$n" "README '$section': removal steps run as written; $(($# )) units and files checked gone or inactive"
}

# --- 8. apt purge -------------------------------------------------------------------------
check_purge() {
    local out rc=0 p left=() status info
    PURGE_CURSOR=$(cursor)
    out=$(box env DEBIAN_FRONTEND=noninteractive apt purge -y "$PKG" 2>&1) || rc=$?
    printf '%s\n' "$out" >"$WORK/apt-purge.log"
    ((rc == 0)) || note "apt purge exited $rc: $(tail -n 3 <<<"$out" | xargs)"
    # Every path dpkg listed is gone, except the directories the box had before.
    for p in $DPKG_LIST; do
        [[ $p == /. ]] && continue
        if [[ -n ${EXISTED[$p]:-} ]]; then
            [[ -d $ROOT$p ]] || note "$p existed before the install and is gone"
        elif [[ -e $ROOT$p || -L $ROOT$p ]]; then
            left+=("$p")
        fi
    done
    [[ ${#left[@]} -eq 0 ]] || note "left after purge: ${left[*]}"
    status=$(box dpkg-query -W -f '${db:Status-Abbrev}' "$PKG" 2>&1)
    [[ $status == *"no packages found"* ]] || note "dpkg still knows $PKG: $status"
    info=$(find "$ROOT/var/lib/dpkg/info" -name "$PKG.*" | xargs)
    [[ -z $info ]] || note "dpkg info files left: $info"
    verdict 8 "apt purge $PKG: all $(($(wc -l <<<"$DPKG_LIST") - 1)) paths of dpkg -L gone but the ${#EXISTED[@]} shared directories the box had before; dpkg has no record of it"
}

# --- 9. systemd after the purge -----------------------------------------------------------
check_systemd_after() {
    local out rc=0 files loaded warn dangling run_left=''
    out=$(box systemctl daemon-reload 2>&1) || rc=$?
    ((rc == 0)) && [[ -z $out ]] || note "systemctl daemon-reload: exit $rc ${out//$'\n'/ | }"
    files=$(box systemctl list-unit-files --no-legend --plain "rsproxyd*" "$INSTANCE*" "example*" | xargs)
    [[ -z $files ]] || note "unit files still known: $files"
    loaded=$(box systemctl list-units --all --no-legend --plain "rsproxyd*" "$INSTANCE*" "example*" | xargs)
    [[ -z $loaded ]] || note "units still loaded: $loaded"
    # What systemd itself (PID 1) said since the purge at warning level or worse.
    warn=$(box journalctl --after-cursor="$PURGE_CURSOR" _PID=1 -p warning -o cat --no-pager 2>/dev/null)
    [[ -z $warn ]] || note "systemd warned after the purge: ${warn//$'\n'/ | }"
    dangling=$(find "$ROOT/etc/systemd" "$ROOT/usr/lib/systemd" -xtype l 2>/dev/null | xargs)
    [[ -z $dangling ]] || note "dangling unit symlinks: $dangling"
    # /run is the box's own tmpfs, outside the overlay that check 10 compares.
    local p tolerated=()
    for p in $(box find /run -name "*rsproxyd*" -o -name "*$INSTANCE*" 2>/dev/null); do
        if [[ " $RUN_TOLERATED " == *" $p "* ]]; then tolerated+=("$p"); else run_left+=" $p"; fi
    done
    [[ -z $run_left ]] || note "left in /run:$run_left"
    verdict 9 "after the purge: systemctl daemon-reload clean (exit 0, no output, no warning from PID 1 since the purge), no rsproxyd/$INSTANCE/example unit file known or loaded, no dangling symlink under /etc/systemd or /usr/lib/systemd; in /run only the tolerated ${tolerated[*]:-(none)}"
}

# --- 10. nothing left behind -----------------------------------------------------------------
# Every path the box created or changed since just before the install, against the overlay's
# upper layer: after the README's removal steps and the purge, only package-manager logs
# and bookkeeping may be new, and nothing anywhere may carry our names.
check_nothing_left() {
    rm -rf "${ROOT:?}$STAGE"
    local after new created ours
    after=$(snapshot)
    new=$(comm -13 <(printf '%s\n' "$BEFORE") <(printf '%s\n' "$after"))
    printf '%s\n' "$new" >"$WORK/new-paths.txt"
    # Created (not on this machine's own /), outside the bookkeeping directories.
    created=$(while IFS= read -r p; do
        [[ -z $p || $p =~ $BOOKKEEPING ]] && continue
        [[ -e /${p#./} || -L /${p#./} ]] || echo "${p#.}"
    done <<<"$new")
    [[ -z $created ]] || note "created and left: $(xargs <<<"$created")"
    ours=$(grep -E "$OURS" <<<"$new" | grep -Ev "$MAN_CACHE" | sed 's|^\.||')
    [[ -z $ours ]] || note "paths with our names left: $(xargs <<<"$ours")"
    [[ -e $ROOT/etc/rsproxyd ]] && note "/etc/rsproxyd is left"
    verdict 10 "nothing left behind: of the $(grep -c . <<<"$new") paths the box created or changed since the install, all are package-manager bookkeeping or copies of what this machine has; none is named after $PKG, $INSTANCE or the example; no /etc/rsproxyd"
}

check_install
check_contents
check_docs
# The one-file way first, as the README leads with it (checks 20-21: rsproxyd-generator).
check_readme 20 "$SECTION_ONEFILE" 127.0.0.1:9000 "$INSTANCE.service" "$INSTANCE-backend.service"
check_removal 21 "$SECTION_ONEFILE" "$INSTANCE.socket" "$INSTANCE.service" "$INSTANCE-backend.service" \
    "/etc/rsproxyd/$INSTANCE.proxy" /usr/local/bin/$INSTANCE
check_readme 4 "$SECTION_EXAMPLE" 127.0.0.1:8080 example.service example-backend.service
check_removal 5 "$SECTION_EXAMPLE" example.socket example.service example-backend.service \
    /etc/systemd/system/example.socket /etc/systemd/system/example.service \
    /etc/systemd/system/example-backend.service /usr/local/bin/example-backend
# The administrator's daemon, which the README's unit runs as /usr/local/bin/myapp.
box install -m 0755 "$STAND_IN" /usr/local/bin/$INSTANCE
check_readme 6 "$SECTION_TEMPLATES" 127.0.0.1:9000 "rsproxyd@$INSTANCE.service" "$INSTANCE-backend.service"
check_removal 7 "$SECTION_TEMPLATES" "rsproxyd@$INSTANCE.socket" "rsproxyd@$INSTANCE.service" \
    "$INSTANCE-backend.service" "/etc/rsproxyd/$INSTANCE.conf" \
    "/etc/systemd/system/rsproxyd@$INSTANCE.socket.d" "/etc/systemd/system/$INSTANCE-backend.service"
box rm -f /usr/local/bin/$INSTANCE
check_purge
check_systemd_after
check_nothing_left

echo "# took $(ms "$T0" "$(date +%s%N)") ms in all" >&2
report
[[ $FAILED -eq 0 ]]
