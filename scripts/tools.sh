#!/usr/bin/env bash
# Installs the command-line tools the tests and the local run use.
set -euo pipefail
if ! command -v cargo-lambda >/dev/null 2>&1; then
  echo "==> installing cargo-lambda (pip)"
  python3 -m pip install --quiet --disable-pip-version-check cargo-lambda
fi
if ! command -v moto_server >/dev/null 2>&1; then
  echo "==> installing moto[server] (pip), a local Secrets Manager for the tests"
  python3 -m pip install --quiet --disable-pip-version-check 'moto[server]'
fi
