# event-forwarder: the README's commands, one target each.
# `make run` and `make test` install and start what they need (RabbitMQ from
# apt, RabbitMQ 4 under Docker built from Debian's packages, cargo-lambda,
# cfn-lint and moto from pip) on a Debian/Ubuntu machine.

.PHONY: run dev test test-faults test-cluster hunt test-artefact lint fuzz broker broker4 tools bench clean build validate invoke measure deploy deploy-cargo-lambda sam-invoke test-sam

# Event file for `make invoke` and `make sam-invoke`.
EVENT ?=
# samconfig.toml environment for `make deploy`, CargoLambda.toml context for
# `make deploy-cargo-lambda`.
ENV ?= dev
# The SAM CLI sends no usage data from these commands.
export SAM_CLI_TELEMETRY ?= 0

## The real loop, without Docker: RabbitMQ, moto's DynamoDB with a stream and
## SQS, the function under cargo lambda watch and forwarder-ops stream as the
## event source mapping. Writes the sample events as items and shows what
## arrived (queue, dead letters, OnFailure), with the summaries and metrics.
run: broker tools
	scripts/run.sh

## The same loop, left running: put items of your own (the command is
## printed) and watch them arrive. Ctrl-C stops it.
dev: broker tools
	DEV=1 scripts/run.sh

# The integration suites, <test binary>:<module>, in the order `cargo test`
# ran them as binaries of their own. `make test` runs each alone, one after
# the other, so that faults, the cluster and the connection counts never
# overlap (a test binary runs its tests on parallel threads); all run, and
# the target fails if any did. A filter `<module>::` selects that module's
# tests only (tests/integration/main.rs, tests/ops/main.rs).
SUITES = integration:artefact integration:broker integration:cluster integration:concurrency ops:deploy ops:enrich \
	integration:faults integration:hostile integration:hunt integration:lambda_runtime \
	ops:local_stream ops:recovery ops:s3_redrive integration:sam_event integration:sam_local \
	integration:security integration:template

