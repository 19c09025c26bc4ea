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
