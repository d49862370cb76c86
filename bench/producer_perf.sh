#!/usr/bin/env bash
# Kafka's own kafka-producer-perf-test (the Java 4.4 producer: acks=all, idempotent, at most 5
# requests in flight; batch.size 16 KiB and linger.ms 5 unless PROPS says otherwise), 1 KiB
# records to a 1-partition topic, against one `sidestream serve` on s3s-fs, or against Apache
# Kafka 4.4 (scripts/kafka-reference-broker). Prints the tool's summary line with the agent's
# PUTs and which rule sealed each object (sidestream_upload_seals_total).
#
#   bench/producer_perf.sh LABEL [VAR=value ...]   VAR=value: the agent's environment, e.g.
#                                                  SIDESTREAM_UPLOAD_PUTS_PER_S=20
# Env: N (records, 200000), PROPS (producer properties, space-separated: "batch.size=1048576
# linger.ms=20"), BIN (the server: target/release/sidestream, or scripts/kafka-reference-broker).
# Needs the Kafka 4.4 jars (tests/compat/fetch) and s3s-fs (scripts/test installs both).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
label=${1:?usage: bench/producer_perf.sh LABEL [VAR=value ...]}; shift
BIN=${BIN:-$REPO/target/release/sidestream}
LIB=$("$REPO/tests/compat/fetch" | sed -n 's/^java_lib=//p')
S3S_FS=${S3S_FS_BIN:-$HOME/.cargo/bin/s3s-fs}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
S3_PORT=$(free_port) KAFKA_PORT=$(free_port) METRICS_PORT=$(free_port)
W=$(mktemp -d /tmp/sidestream-producer-perf.XXXXXX)
AG= S3=
trap 'kill $AG $S3 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT
mkdir -p "$W/s3/sidestream"
"$S3S_FS" --host 127.0.0.1 --port "$S3_PORT" --access-key bench --secret-key bench-secret "$W/s3" >"$W/s3.log" 2>&1 &
S3=$!
env SIDESTREAM_OBJECT_STORE_URL=s3://sidestream/perf SIDESTREAM_OBJECT_STORE_ENDPOINT="http://127.0.0.1:$S3_PORT" \
  SIDESTREAM_OBJECT_STORE_REGION=us-east-1 SIDESTREAM_OBJECT_STORE_PATH_STYLE=true \
  SIDESTREAM_OBJECT_STORE_ACCESS_KEY_ID=bench SIDESTREAM_OBJECT_STORE_SECRET_ACCESS_KEY=bench-secret \
  SIDESTREAM_AGENT_LISTEN="127.0.0.1:$KAFKA_PORT" SIDESTREAM_AGENT_DATA_DIR="$W/data" \
  SIDESTREAM_METRICS_LISTEN="127.0.0.1:$METRICS_PORT" "$@" "$BIN" serve >"$W/server.log" 2>&1 &
AG=$!
tool() { java -cp "$LIB/*" "$@"; }
created=0
for _ in $(seq 60); do  # the topic, once the server answers (Kafka takes a few seconds)
  if tool org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" --create --topic perf \
      --partitions 1 >/dev/null 2>&1; then created=1; break; fi
  kill -0 "$AG" 2>/dev/null || { cat "$W/server.log" >&2; exit 1; }
  sleep 1
done
[ "$created" = 1 ] || { echo "producer_perf: could not create the topic" >&2; exit 1; }
metrics() { curl -s "http://127.0.0.1:$METRICS_PORT/metrics" || true; }
puts() { awk '/^sidestream_object_store_http_requests_total\{request="PutObject"/ {s+=$2} END {print s+0}'; }
puts0=$(metrics | puts)
start=$(date +%s.%N)
# shellcheck disable=SC2086  # PROPS is a list of properties
summary=$(tool org.apache.kafka.tools.ProducerPerformance --topic perf --num-records "${N:-200000}" --record-size 1024 \
  --throughput -1 --command-property "bootstrap.servers=127.0.0.1:$KAFKA_PORT" ${PROPS:-} 2>&1 | tail -1)
end=$(date +%s.%N)
m=$(metrics)
seals=$(echo "$m" | sed -n 's/^sidestream_upload_seals_total{reason="\([a-z]*\)"} \([0-9]*\)/\1 \2/p' | tr '\n' ' ')
printf '%s | %s | PUTs %s in %.1f s | seals: %s\n' "$label" "$summary" "$(( $(echo "$m" | puts) - puts0 ))" \
  "$(echo "$end - $start" | bc)" "${seals:-n/a}"
