#!/usr/bin/env bash
# Runs every comparison in BENCHMARKS.md on this machine, side by side in one run, against
# release builds on loopback ports 13000 and 15000-15004 (stops what it starts). Prints the
# figures as it goes; each `bench` line is the exact command behind one row.
#   bash bench/benchmarks.sh            (about 5 minutes after the build; wrk and nginx from
#                                        Debian for the reference rows of section 1)
# To compare two builds of the servers in one session with the same load tool:
#   SERVERS=/path/to/old/release SECTIONS="1 2" bash bench/benchmarks.sh
# (SERVERS: a folder with `eventsvc` and `gateway`; SECTIONS: which of 1-6 to run.)
# Section 6 needs SecantusDB (`pip install secantusdb`, which gives `secantusd-py`) and Debian's
# `postgresql`.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/peers.sh
source bench/peers.sh
cargo build --release --workspace --bins
# 10,000 SSE streams need 10,000+ descriptors in the bench client and in the gateway.
ulimit -n "$(ulimit -Hn)"
BIN=${SERVERS:-target/release}
BENCH=target/release/bench
SECTIONS=${SECTIONS:-1 2 3 4 5 6}
section() { [[ " $SECTIONS " == *" $1 "* ]]; }
DATA=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DATA"' EXIT
# Servers run at their default log level (access lines off), as deployed; their output goes to
# files in $DATA. Section 1 repeats the gateway GET with RUST_LOG=warn.
unset RUST_LOG
# The load tool is one client on one address: lift the gateway's per-client and connection caps
# (older builds ignore these).
export MAX_SSE_PER_CLIENT=20000 MAX_CONNECTIONS=30000

wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
BACKENDS=()
backend() { "$BIN/eventsvc" --port "$1" --store "${STORE:-sqlite://$DATA/events.db}" "${@:2}" >>"$DATA/backend-$1.log" 2>&1 & BACKEND=$!; PIDS+=($BACKEND); BACKENDS+=($BACKEND); wait_port "$1"; }
stop_backends() { kill "${BACKENDS[@]}" 2>/dev/null || true; for pid in "${BACKENDS[@]}"; do wait "$pid" 2>/dev/null || true; done; BACKENDS=(); }
gateway() { "$BIN/gateway" --port 13000 --backends "$1" "${@:2}" >>"$DATA/gateway.log" 2>&1 & GATEWAY=$!; PIDS+=($GATEWAY); wait_port 13000; sleep 1; }
stop_gateway() { kill "$GATEWAY"; wait "$GATEWAY" 2>/dev/null || true; }
cpu_ticks() { local t=0; for pid in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done; echo $t; }
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
# `measure LABEL PIDS -- COMMAND`: runs a bench command, prints its summary and the CPU per
# request of the processes named (gateway, backends).
measure() {
  local label=$1 gw=$2 be=$3; shift 4
  local g0 b0 g1 b1 report requests
  g0=$(cpu_ticks $gw); b0=$(cpu_ticks $be)
  report=$("$@" || true)
  g1=$(cpu_ticks $gw); b1=$(cpu_ticks $be)
  echo "$report" | summary
  requests=$(echo "$report" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
  python3 -c "n = max($requests, 1); print(f'  $label CPU per request: front {($g1 - $g0) * 10000 / n:.1f} µs, backends {($b1 - $b0) * 10000 / n:.1f} µs')"
}
# `fanout_on WHO PID URL [bench fanout flags]`: the fan-out load against URL, measured on the
# server process PID: its user + system time over the whole run (subscribing and publishing
# included) divided by the deliveries, and its RSS per open stream (peak, sampled every 0.2 s,
# minus before). The figures are kept for the ratios (under WHO's first word).
fanout_on() {
  local who=$1 pid=$2 url=$3 c0 c1 base peak report sampler; shift 3
  base=$(rss_kib "$pid")
  ( while kill -0 "$pid" 2>/dev/null; do rss_kib "$pid"; sleep 0.2; done ) > "$DATA/rss" &
  sampler=$!
  c0=$(cpu_ticks "$pid")
  report=$(run --gateway "$url" fanout "$@" || true)
  c1=$(cpu_ticks "$pid")
  kill "$sampler" 2>/dev/null || true
  peak=$(sort -n "$DATA/rss" | tail -1)
  echo "$report" | summary
  echo "$report" | python3 -c "
import json, sys
r = json.load(sys.stdin); e = r['extra']; n = max(e['subscribers'], 1); d = e['delivered']
cpu = f'{($c1 - $c0) * 10000 / d:.2f} µs per delivery (whole run)' if d else f'{($c1 - $c0) / 100:.2f} s in all'
print(f'  script: $who RSS {$base} KiB before, {$peak} KiB at peak: {($peak - $base) / n:.1f} KiB per open stream; CPU {cpu}')
json.dump({'cpu': ($c1 - $c0) * 10000 / max(d, 1), 'rss': ($peak - $base) / n, 'p99': e['delivery_ms']['p99']}, open(f'$DATA/fan-${who%% *}-{n}', 'w'))"
}
# Each run gets a gateway of its own: RSS per stream is measured from the same start. bench's own
# figures (builds that export process_* in /metrics) cover the delivery phase only.
fanout() {
  stop_gateway
  TOKIO_WORKER_THREADS=1 MAX_SSE_STREAMS=20000 gateway "$ALL"
  fanout_on gateway "$GATEWAY" http://127.0.0.1:13000 "$@"
}
# The peer: nginx with nchan (one worker), the same subscribers and publishes, measured the same
# way on its worker process.
nchan_fanout() {
  local conf="$DATA/nchan" master
  nchan_conf "$conf"
  nginx -p "$conf" -c "$conf/nginx.conf" -g 'daemon off;' & master=$!; PIDS+=($master)
  wait_port 13110
  fanout_on "nchan worker" "$(pgrep -P "$master" | head -1)" http://127.0.0.1:13110 --nchan "$@"
  kill "$master"; wait "$master" 2>/dev/null || true
}
echo "== machine: open files $(ulimit -n); $(nproc) cores, $(awk '/MemTotal/ {print int($2/1048576)}' /proc/meminfo) GiB, $(uname -sr)"

echo "== servers from $BIN"
backend 15000; backend 15001; backend 15002; gateway "$ALL"
if section 1; then
echo "== 1. gateway vs direct gRPC vs nginx (3 backends, concurrency 32, 10 s each; CPU = user + system time / requests)"
for endpoint in get post; do
  measure "gateway $endpoint:" "$GATEWAY" "${BACKENDS[*]}" -- run --gateway http://127.0.0.1:13000 closed --endpoint "$endpoint" --concurrency 32 --duration 10s
  measure "direct $endpoint:" "" "${BACKENDS[*]}" -- run --grpc "$ALL" closed --endpoint "$endpoint" --concurrency 32 --duration 10s
  # gRPC clients through the gateway's port (older builds answer none of it).
  measure "gateway gRPC $endpoint:" "$GATEWAY" "${BACKENDS[*]}" -- run --grpc 127.0.0.1:13000 closed --endpoint "$endpoint" --concurrency 32 --duration 10s
done
echo "  GET through the gateway with RUST_LOG=warn"
stop_gateway
RUST_LOG=warn gateway "$ALL"
measure "gateway get (warn):" "$GATEWAY" "${BACKENDS[*]}" -- run --gateway http://127.0.0.1:13000 closed --endpoint get --concurrency 32 --duration 10s
stop_gateway
echo "  GET through the gateway on one runtime worker (TOKIO_WORKER_THREADS=1)"
TOKIO_WORKER_THREADS=1 gateway "$ALL"
measure "gateway get (1 worker):" "$GATEWAY" "${BACKENDS[*]}" -- run --gateway http://127.0.0.1:13000 closed --endpoint get --concurrency 32 --duration 10s
stop_gateway
gateway "$ALL"
# The same GET by wrk (one thread, 32 connections), as the proxied-GET work was measured.
ID=$(curl -sf -X POST http://127.0.0.1:13000/events -H 'content-type: application/json' -d '{"userId":"wrk","title":"wrk","description":"one event read by wrk"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
wrk_cpu() {
  local label=$1 gw=$2 be=$3 url=$4 g0 b0 g1 b1 out n
  g0=$(cpu_ticks $gw); b0=$(cpu_ticks $be)
  out=$(wrk -t1 -c32 -d10s --latency "$url")
  g1=$(cpu_ticks $gw); b1=$(cpu_ticks $be)
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  echo "\$ wrk -t1 -c32 -d10s --latency $url" >&2
  echo "$out" | grep -E 'Requests/sec|^ +(50|99)%|Non-2xx|Socket errors' | sed 's/^/  /'
  python3 -c "n = max($n, 1); print(f'  $label CPU per request: front {($g1 - $g0) * 10000 / n:.1f} µs, backends {($b1 - $b0) * 10000 / n:.1f} µs')"
  WRK_FRONT_US=$(python3 -c "print(($g1 - $g0) * 10000 / max($n, 1))")
}
if command -v wrk >/dev/null; then
  wrk_cpu "gateway get (wrk):" "$GATEWAY" "${BACKENDS[*]}" "http://127.0.0.1:13000/events/$ID?userId=wrk"
else
  echo "  wrk not installed (apt-get install wrk): wrk rows skipped"
fi
# Reference: nginx (Debian) as a least_conn proxy over three trivial upstreams that answer one
# event's JSON, keepalive connections to them, no access log (like the gateway by default).
if command -v nginx >/dev/null; then
  NGX=$DATA/nginx
  upstreams_conf "$NGX/up"
  # `front WORKERS`: the least_conn proxy with that many worker processes (FRONT, FRONT_PIDS).
  front() {
    front_conf "$NGX/front$1" "$1"
    nginx -p "$NGX/front$1" -c "$NGX/front$1/nginx.conf" -g 'daemon off;' & FRONT=$!; PIDS+=($FRONT)
    wait_port 13100; sleep 0.5
    FRONT_PIDS="$FRONT $(pgrep -P "$FRONT" | tr '\n' ' ')"
  }
  nginx -p "$NGX/up" -c "$NGX/up/nginx.conf" -g 'daemon off;' & UP=$!; PIDS+=($UP)
  wait_port 13101
  UP_PIDS="$UP $(pgrep -P "$UP" | tr '\n' ' ')"
  front auto
  measure "nginx least_conn get:" "$FRONT_PIDS" "$UP_PIDS" -- run --gateway http://127.0.0.1:13100 closed --endpoint get --id "$ID" --concurrency 32 --duration 10s
  command -v wrk >/dev/null && wrk_cpu "nginx least_conn get (wrk):" "$FRONT_PIDS" "$UP_PIDS" "http://127.0.0.1:13100/events/$ID?userId=wrk"
  kill "$FRONT"; wait "$FRONT" 2>/dev/null || true
  # One worker each, as the issue-34 target compares them (the gateway runs one runtime worker
  # under `eventsys up` here): wrk on the gateway, then on nginx, twice, each pair back to back.
  if command -v wrk >/dev/null; then
    echo "  one worker each (gateway TOKIO_WORKER_THREADS=1, nginx worker_processes 1), wrk, two pairs"
    stop_gateway
    RATIOS=()
    for pair in 1 2; do
      TOKIO_WORKER_THREADS=1 gateway "$ALL"
      wrk_cpu "gateway get (1 worker, wrk):" "$GATEWAY" "${BACKENDS[*]}" "http://127.0.0.1:13000/events/$ID?userId=wrk"; GW_US=$WRK_FRONT_US
      stop_gateway
      front 1
      wrk_cpu "nginx least_conn get (1 worker, wrk):" "$FRONT_PIDS" "$UP_PIDS" "http://127.0.0.1:13100/events/$ID?userId=wrk"
      kill "$FRONT"; wait "$FRONT" 2>/dev/null || true
      RATIOS+=("$(python3 -c "print(f'{$GW_US / max($WRK_FRONT_US, 0.1):.2f}')")")
    done
    echo "  gateway / nginx CPU per GET, one worker each: ${RATIOS[*]} (target ≤ 2)"
    gateway "$ALL"
  fi
  kill "$UP"; wait "$UP" 2>/dev/null || true
else
  echo "  nginx not installed (apt-get install nginx): reference rows skipped"
fi
fi

if section 4; then
echo "== 4. the old client's mix (10 users × 50 iterations) through the gateway"
run --gateway http://127.0.0.1:13000 mix --users 10 --iterations 50 | summary || true
fi

if section 3; then
echo "== 3. fan-out: SSE subscribers through the gateway (one runtime worker, as eventsys up runs it here), publish-to-delivery latency, gateway memory and CPU"
fanout --subscribers 1000 --rate 20 --duration 10s
fanout --subscribers 10000 --rate 10 --duration 30s
if command -v nginx >/dev/null && [ -e /usr/lib/nginx/modules/ngx_nchan_module.so ]; then
  echo "  peer: nginx + nchan, one worker, the same two loads (apt-get install nginx libnginx-mod-nchan)"
  nchan_fanout --subscribers 1000 --rate 20 --duration 10s
  nchan_fanout --subscribers 10000 --rate 10 --duration 30s
  # The issue-34 targets: each figure of the gateway over nchan's, the same load (≤ 1 meets).
  for n in 1000 10000; do python3 -c "
import json
g, c = (json.load(open(f'$DATA/fan-{w}-$n')) for w in ('gateway', 'nchan'))
print('  gateway / nchan, $n subscribers: ' + ', '.join(f'{k} {g[k] / max(c[k], 1e-9):.2f}' for k in ('cpu', 'p99', 'rss')) + ' (each ≤ 1 meets the target)')" || true; done
else
  echo "  nginx + nchan not installed (apt-get install nginx libnginx-mod-nchan): peer rows skipped"
fi
fanout --subscribers 10000 --topics 1000 --rate 100 --duration 30s
echo "  19,000 idle streams (the hard open-file limit is 20,000 per process)"
fanout --subscribers 19000 --publishes 0
echo "  reference: gateway memory per connection by what it did, 2,000 each, a fresh gateway each"
for kind in head keepalive sse; do
  stop_gateway
  TOKIO_WORKER_THREADS=1 MAX_SSE_STREAMS=20000 gateway "$ALL"
  python3 bench/conn_rss.py "$GATEWAY" 13000 "$kind" 2000
done
stop_gateway
gateway "$ALL"
fi
stop_gateway

if section 2; then
echo "== 2. balancing with one backend slowed by 20 ms (bench delay), concurrency 32, 10 s each"
backend 15003
FOURTH=$BACKEND
gateway 127.0.0.1:15000,127.0.0.1:15001,127.0.0.1:15003
run --gateway http://127.0.0.1:13000 closed --endpoint get --concurrency 32 --duration 10s | summary || true
echo "  (above: the unslowed baseline, peak-ewma over three normal backends)"
stop_gateway
kill "$FOURTH"; wait "$FOURTH" 2>/dev/null || true
# The fourth backend behind a proxy that holds its answers for 20 ms: 15003 is the slow one.
backend 15004
FOURTH=$BACKEND
"$BENCH" delay --listen 127.0.0.1:15003 --to 127.0.0.1:15004 --delay 20ms 2>>"$DATA/delay.log" &
DELAY=$!; PIDS+=($DELAY); wait_port 15003
for policy in peak-ewma pending round-robin; do
  gateway 127.0.0.1:15000,127.0.0.1:15001,127.0.0.1:15003 --balancer "$policy"
  echo "  --balancer $policy (slowed: 127.0.0.1:15003)"
  run --gateway http://127.0.0.1:13000 closed --endpoint get --concurrency 32 --duration 10s | summary || true
  stop_gateway
done
kill "$DELAY"; wait "$DELAY" 2>/dev/null || true
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

if section 6; then
echo "== 6. the store: SQLite vs MongoDB vs PostgreSQL in one run (3 backends, concurrency 32, 10 s each)"
echo "   MongoDB here is SecantusDB, a Python server (--sync-on-commit): its figures say where our"
echo "   code waits on the database, nothing about mongod's speed."
stop_backends
secantusd-py --port 13200 --storage-path "$DATA/mongo" --sync-on-commit >>"$DATA/mongo.log" 2>&1 &
MONGO=$!; PIDS+=($MONGO); wait_port 13200
# Debian's PostgreSQL, a cluster of the run's own on 13300 (stopped with the rest on any exit).
# shellcheck source=bench/postgres.sh
source bench/postgres.sh
start_postgres 13300
"$PGBIN/psql" -h 127.0.0.1 -p 13300 -U postgres -qc "CREATE DATABASE bench"
for STORE in "sqlite://$DATA/stores.db" "mongodb://127.0.0.1:13200/bench?replicaSet=secantus" \
    "postgres://postgres@127.0.0.1:13300/bench"; do
  export STORE
  echo "  --store ${STORE%%:*}"
  backend 15000; backend 15001; backend 15002; gateway "$ALL"
  for endpoint in get post publish; do
    measure "${STORE%%:*} $endpoint:" "$GATEWAY" "${BACKENDS[*]}" -- run --gateway http://127.0.0.1:13000 closed --endpoint "$endpoint" --concurrency 32 --duration 10s
  done
  fanout --subscribers 1000 --rate 20 --duration 10s
  stop_gateway; stop_backends
done
unset STORE
# The references: PostgreSQL's own client on the same server and disk, 32 clients, 10 s each.
# A one-row INSERT into an event-shaped table (what a create could reach), and the store's own
# publish function called directly (what a publish on one topic could reach without the
# gateway, the backends and their round trips).
"$PGBIN/psql" -h 127.0.0.1 -p 13300 -U postgres -d bench -qc "CREATE TABLE pgbench_events
  (pk BIGSERIAL PRIMARY KEY, id UUID NOT NULL UNIQUE, user_id BYTEA NOT NULL, title BYTEA NOT NULL,
   description BYTEA NOT NULL, completed BOOLEAN NOT NULL, created_at BIGINT NOT NULL,
   topic TEXT NOT NULL, data TEXT, time BIGINT, seq BIGINT)"
echo "INSERT INTO pgbench_events (id, user_id, title, description, completed, created_at, topic)
  VALUES (gen_random_uuid(), 'pgbench', 'pgbench', '', false, 0, '');" > "$PGDIR/insert.sql"
echo "SELECT publish_event(gen_random_uuid(), 'pgbench', 'pgbench', '', false, 0, 'pgbench', NULL,
  0, NULL, NULL, NULL, 'events_published');" > "$PGDIR/publish.sql"
for script in insert publish; do
  echo "  reference: pgbench -c 32 -j 2 -T 10 -f $script.sql (one-row $script per transaction)"
  "$PGBIN/pgbench" -h 127.0.0.1 -p 13300 -U postgres -n -c 32 -j 2 -T 10 -f "$PGDIR/$script.sql" bench 2>&1 \
    | grep -E "^(tps|latency average)|ERROR" | head -3 | sed 's/^/    /' || true
done
kill "$MONGO"; wait "$MONGO" 2>/dev/null || true
stop_postgres
fi
