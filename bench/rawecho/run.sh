#!/usr/bin/env bash
# run.sh ROUNDS SECS SIZE -- raw TCP echo: epoll vs io_uring server CPU per message.
# Server pinned to CPU 0 (taskset), rawload pinned to CPU 1. Env: PORT (19080), CONNS (200),
# INFLIGHT (1: messages in flight per connection),
# MODES (space-separated; default: epoll uring uring-nocopy uring-single uring-poll).
set -euo pipefail
ROUNDS=${1:-3}; SECS=${2:-5}; SIZE=${3:-16384}
PORT=${PORT:-19080}; CONNS=${CONNS:-200}; INFLIGHT=${INFLIGHT:-1}
cd "$(dirname "$0")"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release -q
BIN=$CARGO_TARGET_DIR/release
read -r -a MODES <<< "${MODES:-epoll uring uring-nocopy uring-single uring-poll}"
RES=$(mktemp)
trap 'rm -f "$RES"' EXIT
printf '%-13s %9s %9s %9s %10s\n' mode us/msg user sys msgs/s
for ((r = 1; r <= ROUNDS; r++)); do
  for m in "${MODES[@]}"; do
    taskset -c 0 "$BIN/rawecho" "$m" "$PORT" &
    pid=$!
    set +e
    json=$("$BIN/rawload" --port "$PORT" --conns "$CONNS" --size "$SIZE" --inflight "$INFLIGHT" \
           --duration "$SECS" \
           --server-pid "$pid" --pin 1)
    rc=$?
    set -e
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
    # io_uring teardown is async: the old listener can linger for ~10 ms after exit; a client
    # connecting then would hit the dying server. Wait until the port is free.
    for _ in {1..500}; do ss -ltnH "sport = :$PORT" | grep -q . || break; sleep 0.01; done
    if [[ $rc -ne 0 ]]; then echo "round $r $m: rawload failed (rc=$rc)"; exit 1; fi
    echo "$json" | jq -r --arg m "$m" '[$m, .us_per_msg, .user_us_per_msg, .sys_us_per_msg, .msgs_per_s] | @tsv' \
      | tee -a "$RES" | awk '{printf "%-13s %9.3f %9.3f %9.3f %10d\n", $1, $2, $3, $4, $5}'
  done
done
echo "--- medians over $ROUNDS round(s), size $SIZE, $CONNS conns x $INFLIGHT in flight, ${SECS}s ---"
for m in "${MODES[@]}"; do
  awk -v m="$m" '$1 == m' "$RES" | awk '
    { for (i = 2; i <= 5; i++) v[i, NR] = $i }
    END {
      for (i = 2; i <= 5; i++) {
        for (a = 1; a <= NR; a++) c[a] = v[i, a]
        for (a = 1; a <= NR; a++) for (b = a + 1; b <= NR; b++) if (c[b] < c[a]) { t = c[a]; c[a] = c[b]; c[b] = t }
        med[i] = (NR % 2) ? c[(NR + 1) / 2] : (c[NR / 2] + c[NR / 2 + 1]) / 2
      }
      printf "%-13s %9.3f %9.3f %9.3f %10d\n", "'"$m"'", med[2], med[3], med[4], med[5]
    }'
done
