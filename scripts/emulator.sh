# Sourced by run.sh, invoke.sh and measure.sh: the Lambda runtime API emulator
# (`cargo lambda watch --only-lambda-apis`) on a free port, and the function
# binary polling it. Child processes are stopped by their ids on exit.

# shellcheck source=scripts/lib.sh
. scripts/lib.sh

pids=()
stop_children() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop_children EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_emulator PORT LOG
start_emulator() {
  cargo lambda watch --only-lambda-apis -A 127.0.0.1 -P "$1" >"$2" 2>&1 &
  pids+=($!)
  wait_port 127.0.0.1 "$1" 30 && return 0
  echo "the runtime emulator did not start; see $2" >&2
  return 1
}

# start_function PORT LOG COMMAND... : sets fn_pid. The function's settings
# (EXCHANGE, MAPPING, ...) come from the environment. The Lambda variables
# are those of the tests' harness, whose list is the canonical one
# (testkit/src/function.rs, lambda_env): keep the two in step.
start_function() {
  local port=$1 log=$2
  shift 2
  AWS_LAMBDA_RUNTIME_API="http://127.0.0.1:$port/.rt" \
  AWS_LAMBDA_FUNCTION_NAME=${AWS_LAMBDA_FUNCTION_NAME:-event-forwarder-local} \
  AWS_LAMBDA_FUNCTION_VERSION=1 \
  AWS_LAMBDA_FUNCTION_MEMORY_SIZE=${AWS_LAMBDA_FUNCTION_MEMORY_SIZE:-128} \
    "$@" >"$log" 2>&1 &
  fn_pid=$!
  pids=("$fn_pid" "${pids[@]}")
}

# wait_for_init LOG: waits until the function has logged its first line
# (connected, broker unreachable, or a configuration error), then fails if
# the function is no longer running, showing its log.
wait_for_init() {
  for _ in $(seq 1 300); do
    [ -s "$1" ] && break
    kill -0 "$fn_pid" 2>/dev/null || break
    sleep 0.1
  done
  sleep 0.2
  if ! kill -0 "$fn_pid" 2>/dev/null; then
    echo "==> the function exited during init; its log:" >&2
    cat "$1" >&2
    return 1
  fi
}

# invoke PORT EVENT_FILE: prints the response; fails on an invocation error
# and, rather than waiting forever, when no response comes within
# INVOKE_TIMEOUT seconds (default 120).
invoke() {
  timeout "${INVOKE_TIMEOUT:-120}" cargo lambda invoke -A 127.0.0.1 -P "$1" -F "$2"
}
