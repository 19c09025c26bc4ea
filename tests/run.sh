#!/usr/bin/env bash
# Runs every test of the workspace, after installing what the tests need when it is missing:
#
#   tests/run.sh [extra `cargo test` arguments, e.g. a test name filter]
#
# Set-up, done once here (never by two tests at once):
#   - Chromium, from Debian's packages (the browser test), when not installed;
#   - nats-server, from Debian's packages (the cluster tests start their own), when not installed;
#   - .venv: Python with `websockets` (tests/python/requirements.txt; the Python client suite and
#     the browser test's DevTools client);
#   - .venv-autobahn: the Autobahn|Testsuite fuzzingclient ported to Python 3 (tests/autobahn);
#   - the release build every test shares (`cargo build --workspace --release --all-targets`).
# Then `cargo test --workspace --release --no-fail-fast`, and one summary: tests passed, failed and skipped
# (with the reasons), and the Autobahn totals of both backends with the path of their reports.
#
# What cannot be installed here (no root, no network) is named with the tests it stops, and those
# tests fail unless you opt out: VOLLEY_SKIP_BROWSER=1, VOLLEY_SKIP_PYTHON=1 (also skips the
# browser test, whose driver is Python), VOLLEY_SKIP_AUTOBAHN=1, VOLLEY_SKIP_URING=1 (where the
# kernel has no io_uring), VOLLEY_SKIP_NATS=1 (the cluster tests). Exit status: 0 when every test passed, 1 otherwise.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target=${CARGO_TARGET_DIR:-$root/target}
mkdir -p "$target"
log=$target/test-setup.log
: >"$log"
notes=()   # set-up problems, printed again in the summary

say() { printf 'tests/run.sh: %s\n' "$*"; }
problem() { notes+=("$*"); say "$*"; }
# Runs apt-get as root (directly or through sudo without a password); false if it cannot.
apt_install() {
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    sudo -n true 2>/dev/null || return 1
    sudo=(sudo -n)
  fi
  command -v apt-get >/dev/null || return 1
  say "installing $* from Debian's packages (log: $log)"
  "${sudo[@]}" apt-get update -qq >>"$log" 2>&1 || true
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$@" >>"$log" 2>&1
}
skipping() { [ "${1:-}" = 1 ]; }

# --- Python venv with `websockets` -----------------------------------------------------------
python_ok=0
if skipping "${VOLLEY_SKIP_PYTHON:-}"; then
  say "VOLLEY_SKIP_PYTHON=1: the Python client and browser tests are skipped"
  export VOLLEY_SKIP_BROWSER=1
else
  stamp=.venv/.volley-requirements
  if [ -x .venv/bin/python ] && cmp -s tests/python/requirements.txt "$stamp" 2>/dev/null; then
    python_ok=1
  else
    say "creating .venv (tests/python/requirements.txt)"
    rm -rf .venv
    if ! python3 -m venv .venv >>"$log" 2>&1; then
      apt_install python3-venv && rm -rf .venv && python3 -m venv .venv >>"$log" 2>&1
    fi
    if [ -x .venv/bin/pip ] &&
      .venv/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt >>"$log" 2>&1; then
      cp tests/python/requirements.txt "$stamp"
      python_ok=1
    else
      problem "could not make .venv with websockets (python3 -m venv / pip; see $log): python_client and browser tests will fail (VOLLEY_SKIP_PYTHON=1 skips them)"
    fi
  fi
fi

# --- Chromium --------------------------------------------------------------------------------
if skipping "${VOLLEY_SKIP_BROWSER:-}"; then
  say "VOLLEY_SKIP_BROWSER=1: the browser test is skipped"
elif ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  if ! apt_install chromium; then
    problem "chromium is missing and could not be installed (needs root and Debian's packages; see $log): the browser test will fail (VOLLEY_SKIP_BROWSER=1 skips it)"
  fi
fi

# --- nats-server (tests/tests/cluster.rs) -----------------------------------------------------
if skipping "${VOLLEY_SKIP_NATS:-}"; then
  say "VOLLEY_SKIP_NATS=1: the cluster tests are skipped"
elif ! command -v nats-server >/dev/null; then
  if ! apt_install nats-server; then
    problem "nats-server is missing and could not be installed (needs root and Debian's packages; see $log): the cluster tests will fail (VOLLEY_SKIP_NATS=1 skips them)"
  fi
fi

# --- Autobahn|Testsuite ----------------------------------------------------------------------
if skipping "${VOLLEY_SKIP_AUTOBAHN:-}"; then
  say "VOLLEY_SKIP_AUTOBAHN=1: the Autobahn|Testsuite is skipped"
else
  # The stamp names the harness version it was built from: a changed harness rebuilds it.
  want=$(cat tests/autobahn/setup.sh tests/autobahn/requirements.txt tests/autobahn/patches/* | sha256sum | cut -c1-16)
  if [ "$(cat .venv-autobahn/.volley-stamp 2>/dev/null)" != "$want" ]; then
    say "building .venv-autobahn (tests/autobahn/setup.sh, about 30 s)"
    rm -rf .venv-autobahn
    if tests/autobahn/setup.sh "$root/.venv-autobahn" >>"$log" 2>&1; then
      echo "$want" >.venv-autobahn/.volley-stamp
    else
      problem "could not build the Autobahn harness (tests/autobahn/setup.sh needs Python 3.9-3.12 and PyPI; see $log): the autobahn tests will fail (VOLLEY_SKIP_AUTOBAHN=1 skips them)"
    fi
  fi
fi

# --- Build once, then test -------------------------------------------------------------------
say "building (cargo build --workspace --release --all-targets)"
if ! cargo build --workspace --release --all-targets; then
  say "the build failed"
  exit 1
fi

out=$target/test-output.log
skips=$target/test-skips.log
: >"$skips"
export VOLLEY_SKIP_LOG=$skips
start=$(date +%s)
say "running cargo test --workspace --release --no-fail-fast $* (output also in $out)"
cargo test --workspace --release --no-fail-fast "$@" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
secs=$(($(date +%s) - start))

# --- Summary ---------------------------------------------------------------------------------
passed=0 failed=0 ignored=0
while read -r p f i; do
  passed=$((passed + p)) failed=$((failed + f)) ignored=$((ignored + i))
done < <(sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed; \([0-9]*\) ignored.*/\1 \2 \3/p' "$out")
nskip=$(grep -c . "$skips" || true)
echo
echo "================================ summary ================================"
echo "tests: $passed passed ($nskip of them skipped), $failed failed, $ignored ignored (opt-in), in ${secs}s"
if [ "$nskip" -gt 0 ]; then
  echo "skipped:"
  sort "$skips" | sed 's/^/  /'
fi
if [ "$failed" -gt 0 ] || [ "$rc" -ne 0 ]; then
  echo "failed:"
  grep -E '^test .* FAILED$|^error: test failed|^error: could not compile' "$out" | sed 's/^/  /'
fi
for s in "$target"/autobahn/*/summary.txt; do
  [ -f "$s" ] || continue
  b=$(basename "$(dirname "$s")")
  echo "autobahn ($b): $(tail -n 1 "$s" | sed 's/^autobahn: //'); report $(dirname "$s")/reports/index.html"
done
for n in "${notes[@]+"${notes[@]}"}"; do
  echo "set-up: $n"
done
if [ "$rc" -ne 0 ] || [ "$failed" -gt 0 ]; then
  echo "result: FAILED"
  exit 1
fi
echo "result: ok"
