#!/usr/bin/env bash
# Echo benchmarks, side by side in one run: volley on its mio backend ("vmio") and on its io_uring
# backend ("vuring"), against the tokio-tungstenite baseline (bench/src/bin/tt_echo.rs) in both of
# its idiomatic forms ("tt": `ws.next()` + `ws.send(msg)`; "ttf": `read.forward(write)`). In each
# round and configuration the servers are run one after the other (vmio, vuring, tt, ttf, vmio, ...)
# so that the virtual machine's placement changes hit all; then (IDLE=1) server memory per idle
# connection at 10,000.
#
#   cargo build --release -p volley -p volley-bench -p loadgen
#   loadgen/scripts/bench-echo.sh [ROUNDS=3] [SECS=10]
#
# Environment:
#   BIN=dir          every binary (volley, tt_echo, loadgen) comes from this directory
#                    (default $CARGO_TARGET_DIR/release, or target/release)
#   SERVERS="..."    the servers to run, in this order in round 1, rotated by one each round
#                    (default "vmio vuring tt ttf"); also
#                    "vuringzc": io_uring with --send-zc-min $ZC_MIN (default 4096)
#                    "vuringbig": io_uring with --uring-buffers $BIG_BUFS (default 1024x16384)
#                    "least": bench/src/bin/ws_least.rs, the least WebSocket echo server on
#                    epoll (an instrument: the kernel's work plus the least protocol work)
#                    "leastu": the same server on io_uring (ws_least --uring)
#   UWS=path         the uWebSockets peer server (built by ../shared/peers/uws/build.sh beside the
#                    project; default /tmp/uws/uws-server), run as "uws" ("echo" mode, one loop):
#                    in the default SERVERS when it is built, skipped with a line saying so if not
#   BASE=path        an earlier volley binary, run as "bmio" and "buring" (add them to SERVERS):
#                    before/after comparisons of a change, side by side in one run (ratios
#                    vmio/bmio and vuring/buring)
#   CONFIGS="..."    configuration names to run (default: c100-i1-64b c100-i16-64b c10-i1-16k;
#                    also available: c10-i1-64k, and c100-i1-20t c100-i16-20t c200-i1-16k, the
#                    scenarios of ../shared/research/measured-peers.md, 20 B text or 16 KiB binary)
#   IDLE=0|1         measure idle memory at 10,000 connections afterwards (default 1)
#   OUT=dir          where the JSON reports go (default /tmp/volley-bench-echo)
#   MAX_OTHER=cores  a group is run again when another process used more than this (default 0.10)
#   ATTEMPTS=n       at most this many attempts per group (default 3)
#   WAIT_IDLE=0      do not wait for an idle machine before each group (ratios on a busy machine)
#   PAIRED=1         run each server at the same time as uWS (both on CPU 0, a loadgen each on
#                    CPU 1) and report its CPU per message over uWS' in the same pair: the
#                    machine's drift cancels (ratios within a few percent from pair to pair);
#                    the absolute figures are not those of a server alone. Needs uws; no idle
#                    memory, no other tables. PAIR_WITH=bmio pairs with the BASE binary instead:
#                    a change measured against the build before it
#
# Servers are pinned to CPU 0 (one worker / one runtime thread), loadgen to CPU 1. Each run's
# JSON report is kept in $OUT; the medians and the per-round ratios are printed as Markdown
# tables at the end. Needs 2 CPUs, jq, and an open-files limit of at least 10,100 for IDLE=1.
#
# On a shared machine: each (round, configuration) group of runs starts only once the machine
# has been idle for 2 s, and is run again (up to ATTEMPTS times) when loadgen reports that
# other processes used more than MAX_OTHER cores during any of its windows.
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-10}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
VOLLEY=$BIN/volley
OUT=${OUT:-/tmp/volley-bench-echo}
MAX_OTHER=${MAX_OTHER:-0.10}
ATTEMPTS=${ATTEMPTS:-3}
ZC_MIN=${ZC_MIN:-4096}
IDLE=${IDLE:-1}
UWS=${UWS:-/tmp/uws/uws-server}
read -r -a SERVERS <<<"${SERVERS:-vmio vuring tt ttf uws}"
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.txt
. "$(dirname "$0")/lib.sh"
skip_unbuilt_uws
# tt_echo and ws_least (cargo build --release -p volley-bench) only when their servers run.
want_bins=(volley loadgen)
for s in "${SERVERS[@]}"; do case $s in tt | ttf) want_bins+=(tt_echo) ;; least | leastu) want_bins+=(ws_least) ;; esac; done
need_bins "$BIN" "${want_bins[@]}"

