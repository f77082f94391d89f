#!/usr/bin/env bash
# Makes sure a local RabbitMQ is installed and running (Debian/Ubuntu).
# Idempotent: does nothing when the broker already answers.
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
# shellcheck source=scripts/rabbitmq-node.sh
. "$(dirname "$0")/rabbitmq-node.sh"

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "==> installing rabbitmq-server (apt)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
fi

if as_root rabbitmqctl -q status >/dev/null 2>&1; then
  exit 0
fi

echo "==> starting rabbitmq-server"
# The Debian package may have started it as a service already; -detached
# is for machines without an init system (containers, CI).
as_root rabbitmq-server -detached >/dev/null 2>&1 || true
wait_for_node /var/log/rabbitmq as_root rabbitmqctl
echo "==> rabbitmq is up"
