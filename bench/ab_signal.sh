#!/usr/bin/env bash
# The commit signal between backends on one SQLite file, two builds in the same run, ROUNDS
# times (default 2), a fresh file per system: what waking followers on every commit costs the
# writes, and what it saves the live readers. Three backends and a gateway per build:
#   - creates of one user at 32 writers with one watcher of the user (every commit wakes every
#     backend's follower): writes/s and the backends' CPU per write;
#   - change-to-watcher delivery under a mixed load at 1,000 writes/s (10 users, one watcher each).
#   BEFORE=/path/to/old/release bash bench/ab_signal.sh      (AFTER defaults to target/release)
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
BEFORE=${BEFORE:?a folder of the previous build}; AFTER=${AFTER:-target/release}
start() { # the build in folder $1
  rm -f "$DATA"/events.db*; PIDS=(); BACKEND_PIDS=()
  for p in 15000 15001 15002; do "$1/eventsvc" --port "$p" --store "sqlite://$DATA/events.db" >>"$DATA/b$p.log" 2>&1 & PIDS+=($!); BACKEND_PIDS+=($!); wait_port "$p"; done
  "$1/gateway" --port 13000 --backends 127.0.0.1:15000,127.0.0.1:15001,127.0.0.1:15002 >>"$DATA/gw.log" 2>&1 & PIDS+=($!); wait_port 13000; sleep 1
}
stop() { kill "${PIDS[@]}"; wait "${PIDS[@]}" 2>/dev/null || true; PIDS=(); }
row() { # label, what, bench args
  local c0 c1 report
  c0=$(cpu_ticks "${BACKEND_PIDS[@]}")
  report=$("$AFTER/bench" --json --gateway http://127.0.0.1:13000 "${@:3}")
  c1=$(cpu_ticks "${BACKEND_PIDS[@]}")
  python3 -c "
import json, sys; r=json.loads(sys.argv[3]); l=r['latency_ms']; x=r['extra']
line=f'round $round {sys.argv[1]:6} {sys.argv[2]:32}: {r[\"throughput\"]:7.0f} writes/s, p99 {l[\"p99\"]:.2f} ms; backends {($c1 - $c0) * 10000 / max(r[\"requests\"], 1):.1f} µs CPU/write'
if 'delivery_ms' in x: d=x['delivery_ms']; line+=f'; delivery p50 {d[\"from_write_sent_p50\"]:.2f} ms, p99 {d[\"from_write_sent_p99\"]:.2f} ms'
if 'complete' in x: line+=f'; {x[\"complete\"]}'
print(line)" "$1" "$2" "$report"
}
for round in $(seq "${ROUNDS:-2}"); do
  for build in before after; do
    dir=$BEFORE; [ $build = after ] && dir=$AFTER
    start "$dir"
    row $build "creates of 1 user, one watcher" changes --writes creates --writers 32 --users 1 --watchers 1 --duration 8s
    row $build "mixed 1,000/s, 10 watchers" changes --users 10 --watchers 1 --rate 1000 --duration 15s
    stop
  done
done
