#!/usr/bin/env bash
# The relay settings rsproxyd ships with, against the alternatives, in interleaved rounds:
# benches/compare.sh with rsproxyd's variants (one binary built with the `tuning` feature;
# src/tuning.rs lists the knobs) and HAProxy as the reference. docs/performance.md records
# a run and what was decided from it.
#
# usage: benches/tuning.sh       (as root on Debian 12; ROUNDS, OUT, SKIP_INSTALL as compare.sh)
#   TUNING_VARIANTS="relay=copy threads=2"   other variants (KEY=VALUE[,KEY=VALUE])
set -euo pipefail
cd "$(dirname "$0")/.."

read -r -a variants <<<"${TUNING_VARIANTS:-relay=copy relay=splice threads=2 pipe=262144 buffer=16384}"
proxies="rsproxyd"
for v in "${variants[@]}"; do proxies+=" rsproxyd:$v"; done
export PROXIES="$proxies haproxy"
export BENCH_WORKLOADS=${BENCH_WORKLOADS:-bulk rr_1conn rr_50conn http_ka new_conn}
export OUT=${OUT:-$PWD/bench-results/tuning}
unset RSPROXYD_BIN # compare.sh builds the tuning binary for all rsproxyd entries
exec benches/compare.sh
