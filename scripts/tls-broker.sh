#!/usr/bin/env bash
# A third, disposable RabbitMQ node with a TLS listener, for the security
# tests: its own CA and server certificate (made here with openssl), a
# password the tests may change, and nothing shared with the other nodes.
#   scripts/tls-broker.sh start   # idempotent; prints nothing when up
#   scripts/tls-broker.sh stop
# Certificates land in $TLS_BROKER_DIR/certs (default
# /tmp/event-forwarder-tls/certs): ca.pem (trust this), server.pem/.key
# (SAN DNS:localhost, IP:127.0.0.1, so 127.0.0.2 is a host-name mismatch).
set -euo pipefail

# shellcheck source=scripts/rabbitmq-node.sh
. "$(dirname "$0")/rabbitmq-node.sh"
node_env "${TLS_NODE:-ef-tls@localhost}" "${TLS_AMQP_PORT:-5675}" \
  "${TLS_BROKER_DIR:-/tmp/event-forwarder-tls}"
TLS_PORT=${TLS_PORT:-5676}
certs=$base/certs

# A CA and a server certificate it signed; made once, kept across runs.
make_certs() {
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

case "${1:-start}" in
  start)
    make_certs
    start_node "log.file.level = info
loopback_users = none
listeners.ssl.default = $TLS_PORT
ssl_options.cacertfile = $certs/ca.pem
ssl_options.certfile = $certs/server.pem
ssl_options.keyfile = $certs/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false"
    ;;
  stop)
    stop_node
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
