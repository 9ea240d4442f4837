#!/usr/bin/env bash
# Audit log figures, each next to a reference measured in the same run:
#   - durable appends/s with group commit vs. the disk's raw fsyncs/s (256 B + fdatasync);
#   - proof generation (from the on-disk tree) and verification as the log grows 10^3..10^7,
#     in SHA-256 hash-equivalents (`openssl speed -bytes 64 sha256`).
# Usage: bash bench/audit.sh [MAX_ENTRIES]   (default 10000000; prints Markdown tables)
set -euo pipefail
cd "$(dirname "$0")/.."
max=${1:-10000000}
bash scripts/deps.sh >/dev/null
echo "building and running the store benchmark (a few minutes)..." >&2
cargo build -q --release -p warden-audit --example store_bench
out=$(target/release/examples/store_bench "$max")
# ns per SHA-256 of 64 bytes (a proof step hashes 65 bytes: 0x01 ‖ left ‖ right)
per_s=$(openssl speed -seconds 2 -bytes 64 sha256 2>/dev/null | awk '/^sha256/ {print $2}' | tr -d k)
python3 - "$per_s" <<PY
import sys
kb_per_s = float(sys.argv[1])          # openssl prints 1000s of bytes/s
hash_ns = 64 / (kb_per_s * 1000) * 1e9
lines = """$out""".splitlines()
kv = {l.split()[0]: l.split()[1:] for l in lines}
raw = float(kv["raw_fsyncs_per_s"][0]); single = float(kv["single_appends_per_s"][0])
group = float(kv["group_appends_per_s"][0]); per_batch = float(kv["group_entries_per_batch"][0])
print("| figure | warden | reference (same run) | ratio |")
print("|---|---|---|---|")
print(f"| durable appends/s, one entry per batch | {single:,.0f} | raw 256 B append + fdatasync: {raw:,.0f}/s | {single/raw:.2f}x |")
print(f"| durable appends/s, group commit, 64 writers ({per_batch:.0f} entries/batch) | {group:,.0f} | raw fdatasync: {raw:,.0f}/s | {group/raw:.1f}x |")
print()
print(f"SHA-256 of 64 bytes: {hash_ns:.0f} ns (openssl speed).")
print()
print("| entries | inclusion proof from disk (µs) | verify (µs) | consistency proof (µs) | verify (µs) | verify in hash-equivalents |")
print("|---|---|---|---|---|---|")
for l in lines:
    p = l.split()
    if p[0] != "proofs_us": continue
    n, gi, vi, gc, vc = int(p[1]), *map(float, p[2:])
    print(f"| {n:,} | {gi:.1f} | {vi:.1f} | {gc:.1f} | {vc:.1f} | {vi*1000/hash_ns:.0f} |")
PY
