# Shared set-up of the A/B scripts (sourced, not run): strict mode, the repository as the working
# folder, a raised open-file limit, the default log level, a temporary data folder removed on
# exit together with every process started into PIDS, and two helpers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ulimit -n 20000
unset RUST_LOG
DATA=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DATA"' EXIT
# Waits (up to 30 s: a server under valgrind starts slowly) until 127.0.0.1:$1 accepts.
wait_port() { for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.05; done; exit 1; }
# CPU time (user + system, in clock ticks) the processes $@ have used so far.
cpu_ticks() { local t=0; for pid in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done; echo $t; }
