#!/usr/bin/env bash
# Where a server's CPU goes under one load: system calls and io_uring events per message
# (perf stat on tracepoints), and (PROFILE=1) a sampled kernel+user profile. Runs one server
# and one loadgen run, and attaches perf to the server for PERF_SECS in the middle of the
# measured window. TRACE=1 first records, for 1 s, the syscalls that end a loop turn and the
# io_uring submit/complete tracepoints with timestamps, so the loop turns can be counted per event.
#
#   loadgen/scripts/bench-syscalls.sh SERVER SCENARIO NAME -- LOADGEN-OPTIONS...
#     SERVER:   vmio | vuring | vuringzc | tt | ttf (echo) or tt (fanout: tt_broadcast)
#     SCENARIO: echo | fanout
#   e.g. BIN=/work/bench-bin loadgen/scripts/bench-syscalls.sh vuring echo c100-i1-64b -- --conns 100 --inflight 1 --size 64
#
# Environment: BIN (binaries' directory), OUT (default /tmp/volley-bench-syscalls), SECS (loadgen
# window, default 10), PERF_SECS (default 3), PROFILE=1, TRACE=1, ZC_MIN (vuringzc, default 4096).
# Needs perf with tracepoints (root or perf_event_paranoid <= -1) and jq.
#
# Per-message figures divide the perf counts by (loadgen's messages or deliveries per second x
# PERF_SECS): the load is steady over the window, so that is the work done while perf counted.
# perf's own cost while counting tracepoints is small but not zero: the CPU figures of these
# runs are not the benchmark's; take those from bench-echo.sh / bench-fanout.sh.
set -euo pipefail
ulimit -n 20000
SERVER=$1; SCENARIO=$2; NAME=$3; shift 3; [ "${1:-}" = "--" ] && shift
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
OUT=${OUT:-/tmp/volley-bench-syscalls}
SECS=${SECS:-16} # long enough for perf stat (slow to attach 360 tracepoints), the trace and the profile
PERF_SECS=${PERF_SECS:-3}
ZC_MIN=${ZC_MIN:-4096}
mkdir -p "$OUT"
ADDR=127.0.0.1:9201
mode=echo; [ "$SCENARIO" = fanout ] && mode=broadcast
case $SERVER in
    vmio) taskset -c 0 "$BIN/volley" serve --mode $mode --addr $ADDR --workers 1 --backend mio >"$OUT/server.log" 2>&1 & ;;
    vuring) taskset -c 0 "$BIN/volley" serve --mode $mode --addr $ADDR --workers 1 --backend uring >"$OUT/server.log" 2>&1 & ;;
    vuringzc) taskset -c 0 "$BIN/volley" serve --mode $mode --addr $ADDR --workers 1 --backend uring --send-zc-min "$ZC_MIN" >"$OUT/server.log" 2>&1 & ;;
    tt) if [ "$SCENARIO" = fanout ]; then taskset -c 0 "$BIN/tt_broadcast" --addr $ADDR --workers 1 >"$OUT/server.log" 2>&1 &
        else taskset -c 0 "$BIN/tt_echo" --addr $ADDR --workers 1 >"$OUT/server.log" 2>&1 & fi ;;
    ttf) taskset -c 0 "$BIN/tt_echo" --addr $ADDR --workers 1 --forward >"$OUT/server.log" 2>&1 & ;;
esac
SPID=$!
trap 'kill $SPID 2>/dev/null || true' EXIT
sleep 0.5
f="$OUT/$SERVER-$SCENARIO-$NAME"
extra=(--binary); [ "$SCENARIO" = fanout ] && extra=()
"$BIN/loadgen" "$SCENARIO" --url "ws://$ADDR/" "$@" "${extra[@]}" --duration "$SECS" --warmup 2 --pin 1 \
    --server-pid "$SPID" --json "$f.json" >"$f.txt" &
LPID=$!
# Connections up, warm-up over, a little into the window (10,000 subscribers take ~1-2 s to connect).
sleep "${PERF_DELAY:-$([ "$SCENARIO" = fanout ] && echo 6 || echo 4)}"
uring_ev=io_uring:io_uring_submit_req,io_uring:io_uring_complete,io_uring:io_uring_task_work_run,io_uring:io_uring_local_work_run,io_uring:io_uring_cqring_wait,io_uring:io_uring_queue_async_work,io_uring:io_uring_poll_arm,io_uring:io_uring_task_add,io_uring:io_uring_short_write
if [ "${TRACE:-0}" = 1 ]; then
    perf record -q -e syscalls:sys_enter_io_uring_enter -e syscalls:sys_enter_epoll_wait -e syscalls:sys_enter_recvfrom \
        -e io_uring:io_uring_submit_req -e io_uring:io_uring_complete -e io_uring:io_uring_task_work_run \
        -p "$SPID" -o "$f.trace.data" -- sleep 1 2>/dev/null
    perf script -i "$f.trace.data" -F time,event,trace >"$f.trace.txt" 2>/dev/null
    rm -f "$f.trace.data"
fi
if [ "${PROFILE:-0}" = 1 ]; then
    # cpu-clock sampling of CPU 0, where the server is pinned (this VM has no hardware counters;
    # `-p PID` sampling recorded no samples here), flat by thread and symbol.
    perf record -q -e cpu-clock -F 997 -a -C 0 -o "$f.prof.data" -- sleep "$PERF_SECS" 2>/dev/null
    { perf report -i "$f.prof.data" --sort comm,sym --stdio 2>/dev/null | grep -E '^ +[0-9]' >"$f.profile.txt"; } || true
    rm -f "$f.prof.data"
fi
# Last: attaching to ~360 tracepoints takes seconds (the window must outlast it; see SECS).
perf stat -x, -e 'syscalls:sys_enter_*' -e "$uring_ev" -e task-clock,context-switches,cpu-migrations,page-faults \
    -p "$SPID" -o "$f.perfstat" -- sleep "$PERF_SECS"
wait $LPID || true
rate=$(jq '.msgs_per_s // .deliveries_per_s' "$f.json")
per=$(awk -v r="$rate" -v s="$PERF_SECS" 'BEGIN { print r * s }')
echo "$SERVER $SCENARIO $NAME: $(jq '{msgs_per_s, deliveries_per_s, server_cpu_us_per_msg, server_cpu_us_per_delivery, other_cpu_cores}' -c "$f.json")"
echo "  per message/delivery (counted over $PERF_SECS s = $per messages/deliveries):"
awk -F, -v n="$per" '$1 ~ /^[0-9.]+$/ && $1 > 0 { printf "    %-40s %12.0f  %10.5f\n", $3, $1, $1 / n }' "$f.perfstat" | tee "$f.per-msg.txt"
