#!/usr/bin/env bash
# Issue-8 scale run: N WebSocket connections held by ONE volley server process on the
# io_uring backend (rings of direct descriptors, so the 20,000 open-files limit of the box does
# not bound it), kept alive by server pings, then one 64-byte broadcast counted at every
# connection. The client side is loadgen spread over processes and source addresses.
#
#   cargo build --release -p volley -p loadgen
#   loadgen/scripts/scale.sh [N=250000] [HOLD]
#
# Server: `volley serve --backend uring --max-connections N+1000 --mode broadcast
# --ping-interval HOLD-2` (rings of up to 20,000 descriptors: ceil((N+1000)/18,000) of them,
# spread over one worker per core). Client: `loadgen fanout --procs P --source 127.0.0.2 ...` with
# P = ceil(N / 19,000) processes and one source address per 15,000 connections. HOLD seconds
# idle after the last connection opened (default: enough for what follows): every connection
# is pinged once, HOLD-2 s after it opened, and answers; its next ping falls after the
# measured window, so the window's server CPU is the broadcast's. Then one 64-byte broadcast to everyone at the
# start of a window of max(4, N/40,000) seconds (--rate 1/window), long enough for it to
# reach every connection on this 2-core box.
# The idle timeout is off: with the default 120 s, a HOLD past ~120 s (a slow connect phase
# on a loaded box) closes connections (1001) whose pong arrives over 2 s after the ping.
# Everything stops by itself; the JSON report is kept in $OUT (default /tmp/volley-scale).
set -euo pipefail
N=${1:-250000}
BIN=${CARGO_TARGET_DIR:-target}/release
OUT=${OUT:-/tmp/volley-scale}
ADDR=127.0.0.1:9401
mkdir -p "$OUT"
PROCS=$(( (N + 18999) / 19000 ))
NSRC=$(( (N + 14999) / 15000 ))
WIN=$(( N / 40000 > 4 ? N / 40000 : 4 ))
# Pinged once in the hold, not again before the window ends: HOLD >= connect time + WIN + 4.
HOLD=${2:-$(( N / 25000 + WIN + 5 > 25 ? N / 25000 + WIN + 5 : 25 ))}
PING=$(( HOLD - 2 ))
RATE=$(awk "BEGIN { print 1 / $WIN }")
SOURCES=()
for i in $(seq 2 $((NSRC + 1))); do SOURCES+=(--source "127.0.0.$i"); done

"$BIN/volley" serve --addr $ADDR --backend uring --mode broadcast \
    --max-connections $((N + 1000)) --ping-interval $PING --pong-timeout ${PONG:-20} --idle-timeout 0 >"$OUT/server-$N.log" 2>&1 &
SPID=$!
trap 'kill $SPID 2>/dev/null || true' EXIT
sleep 1
echo "server pid $SPID: $(head -5 "$OUT/server-$N.log")"
/usr/bin/time -v "$BIN/loadgen" fanout --url "ws://$ADDR/" --subscribers "$N" --publishers 1 \
    --procs "$PROCS" "${SOURCES[@]}" --timeout 60 --max-pending "${PENDING:-256}" --hold "$HOLD" --rate "$RATE" --warmup 0 --duration "$WIN" \
    --size 64 --server-pid $SPID --json "$OUT/fanout-$N.json" 2> "$OUT/loadgen-time-$N.txt" | tee "$OUT/fanout-$N.txt"
grep -E "Maximum resident|Elapsed" "$OUT/loadgen-time-$N.txt" || true
kill $SPID; wait $SPID 2>/dev/null || true
echo "server: $(tail -1 "$OUT/server-$N.log")"
