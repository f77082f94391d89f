#!/usr/bin/env bash
# Makes sure a Docker engine runs here (Debian/Ubuntu): installs docker.io
# from apt when dockerd is missing and starts dockerd when nothing answers
# (machines without systemd: containers, CI). Idempotent: silent when
# `docker info` already works. No image registry is needed: the project
# builds its images from Debian's packages (scripts/rabbitmq4.sh,
# scripts/sam-image.sh).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

log=${DOCKERD_LOG:-/var/log/event-forwarder-dockerd.log}

docker info >/dev/null 2>&1 && exit 0
command -v dockerd >/dev/null 2>&1 || apt_install docker.io
command -v docker >/dev/null 2>&1 || apt_install docker.io
if ! docker info >/dev/null 2>&1; then
  echo "==> starting dockerd (log: $log)"
  # systemd, when it runs; otherwise dockerd on its own, detached so it
  # outlives this script.
  if [ -d /run/systemd/system ]; then
    as_root systemctl start docker
  else
    # A pid file left by a dockerd that did not stop cleanly stops a new one.
    pid=$(cat /var/run/docker.pid 2>/dev/null || true)
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then as_root rm -f /var/run/docker.pid; fi
    as_root setsid dockerd >"$log" 2>&1 </dev/null &
  fi
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && exit 0
    sleep 0.5
  done
  echo "dockerd did not start; the end of $log:" >&2
  tail -n 20 "$log" >&2 2>/dev/null || true
  exit 1
fi
