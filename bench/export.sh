#!/usr/bin/env bash
# Audit export throughput: examples/bench_export.rs fills an audit log (64 writers, group
# commit) and exports all of it with warden's syslog exporter (RFC 5424 + RFC 5425 framing,
# TLS 1.3, a confirmed session per batch, the durable cursor after each) to a TLS sink on
# loopback. References from the same run: a plain TLS 1.3 client pushing the same bytes in one
# session to the same sink, and the rate at which the log itself took the entries.
# Usage: [N=100000] [BATCHES="1000 10000"] bash bench/export.sh   (prints a Markdown table)
# The log lives under BENCH_DIR (default /var/tmp: disk, not tmpfs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh >/dev/null
echo "building examples/bench_export (release)..." >&2
cargo build -q --release --example bench_export
export BENCH_DIR=${BENCH_DIR:-/var/tmp}
runs=()
for b in ${BATCHES:-1000 10000}; do
    runs+=("$(target/release/examples/bench_export "${N:-100000}" "$b")")
done

python3 - "${runs[@]}" <<'PY'
import json, sys
print("| figure | warden | reference (same run) | ratio |")
print("|---|---|---|---|")
for raw in sys.argv[1:]:
    f = json.loads(raw)
    n, b = f["entries"], f["batch"]
    rate = n / f["export_s"]
    plain = n / f["plain_s"]
    fill = n / f["fill_s"]
    size = f["bytes"] / n
    print(f"| export, batch {b} (entries/s, {size:.0f} B per message) | {rate:,.0f} | plain TLS 1.3, same bytes, one session: {plain:,.0f}/s ({f['bytes']/f['plain_s']/1e6:,.0f} MB/s) | {rate/plain:.2f}x |")
    print(f"| the same against the log's own write rate (64 writers, group commit) | {rate:,.0f} | {fill:,.0f} appends/s | {rate/fill:.1f}x |")
PY
