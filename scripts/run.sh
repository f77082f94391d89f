#!/usr/bin/env bash
# `make run`: the function under the Lambda runtime emulator against a local
# RabbitMQ. Forwards the sample events, prints each batch response and the
# messages that arrived in a queue bound to the exchange.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/emulator.sh

PORT=${PORT:-9000}
export EXCHANGE=${EXCHANGE:-demo.events}
QUEUE=${QUEUE:-demo.inbox}
export AMQP_URI=${AMQP_URI:-amqp://guest:guest@127.0.0.1:5672/%2f}
RUN_DIR=.run
mkdir -p "$RUN_DIR"

cargo build --quiet --bin event-forwarder --example demo_queue

echo "==> Lambda runtime emulator on 127.0.0.1:$PORT (cargo lambda watch --only-lambda-apis)"
start_emulator "$PORT" "$RUN_DIR/emulator.log"
echo "==> function: EXCHANGE=$EXCHANGE, logs in $RUN_DIR/function.log"
start_function "$PORT" "$RUN_DIR/function.log" target/debug/event-forwarder
wait_for_init "$RUN_DIR/function.log"

target/debug/examples/demo_queue bind "$EXCHANGE" "$QUEUE"

for event in events/insert-batch.json events/poison-batch.json; do
  echo "==> invoke $event"
  invoke "$PORT" "$event"
  echo
done

target/debug/examples/demo_queue show "$QUEUE" "$EXCHANGE.dead-letter"

kill -TERM "$fn_pid" 2>/dev/null || true
wait "$fn_pid" 2>/dev/null || true
echo
echo "==> function log (JSON lines: summaries and EMF metrics)"
cat "$RUN_DIR/function.log"
