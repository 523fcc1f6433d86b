# The few commands a newcomer needs.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/cbec/target

run:        ## set up and run the embedded default (generated workload)
	scripts/setup.sh && cargo run --release -p cbec-pipeline --bin cbec -- run

test:       ## every test, against a real Kafka broker
	scripts/test.sh

lint:
	cargo fmt --all -- --check && cargo clippy --workspace --all-targets -- -D warnings

bench:      ## criterion benches + end-to-end harness (release)
	cargo bench -p cbec-benches

kafka-up:
	scripts/kafka.sh start
kafka-down:
	scripts/kafka.sh stop

.PHONY: run test lint bench kafka-up kafka-down
