#!/usr/bin/env bash
# Runs every comparison in BENCHMARKS.md on this machine, side by side in one run, against
# release builds on loopback ports 13000 and 15000-15003 (stops what it starts). Prints the
# figures as it goes; each `bench` line is the exact command behind one row.
#   bash bench/benchmarks.sh            (about 3 minutes after the build)
# To compare two builds of the servers in one session with the same load tool:
#   SERVERS=/path/to/old/release SECTIONS="1 2" bash bench/benchmarks.sh
# (SERVERS: a folder with `eventsvc` and `gateway`; SECTIONS: which of 1-5 to run.)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
# 10,000 SSE streams need 10,000+ descriptors in the bench client and in the gateway.
ulimit -n "$(ulimit -Hn)"
BIN=${SERVERS:-target/release}
BENCH=target/release/bench
SECTIONS=${SECTIONS:-1 2 3 4 5}
section() { [[ " $SECTIONS " == *" $1 "* ]]; }
DATA=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DATA"' EXIT
export RUST_LOG=warn
# The load tool is one client on one address: lift the gateway's per-client and connection caps
# (builds before issue 12 ignore these).
export MAX_SSE_PER_CLIENT=20000 MAX_CONNECTIONS=30000

wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
BACKENDS=()
backend() { "$BIN/eventsvc" --port "$1" --store "sqlite://$DATA/events.db" "${@:2}" & BACKEND=$!; PIDS+=($BACKEND); BACKENDS+=($BACKEND); wait_port "$1"; }
stop_backends() { kill "${BACKENDS[@]}" 2>/dev/null || true; for pid in "${BACKENDS[@]}"; do wait "$pid" 2>/dev/null || true; done; BACKENDS=(); }
gateway() { "$BIN/gateway" --port 13000 --backends "$1" "${@:2}" & GATEWAY=$!; PIDS+=($GATEWAY); wait_port 13000; sleep 1; }
stop_gateway() { kill "$GATEWAY"; wait "$GATEWAY" 2>/dev/null || true; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# Each bench command is printed as run, with any token redacted.
run() { echo "\$ bench $*" | sed -E 's/(--token )[^ ]+/\1$TOKEN/' >&2; "$BENCH" --json "$@"; }
summary() { python3 -c '
import json, sys
r = json.load(sys.stdin)
l = r["latency_ms"]; total = sum(r["backends"].values()) or 1
spread = ", ".join(f"{b} {n * 100 / total:.1f}%" for b, n in sorted(r["backends"].items()))
print(f"{r['"'"'mode'"'"']}: {r['"'"'requests'"'"']} requests, {r['"'"'throughput'"'"']:.0f} req/s, p50 {l['"'"'p50'"'"']:.2f} ms, p99 {l['"'"'p99'"'"']:.2f} ms, max {l['"'"'max'"'"']:.2f} ms, failed {sum(r['"'"'errors'"'"'].values())}; {spread}")
for k, v in r["extra"].items(): print(f"  {k}: {v}")
'; }

ALL=127.0.0.1:15000,127.0.0.1:15001,127.0.0.1:15002
echo "== machine: open files $(ulimit -n); $(nproc) cores, $(awk '/MemTotal/ {print int($2/1048576)}' /proc/meminfo) GiB, $(uname -sr)"

echo "== servers from $BIN"
backend 15000; backend 15001; backend 15002; gateway "$ALL"
if section 1; then
echo "== 1. gateway vs direct gRPC (3 backends, concurrency 32, 10 s each)"
for endpoint in get post; do
  before=$(cpu_ticks "$GATEWAY")
  report=$(run --gateway http://127.0.0.1:13000 closed --endpoint "$endpoint" --concurrency 32 --duration 10s || true)
  after=$(cpu_ticks "$GATEWAY")
  echo "$report" | summary
  requests=$(echo "$report" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
  python3 -c "print(f'  gateway CPU: {($after - $before) / 100:.2f} s for $requests requests = {($after - $before) * 10000 / max($requests, 1):.1f} µs/request')"
  run --grpc "$ALL" closed --endpoint "$endpoint" --concurrency 32 --duration 10s | summary || true
done
fi

if section 4; then
echo "== 4. the old client's mix (10 users × 50 iterations) through the gateway"
run --gateway http://127.0.0.1:13000 mix --users 10 --iterations 50 | summary || true
fi

if section 3; then
echo "== 3. fan-out: SSE subscribers through the gateway, publish-to-delivery latency, gateway memory"
for spec in "1000 200" "10000 50"; do
  set -- $spec
  base=$(rss_kib "$GATEWAY")
  peak=$base
  ( while kill -0 "$GATEWAY" 2>/dev/null; do rss_kib "$GATEWAY"; sleep 0.2; done ) > "$DATA/rss.$1" &
  SAMPLER=$!
  run --gateway http://127.0.0.1:13000 fanout --subscribers "$1" --publishes "$2" | summary || true
  kill "$SAMPLER" 2>/dev/null || true
  peak=$(sort -n "$DATA/rss.$1" | tail -1)
  python3 -c "print(f'  gateway RSS {$base} KiB before, {$peak} KiB at peak: {($peak - $base) * 1024 / $1:.0f} bytes per open stream')"
done
fi
stop_gateway

if section 2; then
echo "== 2. balancing with one backend slowed by 20 ms (--test-latency-ms), concurrency 32, 10 s each"
backend 15003
FOURTH=$BACKEND
gateway 127.0.0.1:15000,127.0.0.1:15001,127.0.0.1:15003
run --gateway http://127.0.0.1:13000 closed --endpoint get --concurrency 32 --duration 10s | summary || true
echo "  (above: the unslowed baseline, peak-ewma over three normal backends)"
stop_gateway
kill "$FOURTH"; wait "$FOURTH" 2>/dev/null || true
backend 15003 --test-latency-ms 20
for policy in peak-ewma pending round-robin; do
  gateway 127.0.0.1:15000,127.0.0.1:15001,127.0.0.1:15003 --balancer "$policy"
  echo "  --balancer $policy (slowed: 127.0.0.1:15003)"
  run --gateway http://127.0.0.1:13000 closed --endpoint get --concurrency 32 --duration 10s | summary || true
  stop_gateway
done
fi

if section 5; then
echo "== 5. GET cost with --auth none, HS256, ES256 and HS256 over HTTPS (3 backends, concurrency 32, 10 s each)"
stop_backends
KEYS=$DATA/keys; mkdir -p "$KEYS"
printf '%s' "benchmark secret, long enough for HS256" > "$KEYS/secret"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$KEYS/es.key" 2>/dev/null
openssl pkey -in "$KEYS/es.key" -pubout -out "$KEYS/es.pub" 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$KEYS/ca.key" -out "$KEYS/ca.pem" -days 1 -subj "/CN=bench CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$KEYS/tls.key" -out "$KEYS/tls.csr" -subj "/CN=localhost" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > "$KEYS/tls.ext"
openssl x509 -req -in "$KEYS/tls.csr" -CA "$KEYS/ca.pem" -CAkey "$KEYS/ca.key" -CAcreateserial -out "$KEYS/tls.pem" -days 1 -extfile "$KEYS/tls.ext" 2>/dev/null
HS=(--auth jwt --jwt-secret-file "$KEYS/secret")
ES=(--auth jwt --jwt-public-key "$KEYS/es.pub")
TLS=(--tls-cert "$KEYS/tls.pem" --tls-key "$KEYS/tls.key")
for mode in none hs256 es256 hs256+tls; do
  case $mode in
    none) flags=(); token=(); url=http://127.0.0.1:13000; client=() ;;
    hs256) flags=("${HS[@]}"); token=(--token "$(target/release/eventsys token --jwt-secret-file "$KEYS/secret" --sub bench --ttl 1h)"); url=http://127.0.0.1:13000; client=() ;;
    es256) flags=("${ES[@]}"); token=(--token "$(target/release/eventsys token --jwt-private-key "$KEYS/es.key" --sub bench --ttl 1h)"); url=http://127.0.0.1:13000; client=() ;;
    hs256+tls) flags=("${HS[@]}"); token=(--token "$(target/release/eventsys token --jwt-secret-file "$KEYS/secret" --sub bench --ttl 1h)"); url=https://127.0.0.1:13000; client=(--ca-cert "$KEYS/ca.pem") ;;
  esac
  backend 15000 "${flags[@]}"; backend 15001 "${flags[@]}"; backend 15002 "${flags[@]}"
  if [ "$mode" = hs256+tls ]; then gateway "$ALL" "${flags[@]}" "${TLS[@]}"; else gateway "$ALL" "${flags[@]}"; fi
  echo "  $mode"
  gw_before=$(cpu_ticks "$GATEWAY"); be_before=0; for pid in "${BACKENDS[@]}"; do be_before=$((be_before + $(cpu_ticks "$pid"))); done
  report=$(run --gateway "$url" "${token[@]}" "${client[@]}" closed --endpoint get --concurrency 32 --duration 10s || true)
  gw_after=$(cpu_ticks "$GATEWAY"); be_after=0; for pid in "${BACKENDS[@]}"; do be_after=$((be_after + $(cpu_ticks "$pid"))); done
  echo "$report" | summary
  requests=$(echo "$report" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
  python3 -c "n = max($requests, 1); print(f'  CPU per request: gateway {($gw_after - $gw_before) * 10000 / n:.1f} µs, backends {($be_after - $be_before) * 10000 / n:.1f} µs')"
  stop_gateway; stop_backends
done
fi
