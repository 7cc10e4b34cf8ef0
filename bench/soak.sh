#!/usr/bin/env bash
# The soak of BENCHMARKS.md: `eventsys up` (release, SQLite) under 5 minutes of mixed load with
# 1,000 SSE subscribers, one backend killed with `kill -9` every 30 s and the gateway killed once
# half way (the launcher restarts both). Prints the load tool's report (failed idempotent
# requests, lost or duplicated SSE events) and every process's RSS at start and end. Not in CI.
#   bash bench/soak.sh                  (DURATION=5m SUBSCRIBERS=1000 to change)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p launcher --bin eventsys
ulimit -n "$(ulimit -Hn)"
DURATION=${DURATION:-5m}
SUBSCRIBERS=${SUBSCRIBERS:-1000}
BIN=$PWD/target/release/eventsys
DATA=$(mktemp -d)
LOG=$DATA/up.log
trap 'kill "$UP" 2>/dev/null || true; wait "$UP" 2>/dev/null || true; rm -rf "$DATA"' EXIT

# All subscribers come from one address: let them.
# `exec`: $UP is the launcher itself, so the trap's SIGTERM stops it and, through it, its children.
(cd "$DATA" && MAX_SSE_PER_CLIENT=$((SUBSCRIBERS * 2)) NO_COLOR=1 ACCESS_LOG=false \
    exec "$BIN" up --base-port 0 --gateway-port 0 >"$LOG" 2>&1) &
UP=$!
for _ in $(seq 600); do grep -q 'REST API' "$LOG" && break; sleep 0.1; done
REST=$(grep -o 'REST API  http://[0-9.:]*' "$LOG" | sed 's/.*http:\/\///')
# The newest pid the launcher reported for a child.
pid_of() { grep "started child=$1 " "$LOG" | tail -1 | sed -E 's/.*pid=([0-9]+).*/\1/'; }
rss() { for name in gateway backend-1 backend-2 backend-3; do
    pid=$(pid_of "$name"); echo "  $name (pid $pid): $(awk '/VmRSS/ {print $2}' "/proc/$pid/status") KiB"; done
    echo "  launcher (pid $UP): $(awk '/VmRSS/ {print $2}' "/proc/$UP/status") KiB"; }
echo "RSS at start:"; rss

"$BIN" bench --gateway "http://$REST" --json soak --duration "$DURATION" \
    --subscribers "$SUBSCRIBERS" >"$DATA/report.json" &
LOAD=$!
SECONDS=0
ROUND=0
TOTAL=$(python3 -c "import re,sys; m=re.fullmatch(r'(\d+)([sm])','$DURATION'); print(int(m[1])*(60 if m[2]=='m' else 1))")
while kill -0 "$LOAD" 2>/dev/null && (( SECONDS < TOTAL )); do
    sleep 30
    (( SECONDS >= TOTAL )) && break
    ROUND=$((ROUND + 1))
    if (( ROUND == TOTAL / 60 )); then
        echo "t=${SECONDS}s: kill -9 gateway ($(pid_of gateway))"; kill -9 "$(pid_of gateway)"
    fi
    victim=backend-$(( (ROUND - 1) % 3 + 1 ))
    echo "t=${SECONDS}s: kill -9 $victim ($(pid_of "$victim"))"; kill -9 "$(pid_of "$victim")"
done
wait "$LOAD" && STATUS=0 || STATUS=$?
echo "RSS at end:"; rss
cat "$DATA/report.json"
echo "restarts: $(grep -c 'exited unexpectedly\|crash loop' "$LOG")"
exit "$STATUS"
