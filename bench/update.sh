#!/usr/bin/env bash
# Signed-update figures, each next to a reference measured in the same run:
#   - the whole metadata check (root, timestamp, snapshot, targets: envelopes, signatures,
#     versions, digests; files read from disk) per second, vs `openssl speed ed25519` verifies/s
#     (the check needs 5 Ed25519 verifications: the trusted root, the root, timestamp, snapshot
#     and targets);
#   - the same with an X.509-certified targets signer (chain parse and verify added);
#   - image hashing through ImageVerifier (MB/s) vs `openssl speed -evp sha256` on 16 KiB blocks.
# Usage: bash bench/update.sh        (prints a Markdown table for docs/performance.md)
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z ${REUSE_CRITERION:-} ]]; then
    echo "running criterion benchmarks (about a minute)..." >&2
    cargo bench -q -p warden-firmware-update --bench update -- --noplot >/dev/null 2>&1
fi

median_ns() {
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["median"]["point_estimate"])' \
        "target/criterion/$1/new/estimates.json"
}

ed25519_verify_per_s=$(openssl speed -seconds 3 ed25519 2>/dev/null |
    awk '/253 bits EdDSA \(Ed25519\)/ { print $(NF) }')
sha256_kbs=$(openssl speed -seconds 3 -evp sha256 -bytes 16384 2>/dev/null |
    awk '/^sha256/ { v=$(NF); sub(/k$/, "", v); print v }')

python3 - "$(median_ns check/valid)" "$(median_ns check/valid-x509)" \
    "$(median_ns image/verify-64MiB)" "$ed25519_verify_per_s" "$sha256_kbs" <<'PY'
import sys
valid, x509, image, ed, sha_kbs = map(float, sys.argv[1:])
mb_s = (64 << 20) / (image / 1e9) / 1e6
ossl_mb_s = sha_kbs * 1000 / 1e6
print("| figure | warden | reference (same run) | ratio |")
print("|---|---|---|---|")
print(f"| metadata check, Ed25519 keys (checks/s, 1 core) | {1e9/valid:,.0f} | `openssl speed ed25519` verify: {ed:,.0f}/s, i.e. {ed/5:,.0f} sets of 5 | {1e9/valid/(ed/5):.2f}x |")
print(f"| metadata check, X.509 targets signer (checks/s) | {1e9/x509:,.0f} | the same check with bare keys: {1e9/valid:,.0f}/s | {valid/x509:.2f}x |")
print(f"| image verification, SHA-256 (MB/s, 1 core) | {mb_s:,.0f} | `openssl speed -evp sha256`, 16 KiB blocks: {ossl_mb_s:,.0f} MB/s | {mb_s/ossl_mb_s:.2f}x |")
PY
