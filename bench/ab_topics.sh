#!/usr/bin/env bash
# Many topics on one stream (issue 32), over three backends on one SQLite file, ROUNDS times
# (default 2), on a fresh file per round (release builds: `cargo build --release --workspace
# --bins`). The same subscribers, event rate and deliveries, two ways, in the same run:
#   - single-topic streams: 1,000 subscribers of one topic, 100 events/s on it, 30 s;
#   - one stream of many topics: 1,000 subscribers of `<run>.*` (`GET /subscribe?topic=`),
#     100 events/s in all round robin over 100 topics, 30 s.
# Each row: publish-to-delivery latency, the gateway's CPU per delivery, the backend streams
# the gateway holds for the run, and that every subscriber got every event once, in order.
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
# The load tool is one client on one address: lift the gateway's per-client stream cap.
export MAX_SSE_PER_CLIENT=20000 MAX_CONNECTIONS=30000
start() { # backends on ports $1
  rm -f "$DATA"/events.db*; PIDS=()
  for p in $1; do target/release/eventsvc --port "$p" --store "sqlite://$DATA/events.db" >>"$DATA/b$p.log" 2>&1 & PIDS+=($!); wait_port "$p"; done
  target/release/gateway --port 13000 --backends "$(for p in $1; do printf "127.0.0.1:%s," "$p"; done | sed 's/,$//')" >>"$DATA/gw.log" 2>&1 & PIDS+=($!); wait_port 13000; sleep 1
}
stop() { kill "${PIDS[@]}"; wait "${PIDS[@]}" 2>/dev/null || true; PIDS=(); }
bench() { target/release/bench --json --gateway http://127.0.0.1:13000 "$@"; }
row() { # label, report
  python3 -c "
import json, sys; r=json.loads(sys.argv[2]); x=r['extra']; d=x['delivery_ms']
print(f'round $round {sys.argv[1]:34}: {x[\"delivered\"]:7} deliveries, p50 {d[\"p50\"]:.2f} ms, p99 {d[\"p99\"]:.2f} ms, max {d[\"max\"]:.2f} ms; gateway CPU {x[\"gateway\"].get(\"cpu_per_delivery_us\", 0)} µs/delivery, RSS {x[\"gateway\"][\"rss_per_stream_kib\"]} KiB/stream; backend streams {x.get(\"backend_streams_per_gateway\")}; {x[\"complete\"]}, out of order {x[\"out_of_order\"]}', file=sys.stderr)" "$1" "$2"
}
for round in $(seq "${ROUNDS:-2}"); do
  start "15000 15001 15002"
  row "1,000 on one topic, 100/s" "$(bench fanout --subscribers 1000 --topics 1 --rate 100 --duration 30s)"
  row "1,000 on <run>.* of 100 topics, 100/s" "$(bench fanout --subscribers 1000 --topics 100 --pattern --rate 100 --duration 30s)"
  stop
done
