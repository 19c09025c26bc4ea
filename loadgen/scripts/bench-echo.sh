#!/usr/bin/env bash
# Issue-3 echo benchmarks: volley vs the tokio-tungstenite baseline (bench/src/bin/tt_echo.rs)
# in both of its idiomatic forms ("tt": `ws.next()` + `ws.send(msg)`; "ttf": `read.forward(write)`),
# side by side in one run, alternated (volley, tt, ttf, volley, ...) so that the virtual
# machine's placement changes hit all; then server memory per idle connection at 10,000.
#
#   cargo build --release -p volley -p volley-bench -p loadgen
#   loadgen/scripts/bench-echo.sh [ROUNDS=3] [SECS=10]     (VOLLEY=path picks the volley binary)
#
# Servers are pinned to CPU 0 (one worker / one runtime thread), loadgen to CPU 1. Each run's
# JSON report is kept in $OUT (default /tmp/volley-bench-echo); the medians are printed as a
# Markdown table at the end. Needs 2 CPUs and an open-files limit of at least 10,100.
#
# On a shared machine: each (round, configuration) group of runs starts only once the machine
# has been idle for 2 s, and is run again (up to 5 times) when loadgen reports that other
# processes used more than MAX_OTHER cores (default 0.05) during any of its windows.
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-10}
BIN=${CARGO_TARGET_DIR:-target}/release
VOLLEY=${VOLLEY:-$BIN/volley} # the server under test (a build of a given commit, say)
OUT=${OUT:-/tmp/volley-bench-echo}
VADDR=127.0.0.1:9001
TADDR=127.0.0.1:9101
FADDR=127.0.0.1:9102
MAX_OTHER=${MAX_OTHER:-0.05}
mkdir -p "$OUT"
rm -f "$OUT"/*.json

busy_pct() { # CPU busy % of the whole machine over $1 s
    local a b
    a=($(head -1 /proc/stat)); sleep "$1"; b=($(head -1 /proc/stat))
    local busy=$(( (b[1]+b[2]+b[3]+b[6]+b[7]+b[8]) - (a[1]+a[2]+a[3]+a[6]+a[7]+a[8]) ))
    local idle=$(( (b[4]+b[5]) - (a[4]+a[5]) ))
    echo $(( 100 * busy / (busy + idle + 1) ))
}
wait_idle() {
    for _ in $(seq 1 600); do [ "$(busy_pct 2)" -le 5 ] && return 0; done
    echo "warning: the machine did not become idle" >&2
}

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

start_server() { # name -> sets SPID
    case $1 in
        volley) taskset -c 0 "$VOLLEY" serve --addr $VADDR --workers 1 >"$OUT/volley.log" 2>&1 & ;;
        tt) taskset -c 0 "$BIN/tt_echo" --addr $TADDR --workers 1 >"$OUT/tt.log" 2>&1 & ;;
        ttf) taskset -c 0 "$BIN/tt_echo" --addr $FADDR --workers 1 --forward >"$OUT/ttf.log" 2>&1 & ;;
    esac
    SPID=$!
    pids+=("$SPID")
    sleep 0.5
}
url() { case $1 in volley) echo "ws://$VADDR/" ;; tt) echo "ws://$TADDR/" ;; ttf) echo "ws://$FADDR/" ;; esac; }

configs=(
    "c100-i1-64b|--conns 100 --inflight 1 --size 64"
    "c100-i16-64b|--conns 100 --inflight 16 --size 64"
    "c10-i1-16k|--conns 10 --inflight 1 --size 16384"
)

start_server volley; VPID=$SPID
start_server tt; TPID=$SPID
start_server ttf; FPID=$SPID
for round in $(seq 1 "$ROUNDS"); do
    for cfg in "${configs[@]}"; do
        name=${cfg%%|*}
        args=${cfg#*|}
        for attempt in 1 2 3 4 5; do
            wait_idle
            clean=1
            for server in volley tt ttf; do
                case $server in volley) pid=$VPID ;; tt) pid=$TPID ;; ttf) pid=$FPID ;; esac
                # shellcheck disable=SC2086
                "$BIN/loadgen" echo --url "$(url $server)" $args --binary --duration "$SECS" --warmup 2 \
                    --pin 1 --server-pid "$pid" --json "$OUT/$server-$name-$round.json" >"$OUT/$server-$name-$round.txt"
                other=$(grep -m1 '"other_cpu_cores"' "$OUT/$server-$name-$round.json" | sed -E 's/.*: ([^,]*),?$/\1/')
                echo "round $round $name $server: $(grep -E 'echoes in window|server CPU per message' "$OUT/$server-$name-$round.txt" | tr -s ' ' | tr '\n' ' ') other load $other cores"
                if awk -v o="$other" -v m="$MAX_OTHER" 'BEGIN { exit !(o > m) }'; then clean=0; fi
            done
            [ $clean = 1 ] && break
            echo "round $round $name: other processes were busy; running the group again"
        done
    done
done
cleanup
pids=()
sleep 1

# Idle memory: a fresh server each time, its RSS before the first connection and with 10,000 held.
for round in $(seq 1 "$ROUNDS"); do
    for server in volley tt; do
        start_server $server
        "$BIN/loadgen" connect --url "$(url $server)" --conns 10000 --hold 5 --pin 1 \
            --server-pid "$SPID" --json "$OUT/$server-idle10k-$round.json" >"$OUT/$server-idle10k-$round.txt"
        echo "round $round idle10k $server: $(grep -E 'opened|memory per connection' "$OUT/$server-idle10k-$round.txt" | tr -s ' ' | tr '\n' ' ')"
        kill "$SPID"; wait "$SPID" 2>/dev/null || true
        pids=()
        sleep 1
    done
done

# Medians.
field() { grep -m1 "^  \"$2\": " "$1" | sed -E 's/.*: ([^,]*),?$/\1/'; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
med() { for f in "$OUT"/$1-$2-*.json; do field "$f" "$3"; done | median; }
echo
# The ratio column is the median of the per-round ratios (each taken from two adjacent runs).
ratio() { for r in $(seq 1 "$ROUNDS"); do
    echo "$(field "$OUT/volley-$1-$r.json" "$3") $(field "$OUT/$2-$1-$r.json" "$3")" | awk '{print $1/$2}'
done | median; }
echo "| configuration | server | msg/s | server CPU/msg | CPU/msg vs volley (median of per-round ratios) |"
echo "|---|---|---|---|---|"
for cfg in "${configs[@]}"; do
    name=${cfg%%|*}
    for server in volley tt ttf; do
        r=$(med $server "$name" msgs_per_s); c=$(med $server "$name" server_cpu_us_per_msg)
        if [ $server = volley ]; then x="1"; else x="volley = $(ratio "$name" $server server_cpu_us_per_msg) x this"; fi
        printf "| %s | %s | %.0f | %.3f us | %s |\n" "$name" "$server" "$r" "$c" "$x"
    done
done
vm=$(med volley idle10k server_bytes_per_conn); tm=$(med tt idle10k server_bytes_per_conn)
echo
echo "| idle connections | volley | baseline |"
echo "|---|---|---|"
printf "| RSS delta / 10,000 connections | %.0f B | %.0f B |\n" "$vm" "$tm"
