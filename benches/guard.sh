#!/bin/bash
# The seed's cold-start guard, as its ExecStartPre ran it, then the proxy (ExecStart).
# usage: guard.sh HOST:PORT PROXY [ARGS...]
# Polls `ss -tln` every 100 ms, up to 50 times, for the backend's listening socket; exec
# keeps the pid, so LISTEN_PID set for this shell still names the proxy.
addr=$1
shift
for i in {1..50}; do
    ss -tln | grep -q "$addr " && exec "$@"
    sleep 0.1
done
exit 1
