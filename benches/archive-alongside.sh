#!/usr/bin/env bash
# Does `cbec archive` slow the pipeline down when both run on the same machine, and does it
# keep up? One pair of runs through a broker (CBEC_BENCH_BROKERS, default 127.0.0.1:19092):
#   1. a generated story of ORDERS orders (default 117000) produced to fresh topics;
#      `cbec run --exit-when-idle` alone, then `cbec archive --exit-when-idle` alone;
#   2. the same story to other fresh topics; `cbec archive` started first, then
#      `cbec run --exit-when-idle` beside it; how long after the run the archiver has read
#      every record the first archive read (its metrics endpoint counts them).
# Release binary: cargo build --release -p cbec-pipeline --bin cbec (CARGO_TARGET_DIR honoured).
# Run: benches/archive-alongside.sh [ORDERS]
set -euo pipefail
brokers=${CBEC_BENCH_BROKERS:-127.0.0.1:19092}
orders=${1:-117000}
bin=${CARGO_TARGET_DIR:-$(dirname "$0")/../target}/release/cbec
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
metrics=127.0.0.1:19899

now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }

# A configuration whose topics are all new: prefix $1.
setup() {
  local p=$1 d=$work/$1
  mkdir -p "$d"
  {
    echo "brokers = \"$brokers\""
    echo "output_prefix = \"$p.\""
    echo "group_id = \"$p.g\""
    echo "checkpoint_dir = \"$d/checkpoints\""
    echo "[input_topics]"
    for t in goods orders lists waybills payments arrivals scans seals departures controls; do
      echo "$t = \"$p.$t\""
    done
  } >"$d/cbec.toml"
  "$bin" gen --config "$d/cbec.toml" --brokers "$brokers" --orders "$orders" --seed 11 2>/dev/null
}

# Records the archiver has read (written and skipped as produced twice).
read_so_far() {
  curl -s "http://$metrics/metrics" | awk '/^cbec_archive_(records|duplicates)_total/ {s += $2} END {print s + 0}'
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%d GiB", $2 / 1048576}' /proc/meminfo); story of $orders orders; broker $brokers"
echo "command: benches/archive-alongside.sh $orders"

a=alone$$
setup "$a"
t=$(now)
"$bin" run --config "$work/$a/cbec.toml" --exit-when-idle --metrics-addr "" --output "$work/$a/out" >/dev/null 2>"$work/$a/run.log"
echo "alone: cbec run $(since "$t") s"
t=$(now)
report=$("$bin" archive --config "$work/$a/cbec.toml" --output "$work/$a/archive" --exit-when-idle --metrics-addr "" 2>"$work/$a/archive.log")
echo "alone: cbec archive $(since "$t") s: $report"
written=$(echo "$report" | sed -E 's/^archived ([0-9]+) records.*/\1/')
twice=$(echo "$report" | sed -E 's/.*; ([0-9]+) produced twice.*/\1/')
total=$((written + twice))

b=beside$$
setup "$b"
"$bin" archive --config "$work/$b/cbec.toml" --output "$work/$b/archive" --metrics-addr "$metrics" \
  >"$work/$b/archive.out" 2>"$work/$b/archive.log" &
archiver=$!
t=$(now)
"$bin" run --config "$work/$b/cbec.toml" --exit-when-idle --metrics-addr "" --output "$work/$b/out" >/dev/null 2>"$work/$b/run.log"
echo "beside the archiver: cbec run $(since "$t") s"
t=$(now)
until [ "$(read_so_far)" -ge "$total" ]; do
  sleep 0.01
done
echo "beside: the archiver had read all $total records $(since "$t") s after the run ended"
kill -TERM "$archiver"
wait "$archiver"
echo "beside: cbec archive: $(cat "$work/$b/archive.out")"
