#!/usr/bin/env bash
# Profiles a proxied GET: three backends and a gateway from BIN (default target/release) on
# loopback ports 15200-15202 and 13200, `wrk -t1 -c32` on one event for 12 s, `perf record`
# (frame pointers when the binaries have them, CG=fp; DWARF otherwise) of the gateway and one
# backend for 4 s of it, then folded stacks and flamegraphs (inferno: `cargo install inferno`).
#   RUSTFLAGS="-C force-frame-pointers=yes" CARGO_TARGET_DIR=target/fp cargo build --release -p gateway -p eventsvc
#   CG=fp bash bench/profile.sh target/fp/release /tmp/after
# Writes OUT.gw.svg, OUT.be.svg, OUT.gw.folded, OUT.be.folded and prints the gateway's CPU per
# request over the whole run (perf's own cost included).
set -euo pipefail
BIN=${1:-target/release}; OUT=${2:-/tmp/profile}
ulimit -n "$(ulimit -Hn)"
unset RUST_LOG
D=$(mktemp -d); P=()
trap 'kill "${P[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$D"' EXIT
for port in 15200 15201 15202; do "$BIN/eventsvc" --port $port --store "sqlite://$D/e.db" >>"$D/log" 2>&1 & P+=($!); done
sleep 1
"$BIN/gateway" --port 13200 --backends 127.0.0.1:15200,127.0.0.1:15201,127.0.0.1:15202 >>"$D/log" 2>&1 & G=$!; P+=($G)
sleep 1.5
id=$(curl -sf -X POST localhost:13200/events -H 'content-type: application/json' -d '{"userId":"wrk","title":"wrk","description":"profiled"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
g0=$(awk '{print $14+$15}' /proc/$G/stat)
wrk -t1 -c32 -d12s "http://127.0.0.1:13200/events/$id?userId=wrk" > "$D/wrk" & W=$!
sleep 3
perf record -F 499 --call-graph "${CG:-dwarf,16384}" -o "$D/gw.data" -p "$G" -- sleep 4 >/dev/null 2>&1 &
perf record -F 499 --call-graph "${CG:-dwarf,16384}" -o "$D/be.data" -p "${P[0]}" -- sleep 4 >/dev/null 2>&1
wait $W
g1=$(awk '{print $14+$15}' /proc/$G/stat)
n=$(awk '/requests in/ {print $1}' "$D/wrk")
grep Requests/sec "$D/wrk"
python3 -c "print('gateway CPU per request:', round(($g1 - $g0) * 10000 / $n, 1), 'µs')"
for k in gw be; do
  perf script -i "$D/$k.data" 2>/dev/null | inferno-collapse-perf 2>/dev/null > "$OUT.$k.folded"
  inferno-flamegraph < "$OUT.$k.folded" > "$OUT.$k.svg"
done
