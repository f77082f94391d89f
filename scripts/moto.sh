#!/usr/bin/env bash
# A local Secrets Manager endpoint for the tests: moto's server on loopback.
#   scripts/moto.sh start   # idempotent; prints nothing when up
#   scripts/moto.sh stop
# Installs moto[server] from PyPI when it is missing (scripts/tools.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

port=${MOTO_PORT:-5677}
dir=${MOTO_DIR:-/tmp/event-forwarder-moto}
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
up() { port_open 127.0.0.1 "$port"; }

case "${1:-start}" in
  start)
    up && exit 0
    command -v moto_server >/dev/null 2>&1 || scripts/tools.sh
    mkdir -p "$dir"
    # setsid: the server outlives the test process that started it, and the
    # pid file lets `stop` end exactly this process.
    setsid moto_server -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 </dev/null &
    echo $! >"$dir/pid"
    wait_port 127.0.0.1 "$port" 20 && exit 0
    echo "moto_server did not start on port $port; see $dir/moto.log" >&2
    exit 1
    ;;
  stop)
    if [ -s "$dir/pid" ]; then kill "$(cat "$dir/pid")" 2>/dev/null || true; rm -f "$dir/pid"; fi
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
