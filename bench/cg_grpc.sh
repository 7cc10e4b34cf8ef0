#!/usr/bin/env bash
# Instructions the gateway executes per gRPC GetEvent, decode build vs forward build, under
# callgrind (counts, not seconds: repeatable on a noisy machine). The difference between the
# 6,000- and 1,000-call runs divided by 5,000 is the cost of a call without start-up.
#   OLD=/tmp/decode-build bash bench/cg_grpc.sh   (after cargo build --release --workspace --bins)
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
OLD=${OLD:?set OLD to a folder holding the gateway binary of the other build}
for p in 15000 15001 15002; do target/release/eventsvc --port $p --store "sqlite://$DATA/events.db" >>"$DATA/b$p.log" 2>&1 & PIDS+=($!); wait_port $p; done
ALL=127.0.0.1:15000,127.0.0.1:15001,127.0.0.1:15002
for build in "$OLD" target/release; do
  for n in 1000 6000; do
    TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$DATA/cg.%p" "$build/gateway" --port 13000 --backends "$ALL" >>"$DATA/gw.log" 2>&1 & GW=$!
    wait_port 13000; sleep 3
    target/release/bench --json --grpc 127.0.0.1:13000 closed --endpoint get --concurrency 8 --requests $n > "$DATA/r.json"
    kill -INT $GW; wait $GW 2>/dev/null || true
    total=$(grep -h "^summary:" "$DATA"/cg.* | awk '{print $2}'); rm -f "$DATA"/cg.*
    echo "$build $n calls: $total instructions"
  done
done
