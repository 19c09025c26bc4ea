#!/usr/bin/env bash
# Cluster fan-out benchmark: three volley nodes and one nats-server against one volley node,
# side by side in one run (alternated: single, cluster, single, ...), at 1,000 and 10,000
# subscribers.
#
#   cargo build --release -p volley -p loadgen
#   loadgen/scripts/bench-cluster.sh [ROUNDS=1] [SECS=5]
#
# Single: one `volley serve --mode broadcast --workers 1 --backend mio`; loadgen's publisher and
# subscribers all on it. Cluster: nodes 1, 2, 3 the same with `--cluster` (nats-server on this
# box), the publisher on node 1 and the subscribers spread over nodes 2 and 3 (`--sub-url`), so
# every delivery crosses the broker. Nothing is pinned (six processes on two cores).
#
# Server CPU is read from /proc/PID/stat (utime + stime, 10 ms ticks) around the whole loadgen
# run (connect, warm-up, window, drain, close) and divided by every event received in the run;
# the same way for both setups, so their ratio is fair. Broker messages per event: NATS's
# /varz in_msgs and out_msgs deltas over the run divided by the events published.
# Needs jq and nats-server. Reports (JSON and text) go to $OUT.
set -euo pipefail
ulimit -n 20000 # per process: loadgen holds 10,001 connections
ROUNDS=${1:-1}
SECS=${2:-5}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
OUT=${OUT:-/tmp/volley-bench-cluster}
NATS_PORT=${NATS_PORT:-24222}
NATS_MON=${NATS_MON:-28222}
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.txt
. "$(dirname "$0")/lib.sh"
need_bins "$BIN" volley loadgen
command -v nats-server >/dev/null || { echo "nats-server not installed (apt-get install nats-server)" >&2; exit 1; }

nats-server -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MON" >"$OUT/nats.log" 2>&1 &
NPID=$!
pids+=("$NPID")
sleep 0.5
serve() { # addr [cluster args...] -> SPID
    local a=$1; shift
    "$BIN/volley" serve --mode broadcast --backend mio --workers 1 --addr "$a" "$@" >"$OUT/${a##*:}.log" 2>&1 &
    SPID=$!
    pids+=("$SPID")
}
serve 127.0.0.1:19100; SINGLE=$SPID
NODES=()
for n in 1 2 3; do serve "127.0.0.1:1910$n" --cluster "nats://127.0.0.1:$NATS_PORT" --node-id "$n"; NODES+=("$SPID"); done
sleep 1

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
varz() { curl -s "http://127.0.0.1:$NATS_MON/varz" | jq ".$1"; }

configs=(
    "s1k-r50|--subscribers 1000 --publishers 1 --rate 50"
    "s10k-r10|--subscribers 10000 --publishers 1 --rate 10"
)
echo "load average before: $(cut -d" " -f1-3 /proc/loadavg)"
echo "| configuration | setup | round | deliveries/s | latency p50 | latency p99 | lost | server CPU per delivery (us): all, then per process | broker in/out per event | CPU besides loadgen |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for round in $(seq 1 "$ROUNDS"); do
    for cfg in "${configs[@]}"; do
        name=${cfg%%|*}
        args=${cfg#*|}
        for setup in single cluster; do
            if [ "$setup" = single ]; then
                procs=("$SINGLE"); labels=(node); url="--url ws://127.0.0.1:19100/"
            else
                procs=("${NODES[@]}" "$NPID"); labels=(n1 n2 n3 nats)
                url="--url ws://127.0.0.1:19101/ --sub-url ws://127.0.0.1:19102/ --sub-url ws://127.0.0.1:19103/"
            fi
            before=(); for p in "${procs[@]}"; do before+=("$(ticks "$p")"); done
            in0=$(varz in_msgs); out0=$(varz out_msgs)
            f="$OUT/$setup-$name-$round"
            # shellcheck disable=SC2086
            "$BIN/loadgen" fanout $url $args --size 64 --duration "$SECS" --warmup 1 --json "$f.json" >"$f.txt" || true
            in1=$(varz in_msgs); out1=$(varz out_msgs)
            received=$(jq .received "$f.json")
            events=$(jq .events_published "$f.json")
            cpu=""
            total=0
            for i in "${!procs[@]}"; do
                t=$(( $(ticks "${procs[$i]}") - before[i] ))
                total=$(( total + t ))
                cpu+="${labels[$i]} $(awk -v t="$t" -v r="$received" 'BEGIN { printf "%.2f", t * 10000 / (r > 0 ? r : 1) }') "
            done
            cpu="**$(awk -v t="$total" -v r="$received" 'BEGIN { printf "%.2f", t * 10000 / (r > 0 ? r : 1) }')**: $cpu"
            broker="-"
            [ "$setup" = cluster ] && broker=$(awk -v i=$((in1 - in0)) -v o=$((out1 - out0)) -v e="$events" \
                'BEGIN { printf "%.2f / %.2f", i / e, o / e }')
            printf "| %s | %s | %s | %.0f | %.2f ms | %.2f ms | %s | %s| %s | %.2f cores |\n" "$name" "$setup" "$round" \
                "$(jq .deliveries_per_s "$f.json")" "$(jq '.latency.percentiles.p50 / 1e6' "$f.json")" \
                "$(jq '.latency.percentiles.p99 / 1e6' "$f.json")" "$(jq .lost "$f.json")" "$cpu" "$broker" \
                "$(jq .other_cpu_cores "$f.json")"
        done
    done
done
