#!/usr/bin/env bash
# SSE fan-out, two gateway builds and nginx + nchan in the same run (issue 34): 10,000
# subscribers of one topic, 10 events/s for 30 s, ROUNDS times (default 2), each round the
# builds in turn then nchan. Every server at its default log level, the gateway on one runtime
# worker (as `eventsys up` runs it here), nchan with one worker.
#   BEFORE=/tmp/ab/before AFTER=target/release bash bench/ab_fanout.sh
# (each folder holds `gateway`, `eventsvc`, `bench`; the load tool is AFTER's.) Each row: the
# server process's CPU per delivery over the whole run (user + system, subscribing and
# publishing included), RSS per open stream (peak minus before, sampled every 0.2 s),
# publish-to-delivery latency, and whether every subscriber got every event once in order.
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
# shellcheck source=bench/peers.sh
source bench/peers.sh
export MAX_SSE_PER_CLIENT=20000 MAX_CONNECTIONS=30000 MAX_SSE_STREAMS=20000
BEFORE=${BEFORE:?a folder of the previous build}; AFTER=${AFTER:-target/release}
LOAD=(fanout --subscribers "${SUBSCRIBERS:-10000}" --rate "${RATE:-10}" --duration "${DURATION:-30s}")
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# `measure LABEL PID BASE_URL [bench flags]`: the load against BASE_URL, PID's CPU and RSS.
measure() {
  local label=$1 pid=$2 url=$3 c0 c1 base peak report sampler; shift 3
  base=$(rss_kib "$pid")
  ( while kill -0 "$pid" 2>/dev/null; do rss_kib "$pid"; sleep 0.2; done ) > "$DATA/rss" &
  sampler=$!
  c0=$(cpu_ticks "$pid")
  report=$("$AFTER/bench" --json --gateway "$url" "${LOAD[@]}" "$@" || true)
  c1=$(cpu_ticks "$pid")
  kill "$sampler"; wait "$sampler" 2>/dev/null || true
  peak=$(sort -n "$DATA/rss" | tail -1)
  python3 -c "
import json, sys
x = json.loads(sys.argv[1])['extra']; d = x['delivery_ms']; n = x['subscribers']; got = max(x['delivered'], 1)
print(f'round $round {\"$label\":14}: CPU {($c1 - $c0) * 10000 / got:5.2f} µs/delivery, RSS {($peak - $base) / n:5.2f} KiB/stream, delivery p50 {d[\"p50\"]:7.2f} ms p99 {d[\"p99\"]:7.2f} ms max {d[\"max\"]:7.2f} ms; {x[\"complete\"]}, out of order {x[\"out_of_order\"]}')" "$report"
}
gateway_row() { # label, build folder
  local pids=()
  rm -f "$DATA"/events.db*
  for p in 15000 15001 15002; do "$2/eventsvc" --port $p --store "sqlite://$DATA/events.db" >>"$DATA/b.log" 2>&1 & pids+=($!); PIDS+=($!); wait_port $p; done
  TOKIO_WORKER_THREADS=1 "$2/gateway" --port 13000 --backends 127.0.0.1:15000,127.0.0.1:15001,127.0.0.1:15002 >>"$DATA/gw.log" 2>&1 & pids+=($!); PIDS+=($!)
  wait_port 13000; sleep 1
  measure "$1" "${pids[3]}" http://127.0.0.1:13000
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
}
nchan_row() {
  local conf="$DATA/nchan" master
  nchan_conf "$conf"
  nginx -p "$conf" -c "$conf/nginx.conf" -g 'daemon off;' & master=$!; PIDS+=($master)
  wait_port 13110
  measure "nginx + nchan" "$(pgrep -P "$master" | head -1)" http://127.0.0.1:13110 --nchan
  kill "$master"; wait "$master" 2>/dev/null || true
}
echo "== $(nproc) cores; load: bench ${LOAD[*]}"
for round in $(seq "${ROUNDS:-2}"); do
  gateway_row before "$BEFORE"
  gateway_row after "$AFTER"
  command -v nginx >/dev/null && nchan_row
done
