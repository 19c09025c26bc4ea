#!/usr/bin/env bash
# Issue-4 fan-out benchmark: volley's broadcast mode (mio backend and io_uring backend) vs the
# tokio-tungstenite + tokio::sync::broadcast baseline (bench/src/bin/tt_broadcast.rs), side by
# side in one run, alternated per round (volley-mio, volley-uring, tt, volley-mio, ...).
#
#   cargo build --release -p volley -p volley-bench -p loadgen
#   loadgen/scripts/bench-fanout.sh [ROUNDS=3] [SECS=10]     (VOLLEY=path picks the volley binary)
#
# Servers run one worker pinned to CPU 0, loadgen one thread pinned to CPU 1. Every run's
# JSON report is kept in $OUT (default /tmp/volley-bench-fanout); medians are printed as a
# Markdown table at the end. Each group (round, configuration) is run again (up to
# ATTEMPTS times, default 2) when loadgen reports that other processes used more than
# MAX_OTHER cores (default 0.10) during any of its windows.
set -euo pipefail
ulimit -n 20000 # 10,000 subscribers + publishers + slack
ROUNDS=${1:-3}
SECS=${2:-10}
BIN=${CARGO_TARGET_DIR:-target}/release
VOLLEY=${VOLLEY:-$BIN/volley}
OUT=${OUT:-/tmp/volley-bench-fanout}
MAX_OTHER=${MAX_OTHER:-0.10}
ATTEMPTS=${ATTEMPTS:-2}
SERVERS=(vmio vuring tt)
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.txt

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

addr() { case $1 in vmio) echo 127.0.0.1:9001 ;; vuring) echo 127.0.0.1:9002 ;; tt) echo 127.0.0.1:9102 ;; esac; }
start_server() { # name -> sets SPID
    case $1 in
        vmio) taskset -c 0 "$VOLLEY" serve --mode broadcast --backend mio --workers 1 --pin --addr "$(addr vmio)" >"$OUT/vmio.log" 2>&1 & ;;
        vuring) taskset -c 0 "$VOLLEY" serve --mode broadcast --backend uring --workers 1 --pin --addr "$(addr vuring)" >"$OUT/vuring.log" 2>&1 & ;;
        tt) taskset -c 0 "$BIN/tt_broadcast" --addr "$(addr tt)" --workers 1 >"$OUT/tt.log" 2>&1 & ;;
    esac
    SPID=$!
    pids+=("$SPID")
    sleep 0.5
}

# name | loadgen fanout options. "b4" publishes 4 events per loop turn (4 publishers, one
# event each at the same instant).
configs=(
    "s1k-r50|--subscribers 1000 --publishers 1 --rate 50"
    "s1k-r150|--subscribers 1000 --publishers 1 --rate 150"
    "s1k-p4-r200-b4|--subscribers 1000 --publishers 4 --rate 200 --burst 4"
    "s10k-r10|--subscribers 10000 --publishers 1 --rate 10"
    "s10k-r50|--subscribers 10000 --publishers 1 --rate 50"
)
[ -n "${ONLY:-}" ] && configs=("${configs[@]:$ONLY:1}")

declare -A SP
for s in "${SERVERS[@]}"; do start_server "$s"; SP[$s]=$SPID; done
for round in $(seq 1 "$ROUNDS"); do
    for cfg in "${configs[@]}"; do
        name=${cfg%%|*}
        args=${cfg#*|}
        for attempt in $(seq 1 "$ATTEMPTS"); do
            clean=1
            for server in "${SERVERS[@]}"; do
                f="$OUT/$server-$name-$round"
                # shellcheck disable=SC2086
                "$BIN/loadgen" fanout --url "ws://$(addr "$server")/" $args --size 64 --duration "$SECS" --warmup 2 \
                    --pin 1 --server-pid "${SP[$server]}" --json "$f.json" >"$f.txt" || true
                other=$(grep -m1 '"other_cpu_cores"' "$f.json" | sed -E 's/.*: ([^,]*),?$/\1/')
                echo "round $round $name $server: $(grep -E 'deliveries in window|^  lost|server CPU per delivery' "$f.txt" | tr -s ' ' | tr '\n' ' ') other load $other cores"
                if awk -v o="$other" -v m="$MAX_OTHER" 'BEGIN { exit !(o > m) }'; then clean=0; fi
            done
            [ $clean = 1 ] && break
            echo "round $round $name: other processes were busy"
        done
    done
done

# Medians.
field() { grep -m1 "^  \"$2\": " "$1" | sed -E 's/.*: ([^,]*),?$/\1/'; }
pct() { grep -A8 '"percentiles"' "$1" | grep "\"$2\":" | sed -E 's/.*: ([^,]*),?$/\1/'; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
med() { for f in "$OUT"/$1-$2-*.json; do field "$f" "$3"; done | median; }
medp() { for f in "$OUT"/$1-$2-*.json; do pct "$f" "$3"; done | median; }
sum() { for f in "$OUT"/$1-$2-*.json; do field "$f" "$3"; done | awk '{s+=$1} END {print s+0}'; }
# Ratio column: median over rounds of (this server's CPU per delivery / tt's), same round.
ratio() { for f in "$OUT"/tt-$2-*.json; do
    r=${f##*-}; r=${r%.json}
    echo "$(field "$OUT/$1-$2-$r.json" server_cpu_us_per_delivery) $(field "$f" server_cpu_us_per_delivery)" | awk '{print $1/$2}'
done | median; }
echo
echo "| configuration | server | deliveries/s | latency p50 | latency p99 | server CPU/delivery | vs tt (median of per-round ratios) | lost (all rounds) | other load (median) |"
echo "|---|---|---|---|---|---|---|---|---|"
for cfg in "${configs[@]}"; do
    name=${cfg%%|*}
    for server in "${SERVERS[@]}"; do
        d=$(med $server "$name" deliveries_per_s); c=$(med $server "$name" server_cpu_us_per_delivery)
        p50=$(medp $server "$name" p50); p99=$(medp $server "$name" p99)
        lost=$(sum $server "$name" lost); o=$(med $server "$name" other_cpu_cores)
        x=$([ $server = tt ] && echo 1 || ratio $server "$name")
        printf "| %s | %s | %.0f | %.0f us | %.0f us | %.3f us | %.2f | %s | %.2f |\n" "$name" "$server" "$d" \
            "$(echo "$p50" | awk '{print $1/1000}')" "$(echo "$p99" | awk '{print $1/1000}')" "$c" "$x" "$lost" "$o"
    done
done
