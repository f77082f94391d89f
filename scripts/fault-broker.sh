#!/usr/bin/env bash
# A second, disposable RabbitMQ node for the fault-injection tests, so that
# stopping it, filling its memory alarm or closing its connections never
# disturbs the main broker the other tests use.
#   scripts/fault-broker.sh start   # idempotent; prints nothing when up
#   scripts/fault-broker.sh stop
set -euo pipefail

# shellcheck source=scripts/rabbitmq-node.sh
. "$(dirname "$0")/rabbitmq-node.sh"
node_env "${FAULT_NODE:-ef-faults@localhost}" "${FAULT_AMQP_PORT:-5673}" \
  "${FAULT_BROKER_DIR:-/tmp/event-forwarder-faults}"

case "${1:-start}" in
  start)
    # Connection events go to the log file the tests read (SIGTERM check).
    start_node "log.file.level = info
loopback_users = none"
    ;;
  stop)
    stop_node
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
