#!/usr/bin/env bash
# A/B of gRPC unary calls through the gateway: another build's gateway (OLD, a folder with its
# `gateway`) against this tree's release build, alternating, twice, in one session; the same
# backends and load tool (this tree's release builds: `cargo build --release --workspace --bins`).
#   OLD=/tmp/decode-build bash bench/ab_grpc.sh
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
OLD=${OLD:?set OLD to a folder holding the gateway binary of the other build}
BE=()
for p in 15000 15001 15002; do target/release/eventsvc --port $p --store "sqlite://$DATA/events.db" >>"$DATA/b$p.log" 2>&1 & BE+=($!); PIDS+=($!); wait_port $p; done
ALL=127.0.0.1:15000,127.0.0.1:15001,127.0.0.1:15002
for round in $(seq "${ROUNDS:-2}"); do
  for build in "$OLD" target/release; do
    "$build/gateway" --port 13000 --backends "$ALL" >>"$DATA/gw.log" 2>&1 & GW=$!; wait_port 13000; sleep 1
    for endpoint in get; do
      g0=$(cpu_ticks $GW); b0=$(cpu_ticks "${BE[@]}")
      report=$(target/release/bench --json --grpc 127.0.0.1:13000 closed --endpoint $endpoint --concurrency 32 --duration 10s)
      g1=$(cpu_ticks $GW); b1=$(cpu_ticks "${BE[@]}")
      python3 -c "
import json; r=json.loads('''$report'''); n=max(r['requests'],1); l=r['latency_ms']
print(f'round $round $build $endpoint: {r[\"throughput\"]:.0f} calls/s, p50 {l[\"p50\"]:.2f} ms, p99 {l[\"p99\"]:.2f} ms, failed {sum(r[\"errors\"].values())}; gateway CPU/call {($g1-$g0)*10000/n:.1f} us, backends {($b1-$b0)*10000/n:.1f} us')"
    done
    kill $GW; wait $GW 2>/dev/null || true
  done
done
