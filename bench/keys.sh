#!/usr/bin/env bash
# Tenant key figures, each next to a reference measured in the same run:
#   - provisioning envelopes (HPKE, keys/benches/envelope.rs): wrap on the tenant's side and
#     parse+open on the appliance's, vs `openssl speed ecdhx25519` (X25519 derivations/s);
#   - TPM sealing as the vault does it (attest/benches/seal.rs): seal and unseal under a
#     signed PCR policy, vs tpm2-tools' `tpm2_create` (seal) and `tpm2_load` + `tpm2_unseal`
#     (password-authorized, no policy) on a swtpm of the same build.
# Usage: bash bench/keys.sh        (prints a Markdown table for docs/performance.md)
set -euo pipefail
cd "$(dirname "$0")/.."
export TSS2_LOG=esys+none,tcti+none
bash scripts/deps.sh >/dev/null

if [[ -z ${REUSE_CRITERION:-} ]]; then   # REUSE_CRITERION=1: report the last criterion run
    echo "running criterion benchmarks (a few minutes)..." >&2
    cargo bench -q -p warden-keys --bench envelope -- --noplot >/dev/null 2>&1
    cargo bench -q -p warden-attest --features tpm --bench seal -- --noplot >/dev/null 2>&1
fi

median_ns() { # criterion group/function → median in ns
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["median"]["point_estimate"])' \
        "target/criterion/$1/new/estimates.json"
}

openssl_x25519_per_s() {
    openssl speed -seconds 3 ecdhx25519 2>/dev/null | awk '/253 bits ecdh \(X25519\)/ { print $(NF) }'
}

# tpm2-tools on its own swtpm: mean wall time per seal (tpm2_create of a sealed object under a
# persistent SRK) and per unseal (tpm2_load, tpm2_unseal, flush), N runs each. Prints "seal unseal" in ms.
tpm2_tools_seal_ms() ( # a subshell: its EXIT trap stops swtpm on every way out
    dir=$(mktemp -d)
    port=$((20000 + RANDOM % 20000))
    swtpm socket --tpm2 --tpmstate dir="$dir" --server type=tcp,port=$port,bindaddr=127.0.0.1 \
        --ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 --flags not-need-init,startup-clear \
        >/dev/null 2>&1 &
    pid=$!
    trap 'kill $pid 2>/dev/null; rm -rf "$dir"' EXIT
    sleep 0.5
    local T="swtpm:host=127.0.0.1,port=$port"
    printf '0123456789abcdef0123456789abcdef' >"$dir/secret"
    tpm2_createprimary -T "$T" -C o -g sha256 -G ecc256 -c "$dir/srk.ctx" >/dev/null
    tpm2_evictcontrol -T "$T" -C o -c "$dir/srk.ctx" 0x81000001 >/dev/null
    tpm2_flushcontext -T "$T" -t
    local n=30 t0 t1 t2
    t0=$(date +%s%N)
    for ((i = 0; i < n; i++)); do
        tpm2_create -T "$T" -C 0x81000001 -i "$dir/secret" -u "$dir/s.pub" -r "$dir/s.priv" \
            >/dev/null || { echo "tpm2_create failed" >&2; exit 1; }
    done
    t1=$(date +%s%N)
    for ((i = 0; i < n; i++)); do
        tpm2_load -T "$T" -C 0x81000001 -u "$dir/s.pub" -r "$dir/s.priv" -c "$dir/s.ctx" >/dev/null
        tpm2_unseal -T "$T" -c "$dir/s.ctx" -o "$dir/out" >/dev/null
        tpm2_flushcontext -T "$T" -t
        cmp -s "$dir/out" "$dir/secret" || { echo "tpm2_unseal gave other bytes" >&2; exit 1; }
    done
    t2=$(date +%s%N)
    python3 -c "print(($t1 - $t0) / $n / 1e6, ($t2 - $t1) / $n / 1e6)"
)

wrap_ns=$(median_ns envelope/wrap)
open_ns=$(median_ns envelope/parse+open)
keygen_ns=$(median_ns envelope/recipient-keygen)
seal_ns=$(median_ns seal/seal)
unseal_ns=$(median_ns seal/unseal)
x25519=$(openssl_x25519_per_s)
read -r t_seal t_unseal < <(tpm2_tools_seal_ms) || exit 1

python3 - "$wrap_ns" "$open_ns" "$keygen_ns" "$x25519" "$seal_ns" "$unseal_ns" "$t_seal" "$t_unseal" <<'PY'
import sys
wrap, opn, keygen, x25519, seal, unseal, t_seal, t_unseal = map(float, sys.argv[1:])
x_us = 1e6 / x25519
print("| figure | warden | reference (same run) | ratio |")
print("|---|---|---|---|")
print(f"| envelope wrap, 32-byte key (µs, tenant side) | {wrap/1e3:.1f} | 2 X25519 (`openssl speed ecdhx25519`): {2*x_us:.1f} µs | {wrap/1e3/(2*x_us):.2f}x |")
print(f"| envelope parse + checks + open (µs, appliance side) | {opn/1e3:.1f} | 1 X25519: {x_us:.1f} µs | {opn/1e3/x_us:.2f}x |")
print(f"| one-use recipient key pair, per challenge (µs) | {keygen/1e3:.1f} | 1 X25519: {x_us:.1f} µs | {keygen/1e3/x_us:.2f}x |")
print(f"| TPM seal, 32 bytes under the signed PCR policy (ms, median) | {seal/1e6:.2f} | `tpm2_create` (tpm2-tools, per run): {t_seal:.2f} ms | {t_seal/(seal/1e6):.1f}x faster |")
print(f"| TPM unseal: policy check, load, PolicyPCR + PolicyAuthorize, unseal, flush (ms) | {unseal/1e6:.2f} | `tpm2_load` + `tpm2_unseal` + flush, password auth: {t_unseal:.2f} ms | {t_unseal/(unseal/1e6):.1f}x faster |")
PY
