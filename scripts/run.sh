#!/usr/bin/env bash
# `make run`: the real loop on one machine, without Docker. A local RabbitMQ,
# moto's server (DynamoDB, its stream and SQS) with an event-store table and
# an OnFailure queue, the function and its event source mapping deployed to
# moto's Lambda (make deploy-cargo-lambda's path), the function run under
# `cargo lambda watch`, and `forwarder-ops stream` as the event source
# mapping, with the deployed mapping's settings. The sample domain
# events are written as items through the DynamoDB API; it shows what
# arrived in a queue bound to the exchange and in the dead-letter queue, the
# mapping's summary and the function's summary and metrics.
# `make dev` (DEV=1) keeps the loop running for items of your own.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/emulator.sh

PORT=${PORT:-9000}
MOTO_PORT=${MOTO_PORT:-5677}
export EXCHANGE=${EXCHANGE:-demo.events}
QUEUE=${QUEUE:-demo.inbox}
TABLE=${TABLE:-demo-events}
ON_FAILURE=${ON_FAILURE:-demo-events-on-failure}
export AMQP_URI=${AMQP_URI:-amqp://guest:guest@127.0.0.1:5672/%2f}
# moto takes any credentials; the tool and boto3 read these.
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-test} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-test}
export AWS_REGION=${AWS_REGION:-us-east-1} AWS_DEFAULT_REGION=${AWS_REGION:-us-east-1}
export AWS_ENDPOINT_URL=http://127.0.0.1:$MOTO_PORT
RUN_DIR=.run
mkdir -p "$RUN_DIR"

cargo build --features ops --bin event-forwarder --bin forwarder-ops --example demo_queue
ops() {
  target/debug/forwarder-ops --endpoint-url "$AWS_ENDPOINT_URL" \
    --lambda-endpoint-url "http://127.0.0.1:$PORT" "$@"
}

echo "==> moto's server on 127.0.0.1:$MOTO_PORT (DynamoDB, DynamoDB Streams, SQS, Lambda, IAM)"
MOTO_PORT=$MOTO_PORT scripts/moto.sh start
python3 scripts/local_aws.py setup "$TABLE" "$ON_FAILURE"

# The function and its event source mapping deployed to moto as `make
# deploy-cargo-lambda` deploys them (CargoLambda.toml's local context; the
# code is a stand-in, which moto stores and never runs). moto runs a
# mapping itself, through Docker, on every write to its table and then
# clears that table's stream: the deployed mapping is on a table of its own
# that nothing writes, and `stream --mapping` reads $TABLE with its settings.
echo "==> the function and its mapping deployed to moto (make deploy-cargo-lambda's path, context local)"
deployed_stream=$(python3 scripts/local_aws.py deployed "$TABLE-deployed" event-forwarder-local)
python3 scripts/local_aws.py stand-in "$RUN_DIR/bootstrap"
ENDPOINT_URL=$AWS_ENDPOINT_URL BINARY_PATH=$RUN_DIR/bootstrap STREAM_ARN=$deployed_stream \
  ON_FAILURE=arn:aws:sqs:$AWS_REGION:123456789012:$ON_FAILURE \
  FORWARDER_OPS=target/debug/forwarder-ops scripts/deploy-cargo-lambda.sh local >"$RUN_DIR/deploy.log" 2>&1 \
  || { cat "$RUN_DIR/deploy.log" >&2; exit 1; }
grep '^deploy-mapping:' "$RUN_DIR/deploy.log"
MAPPING_ID=$(sed -n 's/^deploy-mapping: uuid=\([^ ]*\).*/\1/p' "$RUN_DIR/deploy.log")

# The demo topology is made anew each run: one an older forwarder declared
# (its queues without today's delivery limit) would fail the cold start.
target/debug/examples/demo_queue delete "$EXCHANGE" "$QUEUE" >/dev/null
echo "==> the function under cargo lambda watch on 127.0.0.1:$PORT (Invoke API: /2015-03-31/functions/_/invocations)"
start_emulator "$PORT" "$RUN_DIR/emulator.log"
echo "==> function: EXCHANGE=$EXCHANGE, logs in $RUN_DIR/function.log"
start_function "$PORT" "$RUN_DIR/function.log" target/debug/event-forwarder
wait_for_init "$RUN_DIR/function.log"
target/debug/examples/demo_queue bind "$EXCHANGE" "$QUEUE"

put_your_own() {
  cat <<EOT

==> Put an item of your own and watch it arrive (pip install awscli):
  AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=$AWS_REGION \\
  aws --endpoint-url $AWS_ENDPOINT_URL dynamodb put-item --table-name $TABLE \\
    --item '{"aggregateId":{"S":"prod-1"},"version":{"N":"1"},"eventType":{"S":"ProductCreated"},"payload":{"M":{"name":{"S":"Mug"}}}}'
  target/debug/examples/demo_queue show $QUEUE
EOT
}

if [ -n "${DEV:-}" ]; then
  put_your_own
  echo
  echo "==> forwarder-ops stream (Ctrl-C stops it); the function logs to $RUN_DIR/function.log"
  ops stream --mapping "$MAPPING_ID" --table "$TABLE"
  exit 0
fi

echo "==> forwarder-ops stream --mapping $MAPPING_ID --table $TABLE (the local event source mapping, with the deployed one's settings)"
ops stream --mapping "$MAPPING_ID" --table "$TABLE" --idle-exit 4 \
  >"$RUN_DIR/stream.out" 2>"$RUN_DIR/stream.log" &
stream_pid=$!
pids+=("$stream_pid")

echo "==> writing the sample events through the DynamoDB API (PutItem, UpdateItem, TransactWriteItems)"
first_write=$(python3 scripts/local_aws.py put-samples "$TABLE")
# 7 events; the MODIFY is skipped, the item without eventType dead-lettered.
arrived=$(target/debug/examples/demo_queue wait "$QUEUE" 7)
echo "==> 7 events in $QUEUE $((arrived - first_write)) ms after the first PutItem"
# One more, on its own: the time from PutItem to the queue.
put_at=$(python3 scripts/local_aws.py put-one "$TABLE")
arrived=$(target/debug/examples/demo_queue wait "$QUEUE" 8)
echo "==> one PutItem to $QUEUE: $((arrived - put_at)) ms"
wait "$stream_pid" || { echo "forwarder-ops failed; its log:" >&2; cat "$RUN_DIR/stream.log" >&2; exit 1; }

target/debug/examples/demo_queue show "$QUEUE" "$EXCHANGE.dead-letter"
python3 scripts/local_aws.py on-failure "$ON_FAILURE"

echo
echo "==> the event source mapping (forwarder-ops stream)"
cat "$RUN_DIR/stream.log" "$RUN_DIR/stream.out"
echo
echo "==> the function's log (JSON lines: summaries and EMF metrics)"
cat "$RUN_DIR/function.log"
put_your_own
echo "  (make dev keeps the loop running for that)"
