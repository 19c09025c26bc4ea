#!/usr/bin/env bash
# Fan-out benchmark: volley's broadcast mode (mio backend "vmio" and io_uring backend "vuring") vs
# the tokio-tungstenite + tokio::sync::broadcast baseline ("tt", bench/src/bin/tt_broadcast.rs),
# side by side in one run, alternated per round (vmio, vuring, tt, vmio, ...).
#
#   cargo build --release -p volley -p volley-bench -p loadgen
#   loadgen/scripts/bench-fanout.sh [ROUNDS=3] [SECS=10]
#
# Environment:
#   BIN=dir          every binary (volley, tt_broadcast, loadgen) comes from this directory
#                    (default $CARGO_TARGET_DIR/release, or target/release)
#   SERVERS="..."    servers to run, in this order in round 1, rotated by one each round
#                    (default "vmio vuring tt"); also "vuringzc":
#                    io_uring with --send-zc-min $ZC_MIN (default 4096)
#   UWS=path         the uWebSockets peer server (built by ../shared/peers/uws/build.sh beside the
#                    project; default /tmp/uws/uws-server), run as "uws" ("broadcast" mode, one loop):
#                    in the default SERVERS when it is built, skipped with a line saying so if not
#   BASE=path        an earlier volley binary, run as "bmio" and "buring" (add them to SERVERS):
#                    before/after comparisons of a change, side by side in one run (ratios
#                    vmio/bmio and vuring/buring)
#   CONFIGS="..."    configuration names to run (default: all five below)
#   ONLY=i           run only the i-th configuration (0-based; older form of CONFIGS)
#   SIZE=bytes       event payload size (default 64)
#   OUT=dir          where the JSON reports go (default /tmp/volley-bench-fanout)
#   MAX_OTHER=cores, ATTEMPTS=n: see below
#   PAIRED=1         run each server at the same time as uWS, a loadgen each (as bench-echo.sh's
#                    PAIRED=1): CPU per delivery over uWS' in the same pair
#
# Servers run one worker pinned to CPU 0, loadgen one thread pinned to CPU 1. Every run's
# JSON report is kept in $OUT; medians and per-round ratios are printed as Markdown tables at
# the end. Each group (round, configuration) starts once the machine has been idle for 2 s and
# is run again (up to ATTEMPTS times, default 2) when loadgen reports that other processes
# used more than MAX_OTHER cores (default 0.10) during any of its windows. Needs jq.
set -euo pipefail
ulimit -n 20000 # 10,000 subscribers + publishers + slack
ROUNDS=${1:-3}
SECS=${2:-10}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
VOLLEY=$BIN/volley
OUT=${OUT:-/tmp/volley-bench-fanout}
MAX_OTHER=${MAX_OTHER:-0.10}
ATTEMPTS=${ATTEMPTS:-2}
SIZE=${SIZE:-64}
ZC_MIN=${ZC_MIN:-4096}
UWS=${UWS:-/tmp/uws/uws-server}
read -r -a SERVERS <<<"${SERVERS:-vmio vuring tt uws}"
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.txt
. "$(dirname "$0")/lib.sh"
skip_unbuilt_uws
need_bins "$BIN" volley tt_broadcast loadgen

addr() { case $1 in vmio) echo 127.0.0.1:9001 ;; vuring) echo 127.0.0.1:9002 ;; bmio) echo 127.0.0.1:9011 ;; uws) echo 127.0.0.1:9201 ;; buring) echo 127.0.0.1:9012 ;; vuringzc) echo 127.0.0.1:9003 ;;
    tt) echo 127.0.0.1:9102 ;; esac; }
start_server() { # name -> sets SPID
    local a; a=$(addr "$1")
    case $1 in
        vmio) taskset -c 0 "$VOLLEY" serve --mode broadcast --backend mio --workers 1 --pin --addr "$a" >"$OUT/$1.log" 2>&1 & ;;
        vuring) taskset -c 0 "$VOLLEY" serve --mode broadcast --backend uring --workers 1 --pin --addr "$a" >"$OUT/$1.log" 2>&1 & ;;
        bmio) taskset -c 0 "$BASE" serve --mode broadcast --backend mio --workers 1 --pin --addr "$a" >"$OUT/$1.log" 2>&1 & ;;
        uws) taskset -c 0 "$UWS" --port "${a##*:}" broadcast >"$OUT/$1.log" 2>&1 & ;;
        buring) taskset -c 0 "$BASE" serve --mode broadcast --backend uring --workers 1 --pin --addr "$a" >"$OUT/$1.log" 2>&1 & ;;
        vuringzc) taskset -c 0 "$VOLLEY" serve --mode broadcast --backend uring --workers 1 --pin --addr "$a" \
            --send-zc-min "$ZC_MIN" >"$OUT/$1.log" 2>&1 & ;;
        tt) taskset -c 0 "$BIN/tt_broadcast" --addr "$a" --workers 1 >"$OUT/$1.log" 2>&1 & ;;
        *) echo "unknown server $1" >&2; exit 1 ;;
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
if [ -n "${CONFIGS:-}" ]; then
    read -r -a want <<<"$CONFIGS"
    picked=()
    for w in "${want[@]}"; do for c in "${configs[@]}"; do [ "${c%%|*}" = "$w" ] && picked+=("$c"); done; done
    configs=("${picked[@]}")