addr() { case $1 in vmio) echo 127.0.0.1:9001 ;; vuring) echo 127.0.0.1:9002 ;; bmio) echo 127.0.0.1:9011 ;; uws) echo 127.0.0.1:9201 ;; buring) echo 127.0.0.1:9012 ;; vuringzc) echo 127.0.0.1:9003 ;; vuringbig) echo 127.0.0.1:9004 ;;
    tt) echo 127.0.0.1:9101 ;; ttf) echo 127.0.0.1:9102 ;; least) echo 127.0.0.1:9103 ;; leastu) echo 127.0.0.1:9104 ;; esac; }
start_server() { # name -> sets SPID
    local a; a=$(addr "$1")
    case $1 in
        vmio) taskset -c 0 "$VOLLEY" serve --addr "$a" --workers 1 --backend mio >"$OUT/$1.log" 2>&1 & ;;
        vuring) taskset -c 0 "$VOLLEY" serve --addr "$a" --workers 1 --backend uring >"$OUT/$1.log" 2>&1 & ;;
        bmio) taskset -c 0 "$BASE" serve --addr "$a" --workers 1 --backend mio >"$OUT/$1.log" 2>&1 & ;;
        uws) taskset -c 0 "$UWS" --port "${a##*:}" echo >"$OUT/$1.log" 2>&1 & ;;
        buring) taskset -c 0 "$BASE" serve --addr "$a" --workers 1 --backend uring >"$OUT/$1.log" 2>&1 & ;;
        vuringzc) taskset -c 0 "$VOLLEY" serve --addr "$a" --workers 1 --backend uring --send-zc-min "$ZC_MIN" >"$OUT/$1.log" 2>&1 & ;;
        vuringbig) taskset -c 0 "$VOLLEY" serve --addr "$a" --workers 1 --backend uring --uring-buffers "${BIG_BUFS:-1024x16384}" >"$OUT/$1.log" 2>&1 & ;;
        tt) taskset -c 0 "$BIN/tt_echo" --addr "$a" --workers 1 >"$OUT/$1.log" 2>&1 & ;;
        ttf) taskset -c 0 "$BIN/tt_echo" --addr "$a" --workers 1 --forward >"$OUT/$1.log" 2>&1 & ;;
        least) taskset -c 0 "$BIN/ws_least" --addr "$a" >"$OUT/$1.log" 2>&1 & ;;
        leastu) taskset -c 0 "$BIN/ws_least" --uring --addr "$a" >"$OUT/$1.log" 2>&1 & ;;
        *) echo "unknown server $1" >&2; exit 1 ;;
    esac
    SPID=$!
    pids+=("$SPID")
    sleep 0.5
}

all_configs=(
    "c100-i1-64b|--conns 100 --inflight 1 --size 64 --binary"
    "c100-i16-64b|--conns 100 --inflight 16 --size 64 --binary"
    "c10-i1-16k|--conns 10 --inflight 1 --size 16384 --binary"
    "c10-i1-64k|--conns 10 --inflight 1 --size 65536 --binary"
    # The scenarios of ../shared/research/measured-peers.md (bench-uws.sh runs them).
    "c100-i1-20t|--conns 100 --inflight 1 --size 20 --text"
    "c100-i16-20t|--conns 100 --inflight 16 --size 20 --text"
    "c200-i1-16k|--conns 200 --inflight 1 --size 16384 --binary"
)
read -r -a want <<<"${CONFIGS:-c100-i1-64b c100-i16-64b c10-i1-16k}"
configs=()
for w in "${want[@]}"; do
    for c in "${all_configs[@]}"; do [ "${c%%|*}" = "$w" ] && configs+=("$c"); done
