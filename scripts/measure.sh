#!/usr/bin/env bash
# `make measure`: peak RSS, CPU time and batch duration of the function's
# release build under the Lambda runtime emulator, against the local
# RabbitMQ: init only, then ROUNDS batches of RECORDS records of about 1 KB,
# then of about 6 KB (a 1,000-record batch near Lambda's 6 MB payload
# limit). These figures size MemorySize and Timeout in template.yaml. The
# host (x86_64) build is measured: the arm64 artefact does not run here.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/emulator.sh

RECORDS=${RECORDS:-1000}
ROUNDS=${ROUNDS:-5}
export AMQP_URI=${AMQP_URI:-amqp://guest:guest@127.0.0.1:5672/%2f}
RUN_DIR=.run
mkdir -p "$RUN_DIR"

cargo build --release --bin event-forwarder
cargo build --example demo_queue

# measure LABEL RECORD_BYTES ROUNDS
measure() {
  local label=$1 bytes=$2 rounds=$3
  local event="$RUN_DIR/measure-$RECORDS-$bytes.json"
  local log="$RUN_DIR/measure-function.log" times="$RUN_DIR/measure-time.txt"
  python3 scripts/batch_event.py "$RECORDS" "$bytes" >"$event"
  export EXCHANGE="measure.$$.$bytes.$rounds"
  local port
  port=$(free_port)
  start_emulator "$port" "$RUN_DIR/measure-emulator.log"
  local emulator_pid=$!
  start_function "$port" "$log" /usr/bin/time -v -o "$times" target/release/event-forwarder
  wait_for_init "$log"
  target/debug/examples/demo_queue bind "$EXCHANGE" "$EXCHANGE.inbox" >/dev/null

  local walls=() start response
  for _ in $(seq 1 "$rounds"); do
    start=$(date +%s%N)
    response=$(invoke "$port" "$event")
    walls+=($((($(date +%s%N) - start) / 1000000)))
    if [ "$response" != '{"batchItemFailures":[]}' ]; then
      echo "unexpected response: $response" >&2
      return 1
    fi
  done

  # SIGTERM to the function itself (the child of time), then collect.
  kill -TERM "$(pgrep -P "$fn_pid")"
  wait "$fn_pid" || true
  kill -TERM "$emulator_pid" 2>/dev/null || true
  wait "$emulator_pid" 2>/dev/null || true
  target/debug/examples/demo_queue delete "$EXCHANGE" "$EXCHANGE.inbox" >/dev/null

  local rss cpu durations
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$times")
  cpu=$(awk -F': ' '/User time/ {u=$2} /System time/ {s=$2} END {printf "%.2f", u + s}' "$times")
  durations=$(grep -o '"BatchDurationMs":[0-9]*' "$log" | cut -d: -f2 | paste -sd, || true)
  printf '%-28s %6s KB peak RSS (%s MB)  event %5s KB  CPU %5s s  BatchDurationMs [%s]  invoke wall ms [%s]\n' \
    "$label" "$rss" "$((rss / 1024))" "$(($(stat -c %s "$event") / 1024))" "$cpu" \
    "$durations" "$(IFS=,; echo "${walls[*]:-}")"
}

echo "==> release build, $RECORDS records per batch, $ROUNDS rounds each"
measure "init only" 1000 0
measure "$RECORDS x ~1 KB records" 1000 "$ROUNDS"
measure "$RECORDS x ~6 KB records" 6000 "$ROUNDS"
