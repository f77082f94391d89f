#!/usr/bin/env bash
# RabbitMQ 4 configured as Amazon MQ for RabbitMQ 4.2 is, under Docker, made
# from Debian's packages (no image registry is reachable here): an image
# built once from a debootstrap'ed Debian trixie root (rabbitmq-server 4.0),
# and the nodes the tests use.
#
#   scripts/rabbitmq4.sh image              the image, unless it is cached
#   scripts/rabbitmq4.sh start NODE         one node, idempotent
#   scripts/rabbitmq4.sh cluster            three nodes behind haproxy, idempotent
#   scripts/rabbitmq4.sh stop [NODE|cluster|all]
#   scripts/rabbitmq4.sh ctl NODE ARGS...   rabbitmqctl on a node
#
# NODE        container               AMQP (127.0.0.1)        used by
# main        ef-rabbitmq4            5682                    the broker-backed suites
# faults      ef-rabbitmq4-faults     5673                    tests/integration/faults.rs (restarts, alarms)
# tls         ef-rabbitmq4-tls        5675, TLS 5676          tests/integration/security.rs
# c1 c2 c3    ef-rabbitmq4-c1..3      5690 through haproxy    tests/integration/cluster.rs
#
# Single nodes share the host's network (no proxy between the tests and the
# broker; Erlang distribution on AMQP port + 20000). The cluster's nodes are
# hosts of their own on a bridge network (ef-rabbitmq4, $CLUSTER_SUBNET),
# behind haproxy with the 350 s idle timeouts of Amazon MQ's load balancer.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

STATE=${RABBITMQ4_DIR:-/tmp/event-forwarder-rabbitmq4}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=trixie
CLUSTER_SUBNET=${CLUSTER_SUBNET:-172.29.250.0/24}
CLUSTER_PORT=${CLUSTER_PORT:-5690}
TLS_DIR=${TLS_BROKER_DIR:-/tmp/event-forwarder-tls}

# What goes into the image. Its hash tags the image, so a change here
# builds a new one and an unchanged recipe reuses the cached image.
recipe() {
  echo "suite=$SUITE variant=minbase include=rabbitmq-server"
  # One Erlang cookie for every node made from the image, so that the
  # cluster's nodes accept each other (test brokers only).
  echo "cookie=EVENTFORWARDERTESTCOOKIE"
}
tag=$(recipe | sha256sum | cut -c1-12)
IMAGE=event-forwarder/rabbitmq4:$tag

build_image() {
  docker image inspect "$IMAGE" >/dev/null 2>&1 && return 0
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
  local root
  root=$(mktemp -d /var/tmp/ef-rabbitmq4-root.XXXXXX)
  # shellcheck disable=SC2064
  trap "as_root rm -rf '$root'" EXIT
  echo "==> building $IMAGE: debootstrap $SUITE with rabbitmq-server from $MIRROR (about a minute)"
  if ! as_root debootstrap --variant=minbase --include=rabbitmq-server "$SUITE" "$root" "$MIRROR" \
    >"$root.log" 2>&1; then
    echo "debootstrap failed; the end of $root.log:" >&2
    tail -n 20 "$root.log" >&2
    exit 1
  fi
  local cookie
  cookie=$(recipe | sed -n 's/^cookie=//p')
  printf '%s' "$cookie" | as_root tee "$root/var/lib/rabbitmq/.erlang.cookie" >/dev/null
  as_root chroot "$root" chown rabbitmq:rabbitmq /var/lib/rabbitmq/.erlang.cookie
  as_root chmod 400 "$root/var/lib/rabbitmq/.erlang.cookie"
  as_root rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  as_root tar -C "$root" -c . | docker import \
    --change 'CMD ["rabbitmq-server"]' \
    --change "LABEL org.opencontainers.image.description=RabbitMQ-4-from-Debian-$SUITE" \
    - "$IMAGE" >/dev/null
  rm -f "$root.log"
  echo "==> $IMAGE: $(docker run --rm "$IMAGE" dpkg-query -W -f '${Version}' rabbitmq-server)"
}

