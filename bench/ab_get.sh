#!/usr/bin/env bash
# The proxied GET, two gateway builds and nginx `least_conn` in the same run (issue 34): one
# worker each (the gateway with TOKIO_WORKER_THREADS=1, as `eventsys up` runs it here; nginx
# with worker_processes 1 over three trivial upstreams), `wrk -t1 -c32 -d10s` on one event,
# ROUNDS times (default 2), each round before, after, nginx.
#   BEFORE=/tmp/ab/before AFTER=target/release bash bench/ab_get.sh
# (each folder holds `gateway` and `eventsvc`; the backends are AFTER's.) Each row: req/s,
# p50/p99, and the front process's CPU per request (user + system over the run / requests).
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
# shellcheck source=bench/peers.sh
source bench/peers.sh
BEFORE=${BEFORE:?a folder of the previous build}; AFTER=${AFTER:-target/release}
for p in 15000 15001 15002; do "$AFTER/eventsvc" --port $p --store "sqlite://$DATA/events.db" >>"$DATA/b.log" 2>&1 & PIDS+=($!); wait_port $p; done
upstreams_conf "$DATA/up"
front_conf "$DATA/front" 1
nginx -p "$DATA/up" -c "$DATA/up/nginx.conf" -g 'daemon off;' & PIDS+=($!); wait_port 13101
# `row LABEL PIDS URL`: wrk on URL, the CPU of PIDS.
row() {
  local c0 c1 out n
  c0=$(cpu_ticks $2); out=$(wrk -t1 -c32 -d10s --latency "$3"); c1=$(cpu_ticks $2)
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  python3 -c "
import re, sys
o = sys.argv[1]; rps = re.search(r'Requests/sec:\s+([\d.]+)', o).group(1)
p = dict(re.findall(r'^\s+(50|99)%\s+(\S+)', o, re.M))
print(f'round $round {\"$1\":8}: {float(rps):8.0f} req/s, p50 {p[\"50\"]:>8}, p99 {p[\"99\"]:>8}; CPU {($c1 - $c0) * 10000 / max($n, 1):5.1f} µs per GET')" "$out"
}
id=""
for round in $(seq "${ROUNDS:-2}"); do
  for build in before after; do
    dir=$BEFORE; [ $build = after ] && dir=$AFTER
    TOKIO_WORKER_THREADS=1 "$dir/gateway" --port 13000 --backends 127.0.0.1:15000,127.0.0.1:15001,127.0.0.1:15002 >>"$DATA/gw.log" 2>&1 & gw=$!; PIDS+=($gw)
    wait_port 13000; sleep 1
    [ -n "$id" ] || id=$(curl -sf -X POST http://127.0.0.1:13000/events -H 'content-type: application/json' -d '{"userId":"wrk","title":"wrk","description":"one event read by wrk"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    row $build "$gw" "http://127.0.0.1:13000/events/$id?userId=wrk"
    kill $gw; wait $gw 2>/dev/null || true
  done
  nginx -p "$DATA/front" -c "$DATA/front/nginx.conf" -g 'daemon off;' & front=$!; PIDS+=($front); wait_port 13100; sleep 0.5
  row nginx "$front $(pgrep -P $front | tr '\n' ' ')" "http://127.0.0.1:13100/events/$id?userId=wrk"
  kill $front; wait $front 2>/dev/null || true
done
