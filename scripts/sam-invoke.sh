#!/usr/bin/env bash
# `make sam-invoke [EVENT=events/<file>.json]`: the template's function under
# `sam local invoke`, in a container of the stand-in provided.al2023 image
# (scripts/sam-image.sh) with AWS's Runtime Interface Emulator, against the
# local RabbitMQ on the Docker host. Prints the emulator's START/END/REPORT
# lines with the function's log, the batch response, and what arrived in a
# queue bound to the exchange with '#' and in the dead-letter queue.
# Without EVENT, the event is AWS's own sample (`sam local generate-event
# dynamodb update`).
#
#   scripts/sam-invoke.sh [EVENT]           prepare, then invoke and show
#   scripts/sam-invoke.sh prepare           what an invoke needs, idempotent:
#                                           Docker, the SAM CLI, the broker
#                                           user, the image, `sam build`
#   scripts/sam-invoke.sh invoke EVENT ENV  `sam local invoke` alone, with the
#                                           settings of the env-vars file ENV
#                                           (the test's entry point): the
#                                           response on stdout, logs on stderr
#
# Settings: the function's environment comes from sam-local-env.json (AMQP_URI
# names a broker user the container logs in with: RabbitMQ's guest may only
# log in over loopback; `prepare` creates it). SAM_IMAGE=aws uses AWS's own
# image (public.ecr.aws/lambda/provided:al2023-<arch>, pulled by the SAM
# CLI) instead of the stand-in; SAM_IMAGE=<name> any other local image.
# RABBITMQCTL is the command that manages the broker (default rabbitmqctl).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

export SAM_CLI_TELEMETRY=0
FUNCTION=ForwarderFunction
ENV_FILE=sam-local-env.json
SAM_IMAGE=${SAM_IMAGE:-stand-in}
# A command and its arguments, e.g. "docker exec NAME rabbitmqctl".
read -ra RABBITMQCTL <<<"${RABBITMQCTL:-rabbitmqctl}"
RUN_DIR=.run
# The template's Architectures, read by `prepare` for `invoke`.
ARCH_FILE=$RUN_DIR/sam-architecture

sam_cli() { "$(scripts/deploy-tools.sh sam-path)" "$@"; }

# The template function's Architectures (arm64 or x86_64).
architecture() {
  python3 - <<'PY'
import re, sys
text = open("template.yaml").read()
# The first Architectures under ForwarderFunction's Properties.
block = text.split("  ForwarderFunction:", 1)[1]
match = re.search(r"^\s+Architectures:\s*\[\s*([a-z0-9_]+)\s*\]", block, re.M)
sys.exit("template.yaml: no Architectures for ForwarderFunction") if not match else print(match.group(1))
PY
}

# The broker user of sam-local-env.json's AMQP_URI, with every permission
# on its vhost. Its password goes to rabbitmqctl on standard input, never
# on a command line or in the output.
broker_user() {
  local parts user password vhost
  parts=$(python3 - "$ENV_FILE" "$FUNCTION" <<'PY'
import json, sys, urllib.parse
uri = json.load(open(sys.argv[1]))[sys.argv[2]]["AMQP_URI"]
u = urllib.parse.urlsplit(uri)
vhost = urllib.parse.unquote(u.path[1:]) if len(u.path) > 1 else "/"
print(urllib.parse.unquote(u.username or ""), urllib.parse.unquote(u.password or ""), vhost, sep="\n")
PY
  )
  { read -r user; read -r password; read -r vhost; } <<<"$parts"
  if [ -z "$user" ] || [ "$user" = guest ]; then
    echo "$ENV_FILE: AMQP_URI needs a user of its own (guest may only log in over loopback)" >&2
    return 1
  fi
  local users
  users=$(as_root "${RABBITMQCTL[@]}" -q list_users)
  if ! awk -v user="$user" '$1 == user { found = 1 } END { exit !found }' <<<"$users"; then
    echo "==> creating the broker user '$user' for the container (rabbitmqctl add_user)"
    as_root "${RABBITMQCTL[@]}" -q add_user "$user" <<<"$password" >/dev/null
  elif ! as_root "${RABBITMQCTL[@]}" -q authenticate_user "$user" <<<"$password" >/dev/null 2>&1; then
    echo "==> resetting the password of the broker user '$user' to the one in $ENV_FILE"
    as_root "${RABBITMQCTL[@]}" -q change_password "$user" <<<"$password" >/dev/null
  fi
  as_root "${RABBITMQCTL[@]}" -q set_permissions -p "$vhost" "$user" '.*' '.*' '.*' >/dev/null
}

prepare() {
  mkdir -p "$RUN_DIR"
  scripts/broker.sh
  scripts/docker.sh
  command -v ip >/dev/null 2>&1 || apt_install iproute2
  scripts/deploy-tools.sh build
  scripts/deploy-tools.sh sam
  broker_user
  local arch
  arch=$(architecture)
  echo "$arch" >"$ARCH_FILE"
  if [ "$SAM_IMAGE" = stand-in ]; then
    scripts/sam-image.sh "$arch" >/dev/null
  fi
  # The build `sam build` runs (BuildMethod rust-cargolambda), first with
  # cargo's progress in sight; `sam build` then finds it done and copies it.
  local target=()
  [ "$arch" = arm64 ] && target=(--arm64)
  echo "==> cargo lambda build --release ${target[*]} --bin event-forwarder"
  cargo lambda build --release "${target[@]}" --bin event-forwarder
  # --no-cached: samconfig.toml's cache hashes the whole CodeUri, target/
  # included (gigabytes: 47 s here), only to run the same no-op build.
  echo "==> sam build --no-cached (the template's function, $arch)"
  sam_cli build --no-cached
}

