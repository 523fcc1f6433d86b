#!/usr/bin/env bash
# Start or stop a real Apache Kafka broker (KRaft, single node) on loopback for the tests.
#
#   scripts/kafka.sh start   # resolve Kafka from Maven Central into the cache (once), format, start
#   scripts/kafka.sh stop    # stop it and remove its data
#   scripts/kafka.sh crash   # kill it (SIGKILL), keeping its data; `resume` starts it again
#   scripts/kafka.sh env     # print CBEC_TEST_BROKERS=... for the running broker
#
# Cache: $CBEC_CACHE (default ~/.cache/cbec). Port: $CBEC_KAFKA_PORT (default 19092).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/kafka-pom.xml")
cache=${CBEC_CACHE:-$HOME/.cache/cbec}
libs="$cache/kafka-$version/libs"
port=${CBEC_KAFKA_PORT:-19092}
cport=$((port + 1))
run="$cache/kafka-run-$port"

resolve() {
  if [ -f "$libs/kafka_2.13-$version.jar" ] && [ -f "$libs/.complete" ]; then return; fi
  echo "kafka.sh: resolving org.apache.kafka:kafka_2.13:$version from Maven Central into $libs" >&2
  mkdir -p "$libs"
  mvn -q -B -f "$here/kafka-pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$libs" -DincludeScope=runtime >&2
  touch "$libs/.complete"
}

wait_port() {
  for _ in $(seq 1 120); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.5
  done
  echo "kafka.sh: broker did not open port $port; log follows" >&2
  tail -50 "$run/broker.log" >&2 || true
  return 1
}

# Starts the broker JVM on the formatted storage in $run.
launch() {
  local cp="$libs/*"
  nohup java -Xms256m -Xmx1g -XX:+UseSerialGC -cp "$cp" kafka.Kafka "$run/server.properties" \
    >>"$run/broker.log" 2>&1 &
  echo $! > "$run/pid"
  wait_port
  echo "kafka.sh: Apache Kafka $version up on 127.0.0.1:$port (pid $(cat "$run/pid"))" >&2
}

start() {
  command -v java >/dev/null || { echo "kafka.sh: java is required" >&2; exit 1; }
  resolve
  if [ -f "$run/pid" ] && kill -0 "$(cat "$run/pid")" 2>/dev/null; then
    echo "kafka.sh: broker already running (pid $(cat "$run/pid"))" >&2; wait_port; return
  fi
  rm -rf "$run"; mkdir -p "$run/data"
  cat > "$run/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$run/data
num.partitions=4
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# The tests' lease sessions are short (a standby takes over after 2.5 s of silence).
group.min.session.timeout.ms=500
log.flush.interval.messages=1000000
PROPS
  local cp="$libs/*"
  local id
  id=$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)
  java -cp "$cp" kafka.tools.StorageTool format -t "$id" -c "$run/server.properties" >"$run/format.log" 2>&1
  launch
}

# Kills the broker JVM (SIGKILL: a crash), keeping its data for `resume`.
crash() {
  [ -f "$run/pid" ] || { echo "kafka.sh: no broker on port $port" >&2; exit 1; }
  local pid; pid=$(cat "$run/pid")
  kill -9 "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
}

# Starts the broker again on the data a `crash` left.
resume() {
  [ -f "$run/server.properties" ] || { echo "kafka.sh: nothing to resume on port $port" >&2; exit 1; }
  if kill -0 "$(cat "$run/pid")" 2>/dev/null; then echo "kafka.sh: broker still running" >&2; exit 1; fi
  launch
}

stop() {
  if [ -f "$run/pid" ]; then
    local pid; pid=$(cat "$run/pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -rf "$run"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  crash) crash ;;
  resume) resume ;;
  env) echo "CBEC_TEST_BROKERS=127.0.0.1:$port" ;;
  *) echo "usage: $0 start|stop|crash|resume|env" >&2; exit 2 ;;
esac
