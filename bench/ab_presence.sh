#!/usr/bin/env bash
# Presence (issue 33), ROUNDS times (default 2), release builds (`cargo build --release
# --workspace --bins`): two backends on one SQLite file and two gateways, token mode (HS256),
# defaults otherwise (reports every 1 s, debounce 5 s, TTL 15 s). 10,000 SSE subscribers of one
# topic, alternating between the gateways, spread over 1,000 subjects:
#   - presence query latency at steady state, full (1,000 subjects) and `?count=1`;
#   - the store writes presence costs per second at steady state (the gateways' reports);
#   - join and leave delivery latency, 20 subjects coming and going one at a time (a leave's
#     figure is after the 5 s debounce).
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
# The load tool is one client on one address: lift the gateway's per-client stream cap.
export MAX_SSE_PER_CLIENT=20000 MAX_CONNECTIONS=30000
SECRET="$DATA/secret"
head -c 48 /dev/urandom | base64 > "$SECRET"
AUTH=(--auth jwt --jwt-secret-file "$SECRET")
start() {
  rm -f "$DATA"/events.db*; PIDS=()
  for p in 15000 15001; do target/release/eventsvc --port "$p" --store "sqlite://$DATA/events.db" "${AUTH[@]}" >>"$DATA/b$p.log" 2>&1 & PIDS+=($!); wait_port "$p"; done
  for p in 13000 13001; do target/release/gateway --port "$p" --backends 127.0.0.1:15000,127.0.0.1:15001 "${AUTH[@]}" >>"$DATA/gw$p.log" 2>&1 & PIDS+=($!); wait_port "$p"; done
  sleep 1
}
stop() { kill "${PIDS[@]}"; wait "${PIDS[@]}" 2>/dev/null || true; PIDS=(); }
for round in $(seq "${ROUNDS:-2}"); do
  start
  report=$(target/release/bench --json --gateway http://127.0.0.1:13000 presence --also http://127.0.0.1:13001 \
    --subscribers 10000 --subjects 1000 --jwt-secret-file "$SECRET" --queries 200 --changes 20 --duration 20s)
  python3 -c "
import json, sys; r=json.loads(sys.argv[1]); x=r['extra']; q=x['query_ms']
print(f'round $round: {x[\"subscribers\"]} subscribers via {x[\"gateways\"]} gateways, {x[\"subjects\"]} subjects (listed {x[\"subjects_listed\"]}); counted {x[\"counted_after_s\"]} s after the last opened; query full p50 {q[\"full_p50\"]} ms p99 {q[\"full_p99\"]} ms, count p50 {q[\"count_p50\"]} ms p99 {q[\"count_p99\"]} ms; store writes {x[\"store_writes_per_s\"]}/s; join p50 {x[\"join_ms\"][\"p50\"]} ms p99 {x[\"join_ms\"][\"p99\"]} ms; leave after the debounce p50 {x[\"leave_after_debounce_ms\"][\"p50\"]} ms p99 {x[\"leave_after_debounce_ms\"][\"p99\"]} ms; failed {sum(r[\"errors\"].values())}', file=sys.stderr)" "$report"
  stop
done
