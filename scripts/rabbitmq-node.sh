# Sourced by broker.sh, fault-broker.sh and tls-broker.sh: starting a
# RabbitMQ node and waiting for it.

# wait_for_node LOG_DIR CTL...: waits until the node that CTL (a rabbitmqctl
# command line, with -n and sudo as needed) talks to has booted. `rabbitmq-server
# -detached` returns before the node registers with epmd, and `rabbitmqctl
# await_startup` gives up at once on a node it cannot see yet (this failed
# CI on a fresh machine), so ping until the node answers, then await the
# boot. On failure, prints the end of the node's log and returns 1.
wait_for_node() {
  local log_dir=$1
  shift
  local _
  for _ in $(seq 1 120); do
    if "$@" -q ping >/dev/null 2>&1; then
      if "$@" await_startup --timeout 120 >/dev/null; then
        return 0
      fi
      break
    fi
    sleep 1
  done
  echo "RabbitMQ node did not start; the end of its logs ($log_dir):" >&2
  tail -n 40 "$log_dir"/*.log >&2 2>/dev/null || true
  return 1
}

# node_env NAME AMQP_PORT DIR: a disposable node of its own, beside the main
# broker: every file under DIR (set as $base), distribution port
# AMQP_PORT + 20000.
node_env() {
  export RABBITMQ_NODENAME=$1
  export RABBITMQ_NODE_PORT=$2
  export RABBITMQ_DIST_PORT=$(($2 + 20000))
  base=$3
  export RABBITMQ_MNESIA_BASE=$base/mnesia
  export RABBITMQ_LOG_BASE=$base/log
  export RABBITMQ_PID_FILE=$base/pid
  export RABBITMQ_ENABLED_PLUGINS_FILE=$base/enabled_plugins
  export RABBITMQ_CONFIG_FILE=$base/rabbitmq
  # Without this the node would read the main broker's environment file.
  export RABBITMQ_CONF_ENV_FILE=$base/rabbitmq-env.conf
}

ctl() { rabbitmqctl -n "$RABBITMQ_NODENAME" "$@"; }

# start_node CONFIG: starts the node of node_env with CONFIG as its
# rabbitmq.conf (no plugins) unless it already runs, and waits for it.
start_node() {
  if ctl -q status >/dev/null 2>&1; then return 0; fi
  mkdir -p "$base/log"
  : >"$RABBITMQ_CONF_ENV_FILE"
  echo '[].' >"$RABBITMQ_ENABLED_PLUGINS_FILE"
  printf '%s\n' "$1" >"$RABBITMQ_CONFIG_FILE.conf"
  # Debian's wrappers run the node as the rabbitmq user.
  if id rabbitmq >/dev/null 2>&1; then chown -R rabbitmq:rabbitmq "$base"; fi
  (cd "$base" && rabbitmq-server -detached >/dev/null 2>&1) || true
  wait_for_node "$RABBITMQ_LOG_BASE" ctl
}

stop_node() { ctl -q stop >/dev/null 2>&1 || true; }