# The Docker host's address on the default bridge. A dockerd that just
# started on a fresh machine leaves the network's IPAM Gateway unset (only a
# Subnet), so the bridge interface's own address comes first: it exists
# whenever the bridge does. One clear line, never an empty flag, when
# neither can be found.
bridge_address() {
  local name address
  name=$(docker network inspect bridge -f '{{index .Options "com.docker.network.bridge.name"}}' 2>/dev/null) || name=
  address=$(ip -4 -o addr show dev "${name:-docker0}" 2>/dev/null | awk '{ split($4, a, "/"); print a[1]; exit }')
  if [ -z "$address" ]; then
    address=$(docker network inspect bridge -f '{{range .IPAM.Config}}{{if .Gateway}}{{.Gateway}} {{end}}{{end}}' 2>/dev/null | awk '{ print $1 }')
  fi
  if [ -z "$address" ]; then
    echo "sam-invoke: no address for Docker's default bridge (no IPv4 address on ${name:-docker0}, no Gateway in 'docker network inspect bridge'); is dockerd running with its bridge enabled?" >&2
    return 1
  fi
  echo "$address"
}

# invoke EVENT ENV_FILE
invoke() {
  local event=$1 env_file=$2 arch image
  arch=$(cat "$ARCH_FILE" 2>/dev/null) || { echo "run scripts/sam-invoke.sh prepare first" >&2; return 1; }
  local flags=()
  case "$SAM_IMAGE" in
    aws) ;;
    stand-in)
      image=$(scripts/sam-image.sh "$arch")
      flags=(--invoke-image "$image" --skip-pull-image) ;;
    *) flags=(--invoke-image "$SAM_IMAGE" --skip-pull-image) ;;
  esac
  # The emulator's port is published on the Docker bridge's address, not on
  # 127.0.0.1: there Docker's userland proxy accepts the SAM CLI's readiness
  # probe before the emulator listens (it starts slowly under qemu), and the
  # invoke that follows fails ("No response from invoke container"). On the
  # bridge address the kernel forwards to the container, which refuses the
  # probe until the emulator listens, so the SAM CLI waits for it.
  local bridge
  bridge=$(bridge_address) || return 1
  sam_cli local invoke "$FUNCTION" -e "$event" --env-vars "$env_file" \
    --add-host host.docker.internal:host-gateway \
    --container-host "$bridge" --container-host-interface "$bridge" "${flags[@]}"
}

case "${1:-}" in
  prepare)
    prepare
    ;;
  invoke)
    [ $# -eq 3 ] || { echo "usage: $0 invoke EVENT ENV_FILE" >&2; exit 2; }
    invoke "$2" "$3"
    ;;
  *)
    EVENT=${1:-}
    if [ -n "$EVENT" ] && [ ! -f "$EVENT" ]; then
      echo "usage: make sam-invoke [EVENT=events/<file>.json]; $EVENT does not exist" >&2
      exit 2
    fi
    prepare
    if [ -z "$EVENT" ]; then
      EVENT=$RUN_DIR/sam-dynamodb-update.json
      echo "==> no EVENT: AWS's sample, sam local generate-event dynamodb update > $EVENT"
      sam_cli local generate-event dynamodb update >"$EVENT"
    fi
    EXCHANGE=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]]["EXCHANGE"])' "$ENV_FILE" "$FUNCTION")
    QUEUE=${QUEUE:-sam.inbox}
    cargo build --example demo_queue
    # The function starts only when invoked: its topology is declared first
    # (by the crate's own code, with the function's settings), so the queue
    # is bound before it publishes.
    mapfile -t settings < <(python3 -c '
import json, sys
for name, value in json.load(open(sys.argv[1]))[sys.argv[2]].items():
    if name not in ("AMQP_URI", "AMQP_SECRET_ARN"):
        print(f"{name}={value}")' "$ENV_FILE" "$FUNCTION")
    # Made anew each run: a topology an older forwarder declared (its queues
    # without today's delivery limit) would be refused.
    target/debug/examples/demo_queue delete "$EXCHANGE" "$QUEUE" >/dev/null
    env "${settings[@]}" target/debug/examples/demo_queue topology "$EXCHANGE"
    target/debug/examples/demo_queue bind "$EXCHANGE" "$QUEUE"
    echo "==> sam local invoke $FUNCTION -e $EVENT ($(cat "$ARCH_FILE"), image: $SAM_IMAGE)"
    started=$(date +%s)
    status=0
    invoke "$EVENT" "$ENV_FILE" >"$RUN_DIR/sam-response.json" || status=$?
    echo "==> response ($(( $(date +%s) - started )) s):"
    cat "$RUN_DIR/sam-response.json"
    echo
    # A batch response, or the invocation failed (its error is above).
    python3 -c 'import json, sys; sys.exit(0 if "batchItemFailures" in json.load(open(sys.argv[1])) else 1)' \
      "$RUN_DIR/sam-response.json" 2>/dev/null || status=1
    target/debug/examples/demo_queue show "$QUEUE" "$EXCHANGE.dead-letter"
    exit "$status"
    ;;
esac
