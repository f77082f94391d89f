#!/usr/bin/env bash
# Debian's RabbitMQ (3.10 on bookworm) on this host, for `make run`, `make
# dev` and `make invoke`: a fast apt install. The test suites use RabbitMQ 4
# as Amazon MQ runs it (scripts/rabbitmq4.sh), and this one for what must
# hold on 3.x as well. Idempotent: does nothing when the broker answers.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

command -v rabbitmq-server >/dev/null 2>&1 || apt_install rabbitmq-server
as_root rabbitmqctl -q status >/dev/null 2>&1 && exit 0

echo "==> starting rabbitmq-server"
# The Debian package may have started it as a service already; -detached
# is for machines without an init system (containers, CI).
as_root rabbitmq-server -detached >/dev/null 2>&1 || true
# `rabbitmq-server -detached` returns before the node registers with epmd,
# and `rabbitmqctl await_startup` gives up at once on a node it cannot see
# yet (this failed CI on a fresh machine): ping until the node answers,
# then await the boot.
for _ in $(seq 1 120); do
  if as_root rabbitmqctl -q ping >/dev/null 2>&1; then
    as_root rabbitmqctl await_startup --timeout 120 >/dev/null && { echo "==> rabbitmq is up"; exit 0; }
    break
  fi
  sleep 1
done
echo "RabbitMQ did not start; the end of its logs (/var/log/rabbitmq):" >&2
tail -n 40 /var/log/rabbitmq/*.log >&2 2>/dev/null || true
exit 1