# Amazon MQ for RabbitMQ 4.2's defaults, and what the tests need besides.
amazon_mq_conf() {
  cat <<'CONF'
# As Amazon MQ for RabbitMQ 4.2 (and 4.3) configures a broker.
default_queue_type = quorum
max_message_size = 524288
# For the tests: guest from any address, and the log on the console
# (`docker logs`).
loopback_users = none
log.console = true
log.console.level = info
log.file = false
CONF
}

# The deprecated features 4.3 removes, denied as there. Only on nodes the
# tests never restart (main, tls): a 4.0.5 node (or its app) started again
# with queues left by earlier tests can refuse to start with this
# (failed_to_deny_deprecated_features [transient_nonexcl_queues], as in
# rabbitmq-server#12792), and then every later test of that node fails. The
# fault node, whose app the fault tests restart, and the cluster, whose nodes
# the maintenance test restarts, leave it out: their clients are the
# function's, which the main node checks.
deny_deprecated_conf() {
  cat <<'CONF'
deprecated_features.permit.transient_nonexcl_queues = false
deprecated_features.permit.global_qos = false
CONF
}

container_of() {
  case "$1" in
    main) echo ef-rabbitmq4 ;;
    faults) echo ef-rabbitmq4-faults ;;
    tls) echo ef-rabbitmq4-tls ;;
    c1 | c2 | c3) echo "ef-rabbitmq4-$1" ;;
    *)
      echo "unknown node '$1' (main, faults, tls, c1, c2, c3)" >&2
      exit 2
      ;;
  esac
}

ctl() {
  local name
  name=$(container_of "$1")
  shift
  docker exec "$name" rabbitmqctl "$@"
}

# run_container NAME CONFIG_TEXT DOCKER_ARGS...: (re)creates NAME unless it
# runs from this image with this configuration already, then waits for it.
run_container() {
  local name=$1 conf=$2
  shift 2
  local dir=$STATE/$name
  # A UTF-8 locale: rabbitmqctl (also through `docker exec`) reads its
  # arguments by it, and a password with non-ASCII characters must not be
  # mangled.
  set -- -e LANG=C.UTF-8 "$@"
  local want
  want=$(printf '%s\n%s\n%s\n' "$IMAGE" "$conf" "$*" | sha256sum | cut -c1-12)
  local have running
  have=$(docker inspect -f '{{index .Config.Labels "event-forwarder.config"}}' "$name" 2>/dev/null || true)
  running=$(docker inspect -f '{{.State.Running}}' "$name" 2>/dev/null || true)
  if [ "$have" = "$want" ] && [ "$running" = true ]; then return 0; fi
  # A stopped node is made anew rather than started again: test brokers
  # hold nothing worth keeping, and a fresh one boots the same every time.
  docker rm -f "$name" >/dev/null 2>&1 || true
  mkdir -p "$dir"
  printf '%s\n' "$conf" >"$dir/rabbitmq.conf"
  chmod 644 "$dir/rabbitmq.conf"
  docker run -d --name "$name" --label "event-forwarder.config=$want" \
    -v "$dir/rabbitmq.conf:/etc/rabbitmq/rabbitmq.conf:ro" "$@" "$IMAGE" rabbitmq-server >/dev/null
}

# await NAME: until the node in NAME has booted; its log when it does not.
await() {
  local name=$1
  local _
  for _ in $(seq 1 120); do
    if docker exec "$name" rabbitmqctl -q ping >/dev/null 2>&1; then
      docker exec "$name" rabbitmqctl await_startup --timeout 120 >/dev/null && return 0
      break
    fi
    [ "$(docker inspect -f '{{.State.Running}}' "$name" 2>/dev/null)" = true ] || break
    sleep 1
  done
  echo "RabbitMQ 4 node $name did not start; the end of its log:" >&2
  docker logs --tail 40 "$name" >&2 2>&1 || true
  return 1
}

