#!/usr/bin/env bash
# The cost of an Idempotency-Key on a create: POST /events at 16 concurrent clients for 10 s
# (saturating) and at 1,000 a second for 10 s (open loop), each without a key and with a fresh
# key per request, alternating, ROUNDS times (default 3), in one session, through one gateway
# over three backends on one SQLite file (release builds: `cargo build --release --workspace
# --bins`). With OLD=<folder holding another build's `gateway` and `eventsvc`>, each round also
# runs that build without a key, as the reference. Prints throughput, latency and the CPU time
# the gateway and the backends spent per request.
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
PORTS=${PORTS:-15000 15001 15002}
start() { # the build in folder $1, on a fresh store
  rm -f "$DATA"/events.db*; BE=(); PIDS=()
  for p in $PORTS; do "$1/eventsvc" --port "$p" --store "sqlite://$DATA/events.db" >>"$DATA/b$p.log" 2>&1 & BE+=($!); PIDS+=($!); wait_port "$p"; done
  "$1/gateway" --port 13000 --backends "$(for p in $PORTS; do printf "127.0.0.1:%s," "$p"; done | sed 's/,$//')" >>"$DATA/gw.log" 2>&1 & GW=$!; PIDS+=($GW); wait_port 13000; sleep 1
}
stop() { kill "${PIDS[@]}"; wait "${PIDS[@]}" 2>/dev/null || true; }
measure() { # label, bench flags, load
  g0=$(cpu_ticks $GW); b0=$(cpu_ticks "${BE[@]}")
  # shellcheck disable=SC2086
  report=$(target/release/bench --json --gateway http://127.0.0.1:13000 $2 $3)
  g1=$(cpu_ticks $GW); b1=$(cpu_ticks "${BE[@]}")
  python3 -c "
import json; r=json.loads('''$report'''); n=max(r['requests'],1); l=r['latency_ms']
print(f'round $round {\"$3\".split()[0]:6} {\"$1\":16}: {r[\"throughput\"]:.0f} creates/s, p50 {l[\"p50\"]:.2f} ms, p99 {l[\"p99\"]:.2f} ms, failed {sum(r[\"errors\"].values())}; CPU/create gateway {($g1-$g0)*10000/n:.1f} us, backends {($b1-$b0)*10000/n:.1f} us')"
}
for round in $(seq "${ROUNDS:-3}"); do
  for load in "closed --endpoint post --concurrency 16 --duration 10s" "rate --endpoint post --rate 1000 --duration 10s"; do
    if [ -n "${OLD:-}" ]; then start "$OLD"; measure "old build, no key" "" "$load"; stop; fi
    start target/release
    measure "no key" "" "$load"
    measure "with key" "--idempotency-keys" "$load"
    stop
  done
done
