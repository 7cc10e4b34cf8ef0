#!/usr/bin/env bash
# The operator run of writes through backend deaths: the old client mix at full speed through
# `eventsys up` (release: cargo build --release --workspace --bins), kill -9 of backend-1, of
# backend-2 6 s later, and of backend-1 again (restarted) 6 s after that; each user also publishes every round
# while one live subscriber follows the topic (`mix --publish`: checked for every publish
# delivered once, in order, and no create stored twice). KEYS=1 sends a fresh Idempotency-Key
# with every create and publish. Prints the load tool report.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ulimit -n 20000
DIR=$(mktemp -d); cd "$DIR"
"$ROOT/target/release/eventsys" up --backends 3 --base-port 0 --gateway-port 13000 > up.log 2>&1 &
UP=$!
trap 'kill $UP 2>/dev/null; wait $UP 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 200); do grep -q "ready:" up.log && break; sleep 0.1; done
pid() { grep "started child=$1 " up.log | tail -1 | sed -E 's/.*pid=([0-9]+).*/\1/'; }
"$ROOT/target/release/bench" --json --gateway http://127.0.0.1:13000 ${KEYS:+--idempotency-keys} mix --users 32 --iterations 400 --publish > mix.json &
BENCH=$!
sleep 3; kill -9 "$(pid backend-1)"; echo "killed backend-1"
sleep 6; kill -9 "$(pid backend-2)"; echo "killed backend-2"
sleep 6; kill -9 "$(pid backend-1)"; echo "killed backend-1 again (restarted)"
wait $BENCH || true
python3 - <<'PY'
import json
r = json.load(open("mix.json")); l = r["latency_ms"]
print(r["requests"], "requests,", round(r["throughput"]), "req/s, p99", l["p99"], "ms, max", l["max"], "ms, errors", r["errors"])
for k, v in r["extra"].items(): print(" ", k, v)
PY
grep -c "exited unexpectedly" up.log
