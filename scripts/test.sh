#!/usr/bin/env bash
# The test command: builds cbec, starts a real Apache Kafka broker (KRaft, loopback) from
# the Maven Central cache, runs every test against it, and stops the broker.
#   scripts/test.sh            # everything
#   CBEC_NO_KAFKA=1 scripts/test.sh   # no broker: the Kafka tests say SKIPPED
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/cbec/target}
export CBEC_HS_FILE=${CBEC_HS_FILE:-$(cd .. && pwd)/shared/data/hs/harmonized-system.csv}
scripts/setup.sh
cargo build --workspace --bins --tests
if [ -z "${CBEC_NO_KAFKA:-}" ] && [ -z "${CBEC_TEST_BROKERS:-}" ]; then
  scripts/kafka.sh start
  trap 'scripts/kafka.sh stop' EXIT
  export CBEC_TEST_BROKERS=127.0.0.1:${CBEC_KAFKA_PORT:-19092}
fi
# A hung test fails the run after CBEC_TEST_TIMEOUT seconds (default 25 min) instead of
# holding CI until its own limit; timeout signals the whole process group (cargo and tests).
timeout --kill-after=30 "${CBEC_TEST_TIMEOUT:-1500}" cargo test --workspace
