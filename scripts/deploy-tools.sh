#!/usr/bin/env bash
# Installs what the deploy targets need, when it is missing:
#   build     the arm64 target, cargo-lambda and zig (cargo-lambda links with it)
#   validate  cfn-lint
#   sam       the AWS SAM CLI
#   qemu      qemu-user-static and the arm64 glibc, to run the arm64 artefact
set -euo pipefail
pip_install() { python3 -m pip install --quiet --disable-pip-version-check "$@"; }

case "${1:-}" in
  build)
    if ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
      echo "==> rustup target add aarch64-unknown-linux-gnu"
      rustup target add aarch64-unknown-linux-gnu
    fi
    command -v cargo-lambda >/dev/null 2>&1 || { echo "==> installing cargo-lambda (pip)"; pip_install cargo-lambda; }
    if ! command -v zig >/dev/null 2>&1 && ! python3 -m ziglang version >/dev/null 2>&1; then
      echo "==> installing zig (pip install ziglang)"
      pip_install ziglang
    fi
    ;;
  validate)
    # The version the template was checked with; newer ones may add rules.
    command -v cfn-lint >/dev/null 2>&1 || { echo "==> installing cfn-lint (pip)"; pip_install "cfn-lint==1.51.0"; }
    ;;
  qemu)
    if ! command -v qemu-aarch64-static >/dev/null 2>&1 || [ ! -e /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 ]; then
      echo "==> installing qemu-user-static and libc6-arm64-cross (apt)"
      as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
      as_root apt-get update -qq
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static libc6-arm64-cross >/dev/null
    fi
    ;;
  sam)
    command -v sam >/dev/null 2>&1 || { echo "==> installing the AWS SAM CLI (pip install aws-sam-cli)"; pip_install aws-sam-cli; }
    ;;
  *)
    echo "usage: $0 build|validate|sam|qemu" >&2
    exit 2
    ;;
esac
