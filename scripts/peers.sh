#!/usr/bin/env bash
# Installs the bench's peers (benches/peers: the forwarder a Node team would
# write, on amqplib) from the npm registry, at the versions its lock file
# names, when they are missing. Needs Node.js and npm (Debian's nodejs and
# npm packages when absent).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/../benches/peers"
[ -d node_modules/amqplib ] && exit 0
if ! command -v npm >/dev/null 2>&1; then
  echo "installing Node.js and npm (Debian packages) for the bench's Node peer..."
  apt_install nodejs npm
fi
echo "installing the bench's Node peer (amqplib) with npm ci..."
npm ci --no-audit --no-fund --loglevel=error
