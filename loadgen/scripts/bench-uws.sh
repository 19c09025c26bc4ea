#!/usr/bin/env bash
# volley against uWebSockets, side by side in one run: the five scenarios of
# ../shared/research/measured-peers.md (issue 14's table), for uWS ("uws"), volley on mio ("vmio")
# and volley on io_uring ("vuring"), every server one thread pinned to CPU 0, loadgen pinned to
# CPU 1, ROUNDS rounds (the servers' order rotated each round), medians; ratios are server CPU
# per message (or per delivery) over uWS' in the same round, then their median. A second table
# splits each server's time into kernel and user, with the floor: volley's kernel time alone
# over uWS' whole time per round (the ratio volley would reach if its own code cost nothing).
#
#   cargo build --release -p volley -p loadgen
#   UWS_MIRROR=... USOCKETS_MIRROR=... ../shared/peers/uws/build.sh     # -> /tmp/uws/uws-server
#   loadgen/scripts/bench-uws.sh [ROUNDS=3] [SECS=10]
#
# Environment: BIN, UWS, MAX_OTHER, ATTEMPTS, WAIT_IDLE as for bench-echo.sh and bench-fanout.sh
# (which this runs); OUT=dir (default /tmp/volley-bench-uws) holds both scripts' reports and logs;
# TABLE_ONLY=1 only prints the tables again from a finished run's OUT; PAIRED=0 skips the last
# table (the echo shapes with each server and uWS at the same time, bench-echo.sh's PAIRED=1).
# Without a uWS build it stops with a line saying how to build one.
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-10}
here=$(cd "$(dirname "$0")" && pwd)
UWS=${UWS:-/tmp/uws/uws-server}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
OUT=${OUT:-/tmp/volley-bench-uws}
[ -x "$UWS" ] || { echo "no uWS at $UWS: build it with ../shared/peers/uws/build.sh (its README says how), or set UWS=path" >&2; exit 1; }
mkdir -p "$OUT"
export UWS
if [ "${TABLE_ONLY:-0}" != 1 ]; then
# The least WebSocket echo server (bench/src/bin/ws_least.rs) runs beside them when it is built:
# its ratio is what the kernel's work plus the least protocol work costs, the reach of any
# server making these system calls.
echo_servers="uws vmio vuring least"
[ -x "$BIN/ws_least" ] || { echo "no $BIN/ws_least (cargo build --release -p volley-bench): the least-server column stays empty"; echo_servers="uws vmio vuring"; }
SERVERS="$echo_servers" CONFIGS="c100-i1-20t c100-i16-20t c200-i1-16k" IDLE=1 OUT="$OUT/echo" \
    "$here/bench-echo.sh" "$ROUNDS" "$SECS" | tee "$OUT/echo.txt"
SERVERS="uws vmio vuring" CONFIGS="s1k-r50" SIZE=64 OUT="$OUT/fanout" \
    "$here/bench-fanout.sh" "$ROUNDS" "$SECS" | tee "$OUT/fanout.txt"
# The echo shapes again, each server at the same time as uWS (bench-echo.sh's PAIRED=1), with
# the least server on io_uring too.
if [ "${PAIRED:-1}" = 1 ]; then
    paired_servers="uws vmio vuring"
    [ -x "$BIN/ws_least" ] && paired_servers="$paired_servers least leastu"
    PAIRED=1 SERVERS="$paired_servers" CONFIGS="c100-i1-20t c100-i16-20t c200-i1-16k" OUT="$OUT/paired" \
        "$here/bench-echo.sh" "$ROUNDS" "$SECS" | tee "$OUT/paired.txt"
    PAIRED=1 SERVERS="uws vmio vuring" CONFIGS="s1k-r50" SIZE=64 OUT="$OUT/paired-fanout" \
        "$here/bench-fanout.sh" "$ROUNDS" "$SECS" | tee "$OUT/paired-fanout.txt"
