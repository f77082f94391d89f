#!/usr/bin/env bash
# `make deploy-cargo-lambda ENV=dev`: the function deployed without
# CloudFormation. `cargo lambda build --release --arm64`, `cargo lambda
# deploy --context $ENV` (the function: CargoLambda.toml's [$ENV.deploy]
# over [default.deploy]), then `forwarder-ops deploy-mapping` (its event
# source mapping, created or updated with [$ENV.mapping] over
# [default.mapping]; a second run changes nothing).
#   ENDPOINT_URL  AWS's API elsewhere (moto in the tests); default: AWS
#   CONFIG        the configuration file (default CargoLambda.toml)
#   BINARY_PATH   deploy this file instead of building (the tests)
#   FUNCTION_NAME another name than [$ENV.deploy]'s (the tests)
#   FORWARDER_OPS the forwarder-ops binary to run (default: built here)
#   STREAM_ARN, ON_FAILURE  override [$ENV.mapping]'s StreamArn, OnFailure
set -euo pipefail
cd "$(dirname "$0")/.."
ENV=${1:?usage: $0 ENV}
CONFIG=${CONFIG:-CargoLambda.toml}
endpoint=()
[ -n "${ENDPOINT_URL:-}" ] && endpoint=(--endpoint-url "$ENDPOINT_URL")

name=${FUNCTION_NAME:-$(python3 scripts/cargo_lambda_config.py "$CONFIG" "$ENV" name)}
region=$(python3 scripts/cargo_lambda_config.py "$CONFIG" "$ENV" region)
mapfile -t mapping < <(python3 scripts/cargo_lambda_config.py "$CONFIG" "$ENV" mapping)
[ ${#mapping[@]} -gt 0 ] || exit 1

binary=()
if [ -n "${BINARY_PATH:-}" ]; then
  command -v cargo-lambda >/dev/null 2>&1 || scripts/tools.sh
  binary=(--binary-path "$BINARY_PATH")
else
  scripts/deploy-tools.sh build
  cargo lambda build --release --arm64
fi
ops=${FORWARDER_OPS:-}
if [ -z "$ops" ]; then
  cargo build --quiet --features ops --bin forwarder-ops
  ops=target/debug/forwarder-ops
fi

echo "==> cargo lambda deploy --context $ENV ($name)"
cargo lambda deploy --global "$CONFIG" --context "$ENV" "${endpoint[@]}" "${binary[@]}" --output-format json "$name"
echo
echo "==> forwarder-ops deploy-mapping (${mapping[*]})"
"$ops" "${endpoint[@]}" ${region:+--region "$region"} \
  --function-name "$name" deploy-mapping "${mapping[@]}"