fi

# The servers in round r's order: the list rotated by r - 1, so each server goes first, in the
# middle and last equally often, and a drift of the machine's speed within a round (these VMs
# change pace by tens of percent over minutes) does not always favour the same one.
rotated() {
    local n=${#SERVERS[@]} k=$((($1 - 1) % ${#SERVERS[@]})) i
    for ((i = 0; i < n; i++)); do echo "${SERVERS[(k + i) % n]}"; done
}
declare -A SP
for s in "${SERVERS[@]}"; do start_server "$s"; SP[$s]=$SPID; done
# PAIRED=1: each server at the same time as uWS (lib.sh).
if [ "${PAIRED:-0}" = 1 ]; then
    paired_main fanout .server_cpu_us_per_delivery "a delivery" --size "$SIZE"
    exit 0
fi
for round in $(seq 1 "$ROUNDS"); do
    for cfg in "${configs[@]}"; do
        name=${cfg%%|*}
        args=${cfg#*|}
        for attempt in $(seq 1 "$ATTEMPTS"); do
            wait_idle
            clean=1
            for server in $(rotated "$round"); do
                f="$OUT/$server-$name-$round"
                # shellcheck disable=SC2086
                "$BIN/loadgen" fanout --url "ws://$(addr "$server")/" $args --size "$SIZE" --duration "$SECS" --warmup 2 \
                    --pin 1 --server-pid "${SP[$server]}" --json "$f.json" >"$f.txt" || true
                other=$(jq .other_cpu_cores "$f.json")
                echo "round $round $name $server: $(grep -E 'deliveries in window|^  lost|server CPU per delivery' "$f.txt" | tr -s ' ' | tr '\n' ' ') other load $other cores"
                if awk -v o="$other" -v m="$MAX_OTHER" 'BEGIN { exit !(o > m) }'; then clean=0; fi
            done
            [ $clean = 1 ] && break
            echo "round $round $name: other processes were busy"
        done
    done
done

# Tables.
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
med() { for f in "$OUT"/$1-$2-[0-9]*.json; do jq "$3" "$f"; done | median; }
sum() { for f in "$OUT"/$1-$2-[0-9]*.json; do jq "$3" "$f"; done | awk '{s+=$1} END {print s+0}'; }
rr() { jq -n --slurpfile a "$OUT/$1-$3-$4.json" --slurpfile b "$OUT/$2-$3-$4.json" \
    '$a[0].server_cpu_us_per_delivery / $b[0].server_cpu_us_per_delivery * 1000 | round / 1000'; }
has() { for s in "${SERVERS[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
pairs=()
has vmio && has bmio && pairs+=("vmio/bmio")
has vuring && has buring && pairs+=("vuring/buring")
has vmio && has vuring && pairs+=("vuring/vmio")
for a in vmio vuring; do has $a && has uws && pairs+=("$a/uws"); done
has vuring && has vuringzc && pairs+=("vuringzc/vuring")
for a in vmio vuring; do has $a && has tt && pairs+=("$a/tt"); done
echo
echo "| configuration | server | deliveries/s | latency p50 | latency p99 | server CPU/delivery | of it kernel | lost (all rounds) | other load (max) |"
echo "|---|---|---|---|---|---|---|---|---|"
for cfg in "${configs[@]}"; do
    name=${cfg%%|*}
    for s in "${SERVERS[@]}"; do
        printf "| %s | %s | %.0f | %.1f ms | %.1f ms | %.3f us | %.0f%% | %s | %.3f |\n" "$name" "$s" \
            "$(med "$s" "$name" .deliveries_per_s)" \
            "$(med "$s" "$name" '.latency.percentiles.p50 / 1e6')" "$(med "$s" "$name" '.latency.percentiles.p99 / 1e6')" \
            "$(med "$s" "$name" .server_cpu_us_per_delivery)" "$(med "$s" "$name" '100*.server.sys_us/.server.cpu_us')" \
            "$(sum "$s" "$name" .lost)" \
            "$(for f in "$OUT/$s-$name"-[0-9]*.json; do jq .other_cpu_cores "$f"; done | sort -g | tail -1)"
    done
done
echo
echo "Ratios of server CPU per delivery, per round (median last):"
echo
echo "| configuration | ratio | $(for r in $(seq 1 "$ROUNDS"); do printf 'round %s | ' "$r"; done)median |"
echo "|---|---|$(for _ in $(seq 1 "$ROUNDS"); do printf -- '---|'; done)---|"
for cfg in "${configs[@]}"; do
    name=${cfg%%|*}
    for p in "${pairs[@]}"; do
        a=${p%/*}; b=${p#*/}
        vals=(); for r in $(seq 1 "$ROUNDS"); do vals+=("$(rr "$a" "$b" "$name" "$r")"); done
        printf "| %s | %s | %s | %s |\n" "$name" "$p" "$(IFS='|'; echo "${vals[*]}" | sed 's/|/ | /g')" \
            "$(printf '%s\n' "${vals[@]}" | median)"
    done
done
