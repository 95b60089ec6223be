#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/ and runs each for N seconds (default 30); fails on
# any crash, panic, timeout or out-of-memory report. Usage: scripts/fuzz-smoke.sh [SECONDS].
# FUZZ_RUNS=N also stops a target after N executions (the long run: FUZZ_RUNS=10000000 with
# SECONDS=1800 stops each target at 10 million executions or 30 minutes, whichever comes first);
# FUZZ_TARGETS="a b" runs only those targets; FUZZ_LOGDIR=DIR keeps each target's log there.
#
# Works on the stable toolchain: libFuzzer's instrumentation needs -Zsanitizer and friends,
# which stable rustc accepts with RUSTC_BOOTSTRAP=1. AddressSanitizer is used when it builds,
# otherwise the targets are built without a sanitizer (the code is `forbid(unsafe_code)`, so
# ASan mostly guards the C++ libFuzzer runtime; coverage guidance works the same).
#
# New inputs go to a scratch corpus (fuzz/corpus-work/<target>, git-ignored); the committed
# seeds in fuzz/corpus/<target> are only read. Crashes are written to fuzz/artifacts/<target>/.
set -euo pipefail

SECS="${1:-30}"
if ! [[ "$SECS" =~ ^[0-9]+$ ]] || [ "$SECS" -lt 1 ]; then
    echo "usage: $0 [SECONDS_PER_TARGET]" >&2
    exit 2
fi

cd "$(dirname "$0")/../fuzz"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
echo "== $(cargo fuzz --version)"

SANITIZER=address
echo "== building the fuzz targets (sanitizer: $SANITIZER)"
if ! cargo fuzz build --sanitizer "$SANITIZER"; then
    echo "== the AddressSanitizer build failed; building without a sanitizer" >&2
    SANITIZER=none
    cargo fuzz build --sanitizer "$SANITIZER"
fi

targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
extra=()
if [ -n "${FUZZ_RUNS:-}" ]; then extra+=("-runs=$FUZZ_RUNS"); fi
failed=()
summary=()
if [ -n "${FUZZ_LOGDIR:-}" ]; then
    logdir="$FUZZ_LOGDIR" # kept: the long run's figures are read from these logs
    mkdir -p "$logdir"
else
    logdir=$(mktemp -d)
    trap 'rm -rf "$logdir"' EXIT
fi

for t in $targets; do
    echo "== $t: ${SECS}s"
    mkdir -p "corpus-work/$t" "corpus/$t"
    log="$logdir/$t.log"
    # One process on one core; -timeout flags a single input slower than 25 s as a failure.
    if cargo fuzz run --sanitizer "$SANITIZER" "$t" "corpus-work/$t" "corpus/$t" -- \
        -max_total_time="$SECS" -timeout=25 -rss_limit_mb=2048 -print_final_stats=1 "${extra[@]}" \
        >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$t")
        # The report: the panic or sanitizer message, the stack and the artifact path.
        if grep -qE "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer" "$log"; then
            { grep -E -A40 "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer" "$log" || true; } | head -80
        else
            tail -40 "$log"
        fi
        { grep -E "^(artifact_prefix|Test unit written to|Base64:)" "$log" || true; } | head -5
    fi
    runs=$({ sed -n 's/^stat::number_of_executed_units: *//p' "$log" || true; } | tail -1)
    rate=$({ sed -n 's/^stat::average_exec_per_sec: *//p' "$log" || true; } | tail -1)
    cov=$({ grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" || true; } | tail -1)
    summary+=("$(printf '%-16s %-7s runs=%-10s exec/s=%-8s %s' "$t" "$status" "${runs:-?}" "${rate:-?}" "${cov:-}")")
done

echo "== summary (${SECS}s per target, sanitizer: $SANITIZER)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -ne 0 ]; then
    echo "FAILED: ${failed[*]} (inputs in fuzz/artifacts/<target>/; reproduce with" \
        "RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <artifact>)" >&2
    exit 1
fi
echo "all ${#summary[@]} targets ran ${SECS}s without a crash"
