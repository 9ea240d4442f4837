#!/usr/bin/env bash
# The demo: installs what is missing, builds wardend, wardctl and examples/demo/, then runs
# the two-node demo (as root; arguments pass through: --short for CI, --keep to leave the
# cluster running).
set -euo pipefail
cd "$(dirname "$0")/.."

export TSS2_LOG="${TSS2_LOG:-esys+none,tcti+none}"

bash scripts/deps.sh
echo "building wardend, wardctl and the demo (the first build takes a few minutes)..."
cargo build --quiet --bins --example demo
exec target/debug/examples/demo "$@"
