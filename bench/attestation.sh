#!/usr/bin/env bash
# Attestation figures, each next to a reference measured in the same run:
#   - verifier throughput (verifications/s, one core) vs `openssl speed` signature verifies/s;
#   - quote latency (TPM2_Quote via warden's driver, and a whole evidence collection) vs
#     tpm2-tools' `tpm2_quote` on a swtpm of the same build.
# Usage: bash bench/attestation.sh        (prints a Markdown table for docs/performance.md)
set -euo pipefail
cd "$(dirname "$0")/.."
export TSS2_LOG=esys+none,tcti+none
bash scripts/deps.sh >/dev/null

if [[ -z ${REUSE_CRITERION:-} ]]; then   # REUSE_CRITERION=1: report the last criterion run
    echo "running criterion benchmarks (a few minutes)..." >&2
    cargo bench -q -p warden-attest --bench verifier --bench quote -- --noplot >/dev/null 2>&1
fi

median_ns() { # criterion group/function → median in ns
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["median"]["point_estimate"])' \
        "target/criterion/$1/new/estimates.json"
}

openssl_verify_per_s() { # ecdsap256 | rsa2048 → verifies/s
    openssl speed -seconds 3 "$1" 2>/dev/null | awk -v alg="$1" '
        alg == "ecdsap256" && /256 bits ecdsa \(nistp256\)/ { print $(NF) }
        alg == "rsa2048"   && /^rsa 2048 bits/             { print $(NF) }'
}

# tpm2_quote on its own swtpm: mean wall time per quote over N runs (includes process start).
tpm2_tools_quote_ms() ( # ecc | rsa; a subshell, so its EXIT trap stops swtpm on every way out
    dir=$(mktemp -d)
    port=$((20000 + RANDOM % 20000))
    swtpm socket --tpm2 --tpmstate dir="$dir" --server type=tcp,port=$port,bindaddr=127.0.0.1 \
        --ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 --flags not-need-init,startup-clear \
        >/dev/null 2>&1 &
    pid=$!
    trap 'kill $pid 2>/dev/null; rm -rf "$dir"' EXIT
    sleep 0.5
    local T="swtpm:host=127.0.0.1,port=$port" G s
    if [[ $1 == ecc ]]; then G=ecc; s=ecdsa; else G=rsa; s=rsassa; fi
    tpm2_createek -T "$T" -c "$dir/ek.ctx" -G "$G" -u "$dir/ek.pub" >/dev/null
    tpm2_createak -T "$T" -C "$dir/ek.ctx" -c "$dir/ak.ctx" -G "$G" -g sha256 -s "$s" \
        -u "$dir/ak.pub" -n "$dir/ak.name" >/dev/null
    # swtpm has 3 object slots: persist the AK and flush the transients, as wardend does.
    tpm2_flushcontext -T "$T" -t
    tpm2_evictcontrol -T "$T" -C o -c "$dir/ak.ctx" 0x81010003 >/dev/null
    tpm2_flushcontext -T "$T" -t
    local n=30 t0 t1
    t0=$(date +%s%N)
    for ((i = 0; i < n; i++)); do
        tpm2_quote -T "$T" -c 0x81010003 -l sha256:0,1,2,3,4,5,6,7,15 \
            -q 0123456789abcdef0123456789abcdef -m "$dir/q.msg" -s "$dir/q.sig" -o "$dir/q.pcrs" \
            >/dev/null || { echo "tpm2_quote failed" >&2; exit 1; }
    done
    t1=$(date +%s%N)
    python3 -c "print(($t1 - $t0) / $n / 1e6)"
)

ecc_ns=$(median_ns verify/ecc)
rsa_ns=$(median_ns verify/rsa)
ossl_ecc=$(openssl_verify_per_s ecdsap256)
ossl_rsa=$(openssl_verify_per_s rsa2048)
q_ecc=$(median_ns quote/tpm2_quote-ecc)
q_rsa=$(median_ns quote/tpm2_quote-rsa)
c_ecc=$(median_ns quote/collect-ecc)
c_rsa=$(median_ns quote/collect-rsa)
t_ecc=$(tpm2_tools_quote_ms ecc) || exit 1
t_rsa=$(tpm2_tools_quote_ms rsa) || exit 1

python3 - "$ecc_ns" "$rsa_ns" "$ossl_ecc" "$ossl_rsa" "$q_ecc" "$q_rsa" "$c_ecc" "$c_rsa" "$t_ecc" "$t_rsa" <<'PY'
import sys
ecc_ns, rsa_ns, ossl_ecc, ossl_rsa, q_ecc, q_rsa, c_ecc, c_rsa, t_ecc, t_rsa = map(float, sys.argv[1:])
print("| figure | warden | reference (same run) | ratio |")
print("|---|---|---|---|")
print(f"| full verification, ECC P-256 AK (verifications/s, 1 core) | {1e9/ecc_ns:,.0f} | `openssl speed ecdsap256` verify: {ossl_ecc:,.0f}/s | {1e9/ecc_ns/ossl_ecc:.2f}x |")
print(f"| full verification, RSA-2048 AK (verifications/s, 1 core) | {1e9/rsa_ns:,.0f} | `openssl speed rsa2048` verify: {ossl_rsa:,.0f}/s | {1e9/rsa_ns/ossl_rsa:.2f}x |")
print(f"| TPM2_Quote latency, ECC AK (ms, median) | {q_ecc/1e6:.2f} | `tpm2_quote` (tpm2-tools, per run): {t_ecc:.2f} ms | {t_ecc/(q_ecc/1e6):.1f}x faster |")
print(f"| TPM2_Quote latency, RSA AK (ms, median) | {q_rsa/1e6:.2f} | `tpm2_quote` (tpm2-tools, per run): {t_rsa:.2f} ms | {t_rsa/(q_rsa/1e6):.1f}x faster |")
print(f"| evidence collection (quote + PCR read + assembly), ECC (ms) | {c_ecc/1e6:.2f} | TPM2_Quote alone: {q_ecc/1e6:.2f} ms | {c_ecc/q_ecc:.2f}x |")
print(f"| evidence collection, RSA (ms) | {c_rsa/1e6:.2f} | TPM2_Quote alone: {q_rsa/1e6:.2f} ms | {c_rsa/q_rsa:.2f}x |")
PY