fi
fi

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
# med DIR SERVER CONFIG FIELD: the median of FIELD over the rounds
med() { for f in "$OUT/$1/$2-$3"-[0-9]*.json; do jq "$4" "$f"; done | median; }
# ratio DIR SERVER CONFIG FIELD: the median over rounds of SERVER's FIELD / uws' FIELD in that round
ratio() {
    for r in $(seq 1 "$ROUNDS"); do
        jq -n --slurpfile a "$OUT/$1/$2-$3-$r.json" --slurpfile b "$OUT/$1/uws-$3-$r.json" "\$a[0]$4 / \$b[0]$4"
    done | median
}
# least_ratio DIR CONFIG FIELD: the least server's ratio, or a dash where it did not run.
least_ratio() {
    if [ -f "$OUT/$1/least-$2-1.json" ]; then printf "%.2fx" "$(ratio "$1" least "$2" "$3")"; else printf -- "-"; fi
}
row() { # label dir config field unit target
    printf "| %s | %.2f %s | %.2fx | %.2fx | %s | %s |\n" "$1" "$(med "$2" uws "$3" "$4")" "$5" \
        "$(ratio "$2" vmio "$3" "$4")" "$(ratio "$2" vuring "$3" "$4")" "$(least_ratio "$2" "$3" "$4")" "$6"
}
# Kernel (system) and user time per message, from the server's /proc times in each round.
ks() { echo "$1 * .server.sys_us / .server.cpu_us"; }
us() { echo "$1 * (1 - .server.sys_us / .server.cpu_us)"; }
# floor DIR SERVER CONFIG FIELD: the median over rounds of SERVER's kernel time alone over uws'
# whole FIELD: the ratio SERVER would have if its own code (user space) cost nothing.
floor() {
    for r in $(seq 1 "$ROUNDS"); do
        jq -n --slurpfile a "$OUT/$1/$2-$3-$r.json" --slurpfile b "$OUT/$1/uws-$3-$r.json" \
            "\$a[0]$4 * \$a[0].server.sys_us / \$a[0].server.cpu_us / \$b[0]$4"
    done | median
}
split_row() { # label dir config field target
    printf "| %s |" "$1"
    for s in uws vmio vuring least; do
        if [ -f "$OUT/$2/$s-$3-1.json" ]; then
            printf " %.3f + %.3f |" "$(med "$2" "$s" "$3" "$(ks "$4")")" "$(med "$2" "$s" "$3" "$(us "$4")")"
        else
            printf " - |"
        fi
    done
    printf " %.2fx | %.2fx | %s |\n" "$(floor "$2" vmio "$3" "$4")" "$(floor "$2" vuring "$3" "$4")" "$5"
}
lat() { # label dir config: p50/p99 of each server
    printf "| %s | %s |\n" "$1" "$(for s in uws vmio vuring least; do
        [ -f "$OUT/$2/$s-$3-1.json" ] || continue
        printf '%s %.0f/%.0f us; ' "$s" "$(med "$2" "$s" "$3" '.latency.percentiles.p50 / 1e3')" \
            "$(med "$2" "$s" "$3" '.latency.percentiles.p99 / 1e3')"; done)"
}
{
echo
echo "## volley against uWebSockets, $(date -u +%F), $ROUNDS rounds of $SECS s, medians"
echo
echo "Server CPU per message (per delivery for the broadcast), uWS' absolute figure and volley's ratio to it"
echo "in the same round (below 1.00x: volley spends less). \"least server\": bench/src/bin/ws_least.rs, the least"
echo "WebSocket echo server on epoll (no runtime), the reach of any server making the same system calls:"
echo
echo "| scenario | uWS | volley mio | volley io_uring | least server | target |"
echo "|---|---|---|---|---|---|"
row "echo, 100 connections x 1 in flight, 20 B text" echo c100-i1-20t .server_cpu_us_per_msg us "<= 0.90x"
row "echo, 100 connections x 16 in flight, 20 B text" echo c100-i16-20t .server_cpu_us_per_msg us "<= 0.85x"
row "echo, 200 connections x 1 in flight, 16 KiB" echo c200-i1-16k .server_cpu_us_per_msg us "<= 0.90x"
row "broadcast 64 B at 50/s to 1,000 subscribers" fanout s1k-r50 .server_cpu_us_per_delivery us "<= 0.75x"
row "idle, server bytes per connection at 10,000" echo idle10k .server_bytes_per_conn B "<= 200 B"
printf "| (idle, absolute) | %.0f B | %.0f B | %.0f B | | |\n" "$(med echo uws idle10k .server_bytes_per_conn)" \
    "$(med echo vmio idle10k .server_bytes_per_conn)" "$(med echo vuring idle10k .server_bytes_per_conn)"
echo
echo "Where it goes: kernel + user time per message in us (medians), and the floor: volley's kernel time"
echo "alone over uWS' whole time in the same round, the ratio volley would reach if its own code cost nothing:"
echo
echo "| scenario | uWS | volley mio | volley io_uring | least server | floor mio | floor io_uring | target |"
echo "|---|---|---|---|---|---|---|---|"
split_row "echo 100 x 1, 20 B" echo c100-i1-20t .server_cpu_us_per_msg "<= 0.90x"
split_row "echo 100 x 16, 20 B" echo c100-i16-20t .server_cpu_us_per_msg "<= 0.85x"
split_row "echo 200 x 1, 16 KiB" echo c200-i1-16k .server_cpu_us_per_msg "<= 0.90x"
split_row "broadcast 1,000 subscribers" fanout s1k-r50 .server_cpu_us_per_delivery "<= 0.75x"
echo
echo "Latency p50/p99 (echo: round trip; broadcast: publish to delivery):"
echo
echo "| scenario | uws, vmio, vuring (, least) |"
echo "|---|---|"
lat "echo 100 x 1, 20 B" echo c100-i1-20t
lat "echo 100 x 16, 20 B" echo c100-i16-20t
lat "echo 200 x 1, 16 KiB" echo c200-i1-16k
lat "broadcast 1,000 subscribers" fanout s1k-r50
if [ -f "$OUT/paired.txt" ]; then
    echo
    echo "The echo shapes with each server and uWS running at the same time (both on CPU 0, a loadgen each on"
    echo "CPU 1; the broadcast: two fan-out loads): the machine's drift cancels within a pair. \"least\"/\"leastu\": the"
    echo "least server on epoll / io_uring."
    sed -n '/^Paired with uWS/,$p' "$OUT/paired.txt" | tail -n +2
    # The broadcast's rows join the echo table (its title, blank line, header and rule dropped).
    if [ -f "$OUT/paired-fanout.txt" ]; then
        sed -n '/^Paired with uWS/,$p' "$OUT/paired-fanout.txt" | tail -n +5
    fi
fi
} | tee "$OUT/table.md"
