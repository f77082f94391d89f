#!/usr/bin/env python3
"""CargoLambda.toml for the cargo-lambda deploy path (make deploy-cargo-lambda).

  cargo_lambda_config.py CONFIG ENV name        the function's name
  cargo_lambda_config.py CONFIG ENV region      its region ("" for the default)
  cargo_lambda_config.py CONFIG ENV mapping     forwarder-ops deploy-mapping's
                                                arguments, one per line

[ENV.x] is read over [default.x] as cargo lambda reads its contexts
(figment profiles): tables merge key by key, other values are replaced.
STREAM_ARN and ON_FAILURE in the environment override the mapping's
StreamArn and OnFailure (the tests' and `make run`'s tables are new each run).
"""
import json
import os
import sys
import tomllib


def merged(base, over):
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def section(config, env, name):
    return merged(config.get("default", {}).get(name, {}), config.get(env, {}).get(name, {}))


def mapping_args(m):
    """deploy-mapping's flags for the template's property names."""
    stream = os.environ.get("STREAM_ARN") or m.get("StreamArn")
    if not stream:
        sys.exit("no StreamArn in [ENV.mapping] and no STREAM_ARN given")
    args = ["--stream-arn", stream]
    on_failure = os.environ.get("ON_FAILURE") or m.get("OnFailure")
    if on_failure:
        args += ["--on-failure", on_failure]
    args += [
        "--starting-position", m["StartingPosition"],
        "--batch-size", str(m["BatchSize"]),
        "--batching-window", str(m["MaximumBatchingWindowInSeconds"]),
        "--parallelization-factor", str(m["ParallelizationFactor"]),
        "--maximum-retry-attempts", str(m["MaximumRetryAttempts"]),
        "--maximum-record-age", str(m["MaximumRecordAgeInSeconds"]),
    ]
    if "ReportBatchItemFailures" not in m["FunctionResponseTypes"]:
        args.append("--no-report-batch-item-failures")
    if not m["BisectBatchOnFunctionError"]:
        args.append("--no-bisect")
    if m.get("FilterPattern"):
        json.loads(m["FilterPattern"])  # fail here, not in AWS
        args += ["--filter-pattern", m["FilterPattern"]]
    return args


def main():
    path, env, what = sys.argv[1:4]
    with open(path, "rb") as f:
        config = tomllib.load(f)
    if env != "default" and env not in config:
        sys.exit(f"{path} has no [{env}.*] context")
    deploy = section(config, env, "deploy")
    if what == "name":
        print(deploy["name"])
    elif what == "region":
        print(deploy.get("remote_config", {}).get("region", ""))
    elif what == "mapping":
        print("\n".join(mapping_args(section(config, env, "mapping"))))
    else:
        sys.exit(f"unknown query {what}")


if __name__ == "__main__":
    main()
