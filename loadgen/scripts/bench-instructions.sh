#!/usr/bin/env bash
# User-space instructions per echoed message, counted by valgrind's callgrind: volley (mio)
# and uWebSockets under the same load. Unlike CPU time on this shared VM, the count barely
# moves from run to run, so a change of a few percent in volley's own code shows; the kernel's
# share (most of the CPU at one message per read) is not counted at all.
#
#   cargo build --release -p volley -p loadgen
#   loadgen/scripts/bench-instructions.sh [SECS=6]
#
# Environment: BIN (volley and loadgen), UWS (the uWS peer, skipped when not built), OUT
# (callgrind outputs, kept for callgrind_annotate), CONFIGS (names below). io_uring is not
# measured: valgrind does not follow the kernel's writes into the rings.
#
# Under callgrind a server runs ~50x slower, so every read holds more messages than at full
# speed: the per-message figure is a property of the code path, not of a load. The count
# includes the server's start (a few million instructions: ~10-20 per message here).
set -euo pipefail
SECS=${1:-6}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
UWS=${UWS:-/tmp/uws/uws-server}
OUT=${OUT:-/tmp/volley-bench-instructions}
mkdir -p "$OUT"
. "$(dirname "$0")/lib.sh"
need_bins "$BIN" volley loadgen
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
SERVERS=(volley uws)
skip_unbuilt_uws

all_configs=(
    "c100-i1-20t|--conns 100 --inflight 1 --size 20 --text"
    "c100-i16-20t|--conns 100 --inflight 16 --size 20 --text"
)
read -r -a want <<<"${CONFIGS:-c100-i1-20t c100-i16-20t}"

echo "| load | server | messages | user-space instructions per message |"
echo "|---|---|---|---|"
port=9451
for w in "${want[@]}"; do
    for c in "${all_configs[@]}"; do
        [ "${c%%|*}" = "$w" ] || continue
        args=${c#*|}
        for s in "${SERVERS[@]}"; do
            port=$((port + 1))
            f="$OUT/$s-$w"
            case $s in
                volley) cmd=("$BIN/volley" serve --addr "127.0.0.1:$port" --workers 1 --backend mio) ;;
                uws) cmd=("$UWS" --port "$port" echo) ;;
            esac
            valgrind --tool=callgrind --callgrind-out-file="$f.callgrind" "${cmd[@]}" >"$f.log" 2>&1 &
            vp=$!
            pids+=("$vp")
            sleep 3
            # shellcheck disable=SC2086
            "$BIN/loadgen" echo --url "ws://127.0.0.1:$port/" $args --duration "$SECS" --warmup 1 \
                --json "$f.json" >"$f.txt"
            kill -INT "$vp" 2>/dev/null || true
            # uWS does not stop on SIGINT: callgrind writes its counts on SIGTERM too.
            sleep 2
            kill "$vp" 2>/dev/null || true
            wait "$vp" 2>/dev/null || true
            sent=$(jq .sent "$f.json")
            total=$(awk '/^(summary|totals):/ { print $2; exit }' "$f.callgrind")
            echo "| $w | $s | $sent | $((total / sent)) |"
        done
    done
done
