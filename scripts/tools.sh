#!/usr/bin/env bash
# Installs the command-line tools and Python packages the tests and the
# local run use, when they are missing: cargo-lambda (the Lambda runtime
# emulator and invoke endpoint), moto's server (DynamoDB and its stream, SQS,
# Secrets Manager; 5.2.0 or later, whose GetRecords the AWS SDK for Rust can
# parse), pika and opentelemetry-api (Python consumers in the tests: one
# reads the events' trace context with OpenTelemetry's propagator), and
# valgrind and strace (`make bench` counts instructions and system calls per
# event with them).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
if ! command -v cargo-lambda >/dev/null 2>&1; then
  pip_install cargo-lambda
fi
if ! command -v moto_server >/dev/null 2>&1 || ! python3 - <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
major, minor = (int(p) for p in version("moto").split(".")[:2])
sys.exit(0 if (major, minor) >= (5, 2) else 1)
PY
then
  pip_install 'moto[server]>=5.2.0'
fi
if ! python3 -c 'import pika' 2>/dev/null; then
  pip_install 'pika>=1.3'
fi
if ! python3 -c 'import opentelemetry.trace.propagation.tracecontext' 2>/dev/null; then
  pip_install 'opentelemetry-api>=1.20'
fi
if ! command -v valgrind >/dev/null 2>&1 || ! command -v strace >/dev/null 2>&1; then
  apt_install valgrind strace
fi