## Every test: the template lint, unit, broker-backed integration, the
## binary under the Lambda runtime API emulator, the local stream loop
## (moto's DynamoDB stream, forwarder-ops stream, cargo lambda watch), both
## deploy paths against moto (cargo lambda deploy + deploy-mapping, and the
## SAM template as a CloudFormation stack), the fault-injection suite with the replay driver, the security tests (TLS,
## moto's Secrets Manager) and hostile input, all on RabbitMQ 4 configured
## as Amazon MQ 4.2 is (nodes under Docker, started as the tests need them:
## one for most suites, one for destructive faults, one with TLS, and a
## three-node cluster behind haproxy for a rolling maintenance); RabbitMQ
## 3.10 for what must hold on 3.x too.
test: validate broker broker4 tools
	@failed=0; \
	cargo test --no-fail-fast --features ops --lib --bins --examples --bench forwarder || failed=1; \
	cargo test -p testkit --features ops --lib || failed=1; \
	for suite in $(SUITES); do \
		echo "==> cargo test --features ops --test $${suite%%:*} $${suite#*:}::"; \
		cargo test --features ops --test $${suite%%:*} $${suite#*:}:: || failed=1; \
	done; \
	cargo test --features ops --doc || failed=1; \
	exit $$failed
	@cat target/replay-report.txt target/replay-report-4-in-flight.txt target/cluster-report.txt

## The fault-injection suite alone, with the replay driver's figures.
## REPLAY_SEED=<n> plays another random fault schedule.
test-faults: broker4
	cargo test --test integration faults:: -- --nocapture

## The rolling maintenance of a three-node RabbitMQ 4 cluster alone.
test-cluster: broker4
	cargo test --test integration cluster:: -- --nocapture

## The stall hunter alone, longer: RECORDS hostile records per set-up from
## SEED through the function to RabbitMQ 4 (tests/integration/hunt.rs;
## `make test` runs 3,000 per set-up with seed 28). A failure prints its
## seed and the smallest record that still fails.
SEED ?= 28
RECORDS ?= 100000
hunt: broker4
	HUNT_SEED=$(SEED) HUNT_RECORDS=$(RECORDS) cargo test --test integration hunt:: -- --nocapture

## Formatting and lints, as CI runs them: the crate (both feature sets), its
## rustdoc, the links between the README and docs/, every variable config.rs
## reads named in docs/CONTRACT.md section 2, then the fuzz targets (their
## own workspace in fuzz/).
lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --features ops -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet
	python3 scripts/check-links.py
	python3 scripts/check-config-vars.py
	cd fuzz && cargo fmt --check && cargo clippy --all-targets -- -D warnings

## libFuzzer on record-to-envelope and on the whole event parse +
## conversion (fuzz/), FUZZ_SECONDS per target (default 60; CI runs this).
fuzz:
	scripts/fuzz.sh

## The benchmarks: forwarder vs the broker ceiling, conversion, cold start,
## memory, size, instructions, CPU and system calls per event of a warm
## function (callgrind, strace; EF_BASELINE_BIN=<a build> adds its figures, and its cold start,
## memory and rates through the binary); then a backfill of 10,000 events through the function (moto,
## cargo lambda watch) against the ceiling in the same run, and by 4 and 16
## workers. The Node peer (benches/peers) is installed by scripts/peers.sh.
bench: broker broker4 tools
	scripts/peers.sh
	cargo bench --features ops

## The Lambda artefact for provided.al2023 on arm64:
## target/lambda/event-forwarder/bootstrap and bootstrap.zip.
build:
	scripts/deploy-tools.sh build
	cargo lambda build --release --arm64
	cargo lambda build --release --arm64 --output-format zip
	@file target/lambda/event-forwarder/bootstrap
	@ls -l target/lambda/event-forwarder/bootstrap target/lambda/event-forwarder/bootstrap.zip

## The arm64 artefact of `make build` under qemu user emulation: starts,
## connects to the local RabbitMQ and forwards a sample batch
## (tests/integration/artefact.rs).
test-artefact: build broker
	scripts/deploy-tools.sh qemu
	cargo test --test integration artefact:: -- --ignored

## cfn-lint on template.yaml (offline), then the SAM CLI's own check with
## its lint; any error or warning fails.
validate:
	scripts/deploy-tools.sh validate
	cfn-lint template.yaml
	scripts/deploy-tools.sh sam
	sam validate --lint

## One event through the function (host build, runtime emulator, local
## RabbitMQ): make invoke EVENT=events/sam-dynamodb-update.json [MAPPING=change]
invoke: broker tools
	scripts/invoke.sh "$(EVENT)"

## Peak RSS, CPU time and batch duration for 1,000-record batches (release build).
measure: broker tools
	scripts/measure.sh

## sam build + sam deploy --config-env $(ENV). Needs AWS credentials and the
## parameters of that environment in samconfig.toml.
deploy:
	scripts/deploy-tools.sh build
	scripts/deploy-tools.sh sam
	sam build
	sam deploy --config-env $(ENV)

## Without CloudFormation: cargo lambda build --release --arm64, cargo lambda
## deploy --context $(ENV) (the function) and forwarder-ops deploy-mapping
## (its event source mapping, created or updated: a second run changes
## nothing), with CargoLambda.toml's [default.*] and [$(ENV).*]. Needs AWS
## credentials, and the role and OnFailure queue that context names
## (docs/operations.md, "Deploy with cargo-lambda").
deploy-cargo-lambda:
	scripts/deploy-cargo-lambda.sh $(ENV)

## sam build, then sam local invoke of the template's function (arm64, under
## qemu) with $(EVENT) (default: sam local generate-event dynamodb update) on
## a stand-in provided.al2023 image built from Debian's packages, against
## the local RabbitMQ (sam-local-env.json); shows what arrived. Installs and
## starts Docker; SAM_IMAGE=aws uses AWS's own image instead.
sam-invoke:
	scripts/sam-invoke.sh "$(EVENT)"

## The insert and poison batches through sam local invoke, checked against
## the library (tests/integration/sam_local.rs).
test-sam: broker
	scripts/sam-invoke.sh prepare
	cargo test --test integration sam_local:: -- --ignored

## Debian's RabbitMQ 3.10 on this host (make run, make invoke).
broker:
	scripts/broker.sh

## RabbitMQ 4.0 configured as Amazon MQ 4.2 (image built once from Debian
## trixie's packages, under Docker): the test suites' broker on 5682.
broker4:
	scripts/rabbitmq4.sh start main

tools:
	scripts/tools.sh

clean:
	scripts/rabbitmq4.sh stop all
	scripts/moto.sh stop
	cargo clean
	rm -rf .run .aws-sam
