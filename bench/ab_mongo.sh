#!/usr/bin/env bash
# Two builds of the servers against one MongoDB (SecantusDB) in one run, alternating, twice each:
# 32 clients publishing on one topic through the gateway over three backends.
#   BEFORE=/path/to/old/release bash bench/ab_mongo.sh   [ENDPOINTS="publish post put"]
# (BEFORE: a folder with the previous build's `eventsvc` and `gateway`; needs `secantusd-py`.)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
: "${BEFORE:?set BEFORE to the release folder of the previous build}"
ENDPOINTS=${ENDPOINTS:-publish}
DATA=$(mktemp -d); PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DATA"' EXIT
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
secantusd-py --port 13200 --storage-path "$DATA/mongo" --sync-on-commit >>"$DATA/mongo.log" 2>&1 &
PIDS+=($!); wait_port 13200
for round in 1 2; do
  for BIN in "$BEFORE" target/release; do
    BACKENDS=()
    # A database per run, shared by its backends: each run starts from an empty topic.
    DB="ab_${round}_$RANDOM"
    for port in 15000 15001 15002; do
      "$BIN/eventsvc" --port $port --store "mongodb://127.0.0.1:13200/$DB?replicaSet=secantus" >>"$DATA/backends.log" 2>&1 &
      BACKENDS+=($!); wait_port $port
    done
    "$BIN/gateway" --port 13000 --backends 127.0.0.1:15000,127.0.0.1:15001,127.0.0.1:15002 >>"$DATA/gateway.log" 2>&1 &
    GATEWAY=$!; wait_port 13000; sleep 1
    echo "== $BIN, round $round"
    for endpoint in $ENDPOINTS; do
      target/release/bench --gateway http://127.0.0.1:13000 closed --endpoint "$endpoint" --concurrency 32 --duration 10s | grep -E "mode|requests|throughput|latency"
    done
    kill "$GATEWAY" "${BACKENDS[@]}"; wait "$GATEWAY" "${BACKENDS[@]}" 2>/dev/null || true
  done
done
