#!/usr/bin/env bash
# Updates through the gateway on PostgreSQL (issue 30: updates and deletes in batches): PUT at 32
# concurrent clients (each updating an event of its own) for 8 s, and GET beside it, over three
# backends on a PostgreSQL cluster of this run's own (Debian's, on 13300), a fresh database per
# system, ROUNDS times (default 2). With OLD=<folder holding another build's `gateway` and
# `eventsvc`>, each system of this build is followed by the same system of that one.
# Release builds first: `cargo build --release --workspace --bins`.
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
# shellcheck source=bench/postgres.sh
source bench/postgres.sh
start_postgres 13300
system() { # label, build folder
  local db="changes_$RANDOM$RANDOM" started=()
  "$PGBIN/psql" -h 127.0.0.1 -p 13300 -U postgres -qc "CREATE DATABASE $db"
  for p in 15000 15001 15002; do
    "$2/eventsvc" --port "$p" --store "postgres://postgres@127.0.0.1:13300/$db" >>"$DATA/b$p.log" 2>&1 & started+=($!); PIDS+=($!); wait_port "$p"
  done
  "$2/gateway" --port 13000 --backends 127.0.0.1:15000,127.0.0.1:15001,127.0.0.1:15002 >>"$DATA/gw.log" 2>&1 & started+=($!); PIDS+=($!); wait_port 13000; sleep 1
  for endpoint in get put; do
    report=$(target/release/bench --json --gateway http://127.0.0.1:13000 closed --endpoint "$endpoint" --concurrency 32 --duration 8s)
    python3 -c "
import json; r=json.loads('''$report'''); l=r['latency_ms']
print(f'round $round {\"$1\":12} {\"$endpoint\":4}: {r[\"throughput\"]:7.0f} req/s, p50 {l[\"p50\"]:.2f} ms, p99 {l[\"p99\"]:.2f} ms, failed {sum(r[\"errors\"].values())}')"
  done
  kill "${started[@]}"; wait "${started[@]}" 2>/dev/null || true
}
for round in $(seq "${ROUNDS:-2}"); do
  system "this build" target/release
  if [ -n "${OLD:-}" ]; then system "old build" "$OLD"; fi
done
stop_postgres
