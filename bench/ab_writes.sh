#!/usr/bin/env bash
# Durable writes against reads (issue 30): GET, create and one-topic publish through the gateway
# at 32 concurrent clients, 8 s each, over three backends on one SQLite file and over one, ROUNDS
# times (default 2), on a fresh file per system (release builds: `cargo build --release
# --workspace --bins`). With OLD=<folder holding another build's `gateway` and `eventsvc`>, each
# system of this build is followed by the same system of that one, the reference in the same
# run. Prints throughput and latency per row, each write's throughput as a share of GET's, and
# the latency of lone writes (200 a second, open loop).
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
start() { # the build in folder $1, backends on ports $2
  rm -f "$DATA"/events.db*; PIDS=()
  for p in $2; do "$1/eventsvc" --port "$p" --store "sqlite://$DATA/events.db" >>"$DATA/b$p.log" 2>&1 & PIDS+=($!); wait_port "$p"; done
  "$1/gateway" --port 13000 --backends "$(for p in $2; do printf "127.0.0.1:%s," "$p"; done | sed 's/,$//')" >>"$DATA/gw.log" 2>&1 & PIDS+=($!); wait_port 13000; sleep 1
}
stop() { kill "${PIDS[@]}"; wait "${PIDS[@]}" 2>/dev/null || true; }
system() { # label, build folder, ports
  start "$2" "$3"
  get=0
  for endpoint in get post publish; do
    report=$(target/release/bench --json --gateway http://127.0.0.1:13000 closed --endpoint "$endpoint" --concurrency 32 --duration 8s)
    get=$(python3 -c "
import json; r=json.loads('''$report'''); l=r['latency_ms']; t=r['throughput']; g=$get or t
import sys; print(f'round $round {\"$1\":22} {\"$endpoint\":8}: {t:7.0f} req/s ({100*t/g:3.0f} % of GET), p50 {l[\"p50\"]:.2f} ms, p99 {l[\"p99\"]:.2f} ms, failed {sum(r[\"errors\"].values())}', file=sys.stderr); print(g)")
  done
  # Lone writes: 200 a second, open loop (a write seldom meets another): the latency group
  # commit must not worsen.
  for endpoint in post publish; do
    report=$(target/release/bench --json --gateway http://127.0.0.1:13000 rate --endpoint "$endpoint" --rate 200 --duration 8s)
    python3 -c "
import json, sys; r=json.loads('''$report'''); l=r['latency_ms']
print(f'round $round {\"$1\":22} lone {\"$endpoint\":8}: p50 {l[\"p50\"]:.2f} ms, p90 {l[\"p90\"]:.2f} ms, p99 {l[\"p99\"]:.2f} ms, failed {sum(r[\"errors\"].values())}', file=sys.stderr)"
  done
  stop
}
for round in $(seq "${ROUNDS:-2}"); do
  for ports in "15000 15001 15002" "15000"; do
    n=$(wc -w <<<"$ports")
    system "this build, $n backends" target/release "$ports"
    if [ -n "${OLD:-}" ]; then system "old build, $n backends" "$OLD" "$ports"; fi
  done
done
