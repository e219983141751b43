#!/usr/bin/env bash
# Builds the Debian package target/debian/rsproxyd_<version>_<arch>.deb from this tree (a
# clean clone is enough) and checks it with lintian.
#
# usage: scripts/build-deb.sh
#
# Installs what is missing: cargo-deb (cargo install), dpkg-dev (dpkg-shlibdeps computes
# Depends) and lintian (apt-get, so as root). Steps: check that debian/changelog matches
# Cargo.toml's version and that every crate linked into the binary is under a license
# debian/copyright covers; generate the manual page (cargo run --example mangen); cargo deb;
# lintian, which must report no error and no warning outside ALLOWED_WARNINGS.
# The last line printed is the path of the .deb.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# --- Tunables -------------------------------------------------------------------------------
# cargo-deb 3.x: units in /usr/lib/systemd/system, man pages gzipped, $auto from dpkg-shlibdeps.
CARGO_DEB_REQ='^3.8'
# cargo-deb's default Debian revision; debian/changelog's top entry must be VERSION-REVISION.
DEB_REVISION=1
MAN_DIR=target/man
# Lintian warnings accepted, each with the reason (the reply to the issue lists them too):
#   initial-upload-closes-no-bugs: the package is built for direct download, not uploaded to
#   the Debian archive, so there is no ITP bug for its first changelog entry to close.
ALLOWED_WARNINGS='initial-upload-closes-no-bugs'
# Licenses debian/copyright covers: MIT, or MIT as one choice (SPDX "OR", or the older
# "/"); and BSD-3-Clause for the crate subtle only (through libsystemd), whose notice the
# copyright file carries: another crate under it needs its own notice there first.
LICENSE_OK='^(MIT|MIT OR Apache-2\.0|Apache-2\.0 OR MIT|MIT/Apache-2\.0|Unlicense OR MIT)$'
BSD_NOTICED='^subtle v'
# ------------------------------------------------------------------------------------------

say() { echo "build-deb: $*" >&2; }
die() { say "$*"; exit 1; }

apt_install() { # PACKAGE...
    [[ $(id -u) -eq 0 ]] || die "missing $*: install with apt-get install $* (or run as root)"
    say "installing $* with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

START=$(date +%s)
command -v dpkg-shlibdeps >/dev/null || apt_install dpkg-dev
command -v lintian >/dev/null || apt_install lintian
if ! cargo deb --version >/dev/null 2>&1; then
    say "installing cargo-deb ($CARGO_DEB_REQ) with cargo install"
    cargo install cargo-deb --locked --version "$CARGO_DEB_REQ"
fi
say "using $(cargo deb --version 2>&1 | head -n1), $(lintian --version)"

# --- Consistency checks ---------------------------------------------------------------------
VERSION=$(cargo pkgid --locked | sed 's/.*[#@]//')
CHANGELOG_VERSION=$(dpkg-parsechangelog -l debian/changelog -S Version)
[[ $CHANGELOG_VERSION == "$VERSION-$DEB_REVISION" ]] ||
    die "debian/changelog's top entry is $CHANGELOG_VERSION, Cargo.toml says $VERSION (want $VERSION-$DEB_REVISION): add a changelog entry (dch -v $VERSION-$DEB_REVISION)"

# Crates linked into the binary (proc-macros and build tools are not).
BAD_LICENSES=$(cargo tree --locked -e normal,no-proc-macro --prefix none --format '{p}|{l}' |
    sed 's/ (\*)$//' | sort -u | awk -F'|' -v ok="$LICENSE_OK" -v bsd="$BSD_NOTICED" \
        '$1 !~ /^rsproxyd / && $2 !~ ok && !($1 ~ bsd && $2 == "BSD-3-Clause")')
[[ -z $BAD_LICENSES ]] ||
    die "crates linked into rsproxyd under licenses debian/copyright does not cover:"$'\n'"$BAD_LICENSES"

# --- Build ----------------------------------------------------------------------------------
# Reproducible: file times in the .deb and the manual page's date are the last commit's.
if [[ -z ${SOURCE_DATE_EPOCH:-} ]] && git rev-parse --git-dir >/dev/null 2>&1; then
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)
    export SOURCE_DATE_EPOCH
fi
say "manual page: cargo run --example mangen"
cargo run --locked --quiet --example mangen -- "$MAN_DIR"
say "package: cargo deb"
DEB=$(cargo deb --locked --deb-revision "$DEB_REVISION" | tail -n1)
[[ -f $DEB ]] || die "cargo deb did not report a .deb (last line: $DEB)"
DEB=$(realpath --relative-to=. "$DEB")

# --- Lint -----------------------------------------------------------------------------------
say "lintian $DEB"
# Exit status 1 means tags of severity error were found (judged below); 2 and up, that
# lintian itself failed.
LINT_RC=0
LINT=$(lintian --display-info --display-experimental --pedantic "$DEB" 2>&1) || LINT_RC=$?
[[ -n $LINT ]] && printf '%s\n' "$LINT" >&2
((LINT_RC <= 1)) || die "lintian failed (exit $LINT_RC)"
ERRORS=$(grep -c '^E: ' <<<"$LINT" || true)
STRAY=$(grep '^W: ' <<<"$LINT" | awk '{ print $3 }' | grep -vxF -f <(tr ' ' '\n' <<<"$ALLOWED_WARNINGS") || true)
if ((ERRORS > 0)) || [[ -n $STRAY ]]; then
    die "lintian: $ERRORS error(s); warnings not accepted: ${STRAY:-none}"
fi
say "lintian: no errors; accepted warnings: $(grep -c '^W: ' <<<"$LINT" || true)"
say "built $DEB ($(stat -c %s "$DEB") bytes) in $(($(date +%s) - START)) s"
echo "$DEB"
