#!/usr/bin/env bash
# Policy figures for docs/performance.md (root):
#  - classifier lookups/s at 100, 10k and 100k rules, next to a linear scan (criterion);
#  - parse + validate of a 10k-rule policy next to the TOML parser alone on the same text,
#    and building the classifier and the nftables plan (criterion);
#  - compile and apply time of a 10k-rule policy, next to `nft -f` loading the same table,
#    in a network namespace made for the run (release build).
set -euo pipefail
cd "$(dirname "$0")/.."
rules=${RULES:-10000}
cargo bench -p warden-policy --bench classifier -- --warm-up-time 1 --measurement-time 4 2>&1 |
    grep -E '^(classify|linear-scan|compile)|time:|thrpt:'
cargo build --release -p warden-enforcer --example apply_bench
ns="warden-bench-$$"
ip netns add "$ns"
trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
ip netns exec "$ns" target/release/examples/apply_bench "$rules"
