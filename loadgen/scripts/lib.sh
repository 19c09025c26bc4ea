# Shared by the benchmark scripts (sourced, not run): the idle-machine check, the servers'
# clean-up, and the binaries' check.

busy_pct() { # CPU busy % of the whole machine over $1 s
    local a b
    a=($(head -1 /proc/stat)); sleep "$1"; b=($(head -1 /proc/stat))
    local busy=$(( (b[1]+b[2]+b[3]+b[6]+b[7]+b[8]) - (a[1]+a[2]+a[3]+a[6]+a[7]+a[8]) ))
    local idle=$(( (b[4]+b[5]) - (a[4]+a[5]) ))
    echo $(( 100 * busy / (busy + idle + 1) ))
}
wait_idle() { # until the machine is idle (<= 5% busy over 2 s), at most 20 minutes; WAIT_IDLE=0: not at all
    [ "${WAIT_IDLE:-1}" = 0 ] && return 0
    for _ in $(seq 1 600); do [ "$(busy_pct 2)" -le 5 ] && return 0; done
    echo "warning: the machine did not become idle" >&2
}

# Servers started by the script (their pids in `pids`) are killed when it exits.
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

need_bins() { # BIN_DIR NAME... : every binary must be there
    local dir=$1; shift
    for b in "$@"; do [ -x "$dir/$b" ] || { echo "no $dir/$b" >&2; exit 1; }; done
    echo "binaries from $dir"
}

skip_unbuilt_uws() { # takes "uws" out of SERVERS, with a line saying so, when $UWS is not built
    [ -x "$UWS" ] && return 0
    local i
    for i in "${!SERVERS[@]}"; do [ "${SERVERS[$i]}" = uws ] && unset 'SERVERS[i]'; done
    SERVERS=("${SERVERS[@]}")
    echo "uws: skipped, $UWS is not built (../shared/peers/uws/README.md says how; UWS=path picks another)"
}

# PAIRED=1 in bench-echo.sh and bench-fanout.sh: each server of SERVERS at the same time as
# uWS, both on CPU 0, each driven by its own loadgen on CPU 1. Both see the same moment of the
# machine, so the ratio holds within a few percent from pair to pair, where one after the other
# it swings by tens of percent on these VMs; the absolute figures are those of two servers
# sharing a core. PAIR_WITH=server pairs with another reference than uws (e.g. bmio: a change
# against the binary before it, BASE=path). Uses the caller's addr, SP (running servers),
# configs, rotated, ROUNDS, SECS, BIN and OUT.
paired_main() { # LOADGEN-SUBCOMMAND FIELD UNIT [EXTRA LOADGEN OPTIONS...]
    local sub=$1 field=$2 unit=$3 ref=${PAIR_WITH:-uws} round cfg name args server f g l1 r s
    shift 3
    [ -n "${SP[$ref]:-}" ] || { echo "PAIRED=1 compares with $ref, which is not running" >&2; exit 1; }
    paired_run() { # SERVER CONFIG-ARGS FILE EXTRA...: one loadgen in the background (sets LPID)
        local srv=$1 a=$2 file=$3
        shift 3
        # shellcheck disable=SC2086
        "$BIN/loadgen" "$sub" --url "ws://$(addr "$srv")/" $a "$@" --duration "$SECS" --warmup 2 \
            --pin 1 --server-pid "${SP[$srv]}" --json "$file.json" >"$file.txt" &
        LPID=$!
    }
    for round in $(seq 1 "$ROUNDS"); do
        for cfg in "${configs[@]}"; do
            name=${cfg%%|*}
            args=${cfg#*|}
            for server in $(rotated "$round"); do
                [ "$server" = "$ref" ] && continue
                wait_idle
                f="$OUT/$server-$name-$round" g="$OUT/$ref@$server-$name-$round"
                # Which loadgen starts first alternates with the round.
                if [ $((round % 2)) = 1 ]; then
                    paired_run "$server" "$args" "$f" "$@"; l1=$LPID; paired_run "$ref" "$args" "$g" "$@"
                else
                    paired_run "$ref" "$args" "$g" "$@"; l1=$LPID; paired_run "$server" "$args" "$f" "$@"
                fi
                wait "$l1" "$LPID" || true
                echo "round $round $name $server with $ref: $(jq "$field" "$f.json") us and $(jq "$field" "$g.json") us $unit"
            done
        done
    done
    echo
    local shown=$ref; [ "$ref" = uws ] && shown=uWS
    echo "Paired with $shown (both at once): server CPU per ${unit#a } over $shown's in the same pair, per round (median last):"
    echo
    echo "| configuration | server | $(for r in $(seq 1 "$ROUNDS"); do printf 'round %s | ' "$r"; done)median |"
    echo "|---|---|$(for _ in $(seq 1 "$ROUNDS"); do printf -- '---|'; done)---|"
    for cfg in "${configs[@]}"; do
        name=${cfg%%|*}
        for s in "${SERVERS[@]}"; do
            [ "$s" = "$ref" ] && continue
            local vals=()
            for r in $(seq 1 "$ROUNDS"); do
                vals+=("$(jq -n --slurpfile a "$OUT/$s-$name-$r.json" --slurpfile b "$OUT/$ref@$s-$name-$r.json" \
                    "\$a[0]$field / \$b[0]$field * 1000 | round / 1000")")
            done
            printf "| %s | %s/%s | %s | %s |\n" "$name" "$s" "$ref" "$(IFS='|'; echo "${vals[*]}" | sed 's/|/ | /g')" \
                "$(printf '%s\n' "${vals[@]}" | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}')"
        done
    done
}
