#!/usr/bin/env bash
# Everything CI checks, in order, stopping at the first failure:
# formatting, clippy (default and pure-verifier builds), tests, doc tests, the demo (--short),
# fuzz smoke runs.
# FUZZ_SECONDS (default 10) sets how long each fuzz target runs.
set -euo pipefail
cd "$(dirname "$0")/.."

export TSS2_LOG=esys+none,tcti+none           # tpm2-tss logs to stderr on its own otherwise
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
FUZZ_SECONDS="${FUZZ_SECONDS:-10}"

steps=()
current=""
started=$SECONDS

section() {
    echo
    echo "==== $* ===="
}

# run NAME COMMAND...: runs a step, records it and how long it took.
run() {
    local name=$1
    shift
    current=$name
    section "$name"
    local t0=$SECONDS
    "$@"
    steps+=("$(printf '%-48s %4ds' "$name" $((SECONDS - t0)))")
}

summary() {
    local status=$?
    echo
    echo "==== summary ===="
    for s in "${steps[@]}"; do
        echo "ok    $s"
    done
    if ((status != 0)); then
        echo "FAIL  $current (exit $status), after $((SECONDS - started))s"
    else
        echo "all ${#steps[@]} steps passed in $((SECONDS - started))s"
    fi
}
trap summary EXIT

run "deps" bash scripts/deps.sh --fuzz
run "fmt" cargo fmt --all -- --check
run "clippy (workspace)" cargo clippy --workspace --all-targets -- -D warnings
run "clippy (warden-attest, no default features)" \
    cargo clippy -p warden-attest --no-default-features --all-targets -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
    run "tests (nextest)" cargo nextest run --workspace --no-fail-fast
else
    run "tests (cargo test)" cargo test --workspace
fi
run "doc tests" cargo test --workspace --doc
# The README's first command, as CI runs it: the two-node demo, built first (root).
run "demo (short)" bash -c \
    'cargo build --quiet --bins --example demo && exec target/debug/examples/demo --short'

if [[ -d fuzz ]]; then
    targets=$(cd fuzz && cargo +nightly fuzz list)
    if [[ -n $targets ]]; then
        run "fuzz build" bash -c 'cd fuzz && cargo +nightly fuzz build'
        for target in $targets; do
            run "fuzz $target (${FUZZ_SECONDS}s)" bash -c \
                'cd fuzz && cargo +nightly fuzz run "$1" -- -max_total_time="$2" -rss_limit_mb=2048' \
                _ "$target" "$FUZZ_SECONDS"
        done
    fi
fi
