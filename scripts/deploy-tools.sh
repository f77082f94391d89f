#!/usr/bin/env bash
# Installs what the deploy targets need, when it is missing:
#   build     the arm64 target, cargo-lambda and zig (cargo-lambda links with it)
#   validate  cfn-lint
#   sam       the AWS SAM CLI, in a virtualenv of its own (it needs a newer
#             cfn-lint and botocore than the other tools here), linked as
#             /usr/local/bin/sam when no `sam` is on the PATH
#   sam-path  prints the path of that SAM CLI (the scripts run this one)
#   qemu      qemu-user-static and the arm64 glibc, to run the arm64 artefact
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

# The version the template, the stand-in image and `make sam-invoke` were
# checked with (it ships the Runtime Interface Emulator for arm64 and x86_64).
SAM_CLI_VERSION=1.170.0
SAM_VENV=${XDG_DATA_HOME:-$HOME/.local/share}/event-forwarder/sam-cli-$SAM_CLI_VERSION

case "${1:-}" in
  build)
    if ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
      echo "==> rustup target add aarch64-unknown-linux-gnu"
      rustup target add aarch64-unknown-linux-gnu
    fi
    command -v cargo-lambda >/dev/null 2>&1 || pip_install cargo-lambda
    if ! command -v zig >/dev/null 2>&1 && ! python3 -m ziglang version >/dev/null 2>&1; then
      pip_install ziglang
    fi
    ;;
  validate)
    # The version the template was checked with; newer ones may add rules.
    command -v cfn-lint >/dev/null 2>&1 || pip_install "cfn-lint==1.51.0"
    ;;
  qemu)
    if ! command -v qemu-aarch64-static >/dev/null 2>&1 || [ ! -e /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 ]; then
      apt_install qemu-user-static libc6-arm64-cross
    fi
    ;;
  sam)
    if [ ! -x "$SAM_VENV/bin/sam" ]; then
      echo "==> installing the AWS SAM CLI $SAM_CLI_VERSION (pip, into $SAM_VENV)"
      # Debian's own python3 needs python3-venv for `python3 -m venv`.
      python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
      rm -rf "$SAM_VENV"
      python3 -m venv "$SAM_VENV"
      "$SAM_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "aws-sam-cli==$SAM_CLI_VERSION"
    fi
    if ! command -v sam >/dev/null 2>&1; then
      as_root ln -sf "$SAM_VENV/bin/sam" /usr/local/bin/sam
    fi
    ;;
  sam-path)
    echo "$SAM_VENV/bin/sam"
    ;;
  *)
    echo "usage: $0 build|validate|sam|sam-path|qemu" >&2
    exit 2
    ;;
esac
