#!/usr/bin/env bash
# permessage-deflate (issue 16): the same loads with and without compression, side by side in
# one run. The server is the same process setting for both (`volley serve --deflate`, one
# worker pinned to CPU 0); whether a connection compresses is decided by loadgen offering the
# extension (`--deflate`) or not. loadgen runs one thread pinned to CPU 1.
#
#   cargo build --release -p volley -p loadgen
#   loadgen/scripts/bench-deflate.sh [ROUNDS=3] [SECS=5]
#
# Per round, each step plain then compressed (a fresh server for each run):
#   idle      loadgen connect --conns 10000 --hold 5        server bytes per idle connection
#   s1k       fanout, 1,000 subscribers, 1 publisher, 50 events/s of 1 KiB JSON
#   s10k      fanout, 10,000 subscribers, 1 publisher, 10 events/s of 1 KiB JSON
#   echo      echo, 50 connections, 1 in flight, 1 KiB JSON text
# Printed per run: server CPU per delivery (or per echo), bytes on the wire per delivery (as
# loadgen received them), and the server's deflate calls per event (its counters, from
# --metrics). Environment: BIN (binaries' directory), BACKEND (mio or uring, default mio),
# OUT (JSON reports, default /tmp/volley-bench-deflate), STEPS (default "idle s1k s10k echo").
# Needs jq and curl.
set -euo pipefail
ulimit -n 20000
ROUNDS=${1:-3}
SECS=${2:-5}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
BACKEND=${BACKEND:-mio}
OUT=${OUT:-/tmp/volley-bench-deflate}
read -r -a STEPS <<<"${STEPS:-idle s1k s10k echo}"
mkdir -p "$OUT"
rm -f "$OUT"/*.json
. "$(dirname "$0")/lib.sh"
need_bins "$BIN" volley loadgen
ADDR=127.0.0.1:9461
METRICS=127.0.0.1:9462

counter() { # name -> the server's counter summed over workers
    curl -s "http://$METRICS/metrics" | awk -v n="volley_$1_total" '$1 ~ "^"n"[{]" {s += $2} END {print s + 0}'
}

run() { # step mode(plain|deflate) round
    local step=$1 mode=$2 r=$3 flag=""
    [ "$mode" = deflate ] && flag=--deflate
    local smode=echo
    case $step in s1k|s10k) smode=broadcast ;; esac
    taskset -c 0 "$BIN/volley" serve --mode "$smode" --backend "$BACKEND" --workers 1 --pin \
        --addr "$ADDR" --metrics "$METRICS" --deflate >"$OUT/server.log" 2>&1 &
    local spid=$!
    pids+=("$spid")
    sleep 0.5
    local json="$OUT/$step-$mode-$r.json"
    local common="--url ws://$ADDR/ --pin 1 --server-pid $spid --json $json $flag"
    case $step in
        idle) "$BIN/loadgen" connect $common --conns 10000 --hold 5 >/dev/null ;;
        s1k) "$BIN/loadgen" fanout $common --subscribers 1000 --publishers 1 --rate 50 --size 1024 \
            --duration "$SECS" --warmup 1 >/dev/null ;;
        s10k) "$BIN/loadgen" fanout $common --subscribers 10000 --publishers 1 --rate 10 --size 1024 \
            --duration "$SECS" --warmup 1 >/dev/null ;;
        echo) "$BIN/loadgen" echo $common --conns 50 --inflight 1 --size 1024 --text \
            --duration "$SECS" --warmup 1 >/dev/null ;;
    esac
    local deflated events
    deflated=$(counter messages_deflated)
    events=$(counter events_published)
    kill "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    case $step in
        idle) printf '%s\t%s\t%s\tbytes/conn %s\n' "$step" "$mode" "$r" \
            "$(jq -r '.server_bytes_per_conn' "$json")" ;;
        s1k|s10k) printf '%s\t%s\t%s\tcpu_us/delivery %s\twire B/delivery %s\tdeflate calls %s / events %s\tlost %s\n' \
            "$step" "$mode" "$r" "$(jq -r '.server_cpu_us_per_delivery' "$json")" \
            "$(jq -r '.wire_bytes_per_delivery' "$json")" "$deflated" "$events" "$(jq -r '.lost' "$json")" ;;
        echo) printf '%s\t%s\t%s\tcpu_us/echo %s\twire B/echo %s\tdeflate calls %s\tverify failures %s\n' \
            "$step" "$mode" "$r" "$(jq -r '.server_cpu_us_per_msg' "$json")" \
            "$(jq -r '.wire_bytes_per_message' "$json")" "$deflated" "$(jq -r '.verify_failures' "$json")" ;;
    esac
}

# The loop runs in this shell (not a pipeline's subshell), so the EXIT trap kills its servers.
exec > >(tee "$OUT/results.tsv")
echo "# $(date -u +%F' '%T) UTC, $(nproc) CPUs, load: $(cut -d' ' -f1-3 /proc/loadavg), backend $BACKEND"
for r in $(seq 1 "$ROUNDS"); do
    for step in "${STEPS[@]}"; do
        for mode in plain deflate; do
            run "$step" "$mode" "$r"
        done
    done
done
echo "# done $(date -u +%T) UTC, load: $(cut -d' ' -f1-3 /proc/loadavg)"