# Erlang nodes on the host's network find each other's ports through the
# host's epmd. One started inside a node's container would end with that
# container and leave the others unreachable by rabbitmqctl, so one runs
# on its own unless the host has one (Debian's RabbitMQ starts it).
ensure_epmd() {
  port_open 127.0.0.1 4369 && return 0
  docker rm -f ef-rabbitmq4-epmd >/dev/null 2>&1 || true
  docker run -d --name ef-rabbitmq4-epmd --network host "$IMAGE" \
    /usr/bin/epmd >/dev/null
  wait_port 127.0.0.1 4369 10 || {
    echo "epmd did not start (docker logs ef-rabbitmq4-epmd)" >&2
    exit 1
  }
}

# A CA and a server certificate for localhost and 127.0.0.1 (so 127.0.0.2
# is a host-name mismatch); made once, kept across runs.
make_certs() {
  local certs=$TLS_DIR/certs
  mkdir -p "$certs"
  [ -s "$certs/server.pem" ] && [ -s "$certs/ca.pem" ] && return 0
  local tmp
  tmp=$(mktemp -d)
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
    -subj "/CN=event-forwarder test CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$tmp/ca.key" -out "$tmp/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=localhost" \
    -keyout "$tmp/server.key" -out "$tmp/server.csr" 2>/dev/null
  cat >"$tmp/server.ext" <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1
EXT
  openssl x509 -req -in "$tmp/server.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" \
    -CAcreateserial -days 3650 -sha256 -extfile "$tmp/server.ext" \
    -out "$tmp/server.pem" 2>/dev/null
  chmod 644 "$tmp"/*.pem "$tmp"/server.key
  mv "$tmp/ca.key" "$tmp/ca.pem" "$tmp/server.key" "$tmp/server.pem" "$certs/"
  rm -rf "$tmp"
}

# start_single NODE: a node on the host's network.
start_single() {
  local node=$1 name port conf extra=()
  name=$(container_of "$node")
  conf=$(amazon_mq_conf)
  case "$node" in
    main)
      port=5682
      conf="$conf
$(deny_deprecated_conf)"
      ;;
    faults) port=5673 ;;
    tls)
      port=5675
      make_certs
      conf="$conf
$(deny_deprecated_conf)
listeners.ssl.default = 5676
ssl_options.cacertfile = $TLS_DIR/certs/ca.pem
ssl_options.certfile = $TLS_DIR/certs/server.pem
ssl_options.keyfile = $TLS_DIR/certs/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false"
      extra=(-v "$TLS_DIR/certs:$TLS_DIR/certs:ro")
      ;;
  esac
  ensure_epmd
  run_container "$name" "$conf" --network host \
    -e "RABBITMQ_NODENAME=ef4-$node@localhost" -e "RABBITMQ_NODE_PORT=$port" \
    -e "RABBITMQ_DIST_PORT=$((port + 20000))" "${extra[@]}"
  await "$name"
}

cluster_ip() { echo "${CLUSTER_SUBNET%.*/*}.$((10 + $1))"; }

start_cluster() {
  command -v haproxy >/dev/null 2>&1 || apt_install haproxy
  if ! docker network inspect ef-rabbitmq4 >/dev/null 2>&1; then
    docker network create --subnet "$CLUSTER_SUBNET" ef-rabbitmq4 >/dev/null
  fi
  local conf i
  conf="$(amazon_mq_conf)
cluster_formation.peer_discovery_backend = classic_config
cluster_formation.classic_config.nodes.1 = rabbit@ef-rabbitmq4-c1
cluster_formation.classic_config.nodes.2 = rabbit@ef-rabbitmq4-c2
cluster_formation.classic_config.nodes.3 = rabbit@ef-rabbitmq4-c3"
  # A cluster with a node down (a test stopped midway) is made anew as a
  # whole: a fresh node beside two that remember it would not rejoin.
  for i in 1 2 3; do
    if [ "$(docker inspect -f '{{.State.Running}}' "ef-rabbitmq4-c$i" 2>/dev/null)" != true ]; then
      docker rm -f ef-rabbitmq4-c1 ef-rabbitmq4-c2 ef-rabbitmq4-c3 >/dev/null 2>&1 || true
      break
    fi
  done
  for i in 1 2 3; do
    run_container "ef-rabbitmq4-c$i" "$conf" --network ef-rabbitmq4 \
      --hostname "ef-rabbitmq4-c$i" --ip "$(cluster_ip "$i")"
  done
  for i in 1 2 3; do await "ef-rabbitmq4-c$i"; done
  local _ running=0
  for _ in $(seq 1 60); do
    running=$(docker exec ef-rabbitmq4-c1 rabbitmqctl -q cluster_status --formatter json 2>/dev/null |
      python3 -c 'import json,sys; print(len(json.load(sys.stdin)["running_nodes"]))' 2>/dev/null || echo 0)
    [ "$running" = 3 ] && break
    sleep 1
  done
  if [ "$running" != 3 ]; then
    echo "the three RabbitMQ 4 nodes did not form a cluster:" >&2
    docker exec ef-rabbitmq4-c1 rabbitmqctl cluster_status >&2 || true
    exit 1
  fi
  start_haproxy
}

