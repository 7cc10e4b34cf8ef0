#!/usr/bin/env bash
# Users' change feeds (issue 31), over three backends on one SQLite file, ROUNDS times (default
# 2), on a fresh file per system (release builds: `cargo build --release --workspace --bins`):
#   - what recording a change costs a create: creates of one user at 32 concurrent clients for
#     8 s (`bench closed --endpoint post`), this build against OLD=<folder holding a build from
#     before change feeds: its `gateway` and `eventsvc`>, the reference in the same run;
#   - what a watcher costs: the same creates (`bench changes --writes creates --writers 32
#     --users 1`) with no watcher and with one on the user;
#   - change-to-watcher delivery under a mixed load at 1,000 writes/s (creates, updates,
#     deletes of 10 users' events, one watcher each, 30 s): latency from the write being sent to
#     its watcher, and that every watcher got its user's every change once, in order.
# With PG=1, the delivery row once more on PostgreSQL (a cluster of the run's own, a fresh
# database per round).
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
# shellcheck source=bench/postgres.sh
source bench/postgres.sh
STORE=sqlite
start() { # the build in folder $1, backends on ports $2
  rm -f "$DATA"/events.db*; PIDS=("${PG_PIDS[@]}")
  for p in $2; do "$1/eventsvc" --port "$p" --store "$(store_uri)" >>"$DATA/b$p.log" 2>&1 & PIDS+=($!); wait_port "$p"; done
  "$1/gateway" --port 13000 --backends "$(for p in $2; do printf "127.0.0.1:%s," "$p"; done | sed 's/,$//')" >>"$DATA/gw.log" 2>&1 & PIDS+=($!); wait_port 13000; sleep 1
}
store_uri() { if [ "$STORE" = postgres ]; then echo "postgres://postgres@127.0.0.1:13300/feeds$round"; else echo "sqlite://$DATA/events.db"; fi; }
stop() { local servers=("${PIDS[@]:${#PG_PIDS[@]}}"); kill "${servers[@]}"; wait "${servers[@]}" 2>/dev/null || true; }
PG_PIDS=()
if [ -n "${PG:-}" ]; then start_postgres 13300; PG_PIDS=("${PIDS[@]}"); fi
bench() { target/release/bench --json --gateway http://127.0.0.1:13000 "$@"; }
row() { # label, what, report
  python3 -c "
import json, sys; r=json.loads(sys.argv[3]); l=r['latency_ms']; x=r['extra']
line=f'round $round {sys.argv[1]:28} {sys.argv[2]:34}: {r[\"throughput\"]:7.0f} writes/s, p50 {l[\"p50\"]:.2f} ms, p99 {l[\"p99\"]:.2f} ms, failed {sum(r[\"errors\"].values())}'
if 'delivery_ms' in x: d=x['delivery_ms']; line+=f'; delivery p50 {d[\"from_write_sent_p50\"]:.2f} ms, p99 {d[\"from_write_sent_p99\"]:.2f} ms, max {d[\"max\"]:.2f} ms'
if 'complete' in x: line+=f'; {x[\"complete\"]} ({x[\"changes_recorded\"]} changes)'
if 'gateway' in x: line+=f'; gateway CPU {x[\"gateway\"].get(\"cpu_per_write_us\", 0)} µs/write'
print(line, file=sys.stderr)" "$1" "$2" "$3"
}
for round in $(seq "${ROUNDS:-2}"); do
  ports="15000 15001 15002"
  start target/release "$ports"
  row "this build" "creates (closed, 32)" "$(bench closed --endpoint post --concurrency 32 --duration 8s)"
  row "this build" "creates, no watcher" "$(bench changes --writes creates --writers 32 --users 1 --watchers 0 --duration 8s)"
  row "this build" "creates, one watcher" "$(bench changes --writes creates --writers 32 --users 1 --watchers 1 --duration 8s)"
  row "this build" "mixed 1,000/s, 10 users × 1 watcher" "$(bench changes --users 10 --watchers 1 --rate 1000 --duration 30s)"
  stop
  if [ -n "${OLD:-}" ]; then
    start "$OLD" "$ports"
    row "old build (no change feeds)" "creates (closed, 32)" "$(bench closed --endpoint post --concurrency 32 --duration 8s)"
    stop
  fi
  if [ -n "${PG:-}" ]; then
    "$PGBIN/psql" -h 127.0.0.1 -p 13300 -U postgres -qc "CREATE DATABASE feeds$round"
    STORE=postgres; start target/release "$ports"
    row "this build, PostgreSQL" "mixed 1,000/s, 10 users × 1 watcher" "$(bench changes --users 10 --watchers 1 --rate 1000 --duration 30s)"
    stop; STORE=sqlite
  fi
done
if [ -n "${PG:-}" ]; then stop_postgres; fi
