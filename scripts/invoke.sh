#!/usr/bin/env bash
# `make invoke EVENT=events/<file>.json`: one event through the function
# (the host build of the binary under the Lambda runtime API emulator)
# against the local RabbitMQ. Prints the batch response, the messages that
# arrived in a queue bound to the exchange with '#', the dead letters and the
# function's log. Settings come from the environment, e.g. MAPPING=change.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/emulator.sh

EVENT=${1:-${EVENT:-}}
if [ -z "$EVENT" ] || [ ! -f "$EVENT" ]; then
  echo "usage: make invoke EVENT=events/<file>.json [MAPPING=change] [EXCHANGE=...]" >&2
  exit 2
fi
export EXCHANGE=${EXCHANGE:-local.events}
QUEUE=${QUEUE:-local.inbox}
export AMQP_URI=${AMQP_URI:-amqp://guest:guest@127.0.0.1:5672/%2f}
RUN_DIR=.run
mkdir -p "$RUN_DIR"
PORT=${PORT:-$(free_port)}

cargo build --bin event-forwarder --example demo_queue

# The demo topology is made anew each run: one an older forwarder declared
# (its queues without today's delivery limit) would fail the cold start.
target/debug/examples/demo_queue delete "$EXCHANGE" "$QUEUE" >/dev/null
echo "==> Lambda runtime emulator on 127.0.0.1:$PORT"
start_emulator "$PORT" "$RUN_DIR/invoke-emulator.log"
echo "==> function: EXCHANGE=$EXCHANGE MAPPING=${MAPPING:-event-store}, log in $RUN_DIR/invoke-function.log"
start_function "$PORT" "$RUN_DIR/invoke-function.log" target/debug/event-forwarder
wait_for_init "$RUN_DIR/invoke-function.log"
target/debug/examples/demo_queue bind "$EXCHANGE" "$QUEUE"

echo "==> invoke $EVENT"
status=0
invoke "$PORT" "$EVENT" || status=$?
echo

target/debug/examples/demo_queue show "$QUEUE" "$EXCHANGE.dead-letter"

kill -TERM "$fn_pid" 2>/dev/null || true
wait "$fn_pid" 2>/dev/null || true
echo
echo "==> function log (JSON lines: summary and EMF metrics)"
cat "$RUN_DIR/invoke-function.log"
exit "$status"