# haproxy in front of the cluster, as Amazon MQ's Network Load Balancer is:
# TCP, 350 s idle timeouts, a node that stops accepting connections (drained
# or down) taken out of rotation.
start_haproxy() {
  local dir=$STATE/haproxy
  mkdir -p "$dir"
  {
    cat <<CFG
global
  log stdout format raw local0 notice
  # Its counters (sessions at most at once, per server) for tests/integration/cluster.rs.
  stats socket $dir/admin.sock mode 600 level admin
defaults
  mode tcp
  timeout connect 3s
  timeout client 350s
  timeout server 350s
listen amqp
  bind 127.0.0.1:$CLUSTER_PORT
  balance roundrobin
  default-server check inter 500ms fall 2 rise 2
CFG
    for i in 1 2 3; do echo "  server c$i $(cluster_ip "$i"):5672"; done
  } >"$dir/haproxy.cfg.new"
  if [ -s "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null &&
    cmp -s "$dir/haproxy.cfg.new" "$dir/haproxy.cfg"; then
    rm -f "$dir/haproxy.cfg.new"
    return 0
  fi
  stop_haproxy
  mv "$dir/haproxy.cfg.new" "$dir/haproxy.cfg"
  setsid haproxy -f "$dir/haproxy.cfg" >"$dir/haproxy.log" 2>&1 </dev/null &
  echo $! >"$dir/pid"
  wait_port 127.0.0.1 "$CLUSTER_PORT" 10 || {
    echo "haproxy did not start; see $dir/haproxy.log" >&2
    exit 1
  }
}

stop_haproxy() {
  local pid=$STATE/haproxy/pid
  if [ -s "$pid" ]; then kill "$(cat "$pid")" 2>/dev/null || true; rm -f "$pid"; fi
}

stop() {
  case "${1:-all}" in
    cluster)
      stop_haproxy
      docker rm -f ef-rabbitmq4-c1 ef-rabbitmq4-c2 ef-rabbitmq4-c3 >/dev/null 2>&1 || true
      ;;
    all)
      stop cluster
      docker rm -f ef-rabbitmq4 ef-rabbitmq4-faults ef-rabbitmq4-tls ef-rabbitmq4-epmd \
        >/dev/null 2>&1 || true
      ;;
    *) docker rm -f "$(container_of "$1")" >/dev/null 2>&1 || true ;;
  esac
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
  image)
    scripts/docker.sh
    build_image
    ;;
  start)
    [ $# -eq 1 ] || { echo "usage: $0 start main|faults|tls" >&2; exit 2; }
    scripts/docker.sh
    build_image
    start_single "$1"
    ;;
  cluster)
    scripts/docker.sh
    build_image
    start_cluster
    ;;
  stop)
    docker info >/dev/null 2>&1 || exit 0
    stop "${1:-all}"
    ;;
  ctl)
    [ $# -ge 1 ] || { echo "usage: $0 ctl NODE ARGS..." >&2; exit 2; }
    ctl "$@"
    ;;
  *)
    echo "usage: $0 image | start main|faults|tls | cluster | stop [NODE|cluster|all] | ctl NODE ARGS..." >&2
    exit 2
    ;;
esac