done

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
    paired_main echo .server_cpu_us_per_msg "a message"
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
                "$BIN/loadgen" echo --url "ws://$(addr "$server")/" $args --duration "$SECS" --warmup 2 \
                    --pin 1 --server-pid "${SP[$server]}" --json "$f.json" >"$f.txt"
                other=$(jq .other_cpu_cores "$f.json")
                echo "round $round $name $server: $(grep -E 'echoes in window|server CPU per message' "$f.txt" | tr -s ' ' | tr '\n' ' ') other load $other cores"
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

if [ "$IDLE" = 1 ]; then
    # Idle memory: a fresh server each time, its RSS before the first connection and with 10,000 held.
    for round in $(seq 1 "$ROUNDS"); do
        for server in "${SERVERS[@]}"; do
            [ "$server" = ttf ] && continue
            start_server "$server"
            "$BIN/loadgen" connect --url "ws://$(addr "$server")/" --conns 10000 --hold 5 --pin 1 \
                --server-pid "$SPID" --json "$OUT/$server-idle10k-$round.json" >"$OUT/$server-idle10k-$round.txt"
            echo "round $round idle10k $server: $(grep -E 'opened|memory per connection' "$OUT/$server-idle10k-$round.txt" | tr -s ' ' | tr '\n' ' ')"
            kill "$SPID"; wait "$SPID" 2>/dev/null || true
            pids=()
            sleep 1
        done
    done
fi

# Tables.
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
med() { for f in "$OUT"/$1-$2-[0-9]*.json; do jq "$3" "$f"; done | median; }
# Per-round ratio a/b of CPU per message (two runs of the same group, seconds apart).
rr() { jq -n --slurpfile a "$OUT/$1-$3-$4.json" --slurpfile b "$OUT/$2-$3-$4.json" \
    '$a[0].server_cpu_us_per_msg / $b[0].server_cpu_us_per_msg * 1000 | round / 1000'; }
has() { for s in "${SERVERS[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
pairs=()
has vmio && has bmio && pairs+=("vmio/bmio")
has vuring && has buring && pairs+=("vuring/buring")
has vmio && has vuring && pairs+=("vuring/vmio")
for a in vmio vuring least leastu; do has $a && has uws && pairs+=("$a/uws"); done
for a in vmio vuring; do has $a && has least && pairs+=("$a/least"); done
has vuring && has leastu && pairs+=("vuring/leastu")
has vuring && has vuringzc && pairs+=("vuringzc/vuring")
has vmio && has vuringbig && pairs+=("vuringbig/vmio")
has vuring && has vuringbig && pairs+=("vuringbig/vuring")
for b in tt ttf; do for a in vmio vuring; do has $a && has $b && pairs+=("$a/$b"); done; done
echo
echo "| configuration | server | msg/s | server CPU/msg | of it kernel | other load (max) |"
echo "|---|---|---|---|---|---|"
for cfg in "${configs[@]}"; do
    name=${cfg%%|*}
    for s in "${SERVERS[@]}"; do
        printf "| %s | %s | %.0f | %.3f us | %.0f%% | %.3f |\n" "$name" "$s" "$(med "$s" "$name" .msgs_per_s)" \
            "$(med "$s" "$name" .server_cpu_us_per_msg)" "$(med "$s" "$name" '100*.server.sys_us/.server.cpu_us')" \
            "$(for f in "$OUT/$s-$name"-[0-9]*.json; do jq .other_cpu_cores "$f"; done | sort -g | tail -1)"
    done
done
echo
echo "Ratios of server CPU per message, per round (median last):"
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
if [ "$IDLE" = 1 ]; then
    echo
    echo "| idle connections | $(printf '%s | ' "${SERVERS[@]/ttf/}")"
    printf "| RSS delta / 10,000 connections | "
    for s in "${SERVERS[@]}"; do [ "$s" = ttf ] && continue; printf "%.0f B | " "$(med "$s" idle10k .server_bytes_per_conn)"; done
    echo
fi
