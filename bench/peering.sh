#!/usr/bin/env bash
# Control-channel handshake figures (root): examples/bench_peering.rs starts the two-node
# cluster (network namespaces, swtpm + wardend each), then makes N new channels by restarting
# node-b's wardend, and reads each side's `handshake_ms` (TCP connect until both attested) from
# GET /v1/peers. The reference, from the same run: a mutual TLS 1.3 handshake with the same
# certificates and groups (rustls, loopback) plus two evidence collections on swtpm (ECC AK).
# Usage: [N=10] bash bench/peering.sh     (prints a Markdown table; progress goes to stderr)
set -euo pipefail
cd "$(dirname "$0")/.."
export TSS2_LOG=esys+none,tcti+none
bash scripts/deps.sh >/dev/null
echo "building wardend, wardctl and examples/bench_peering (release)..." >&2
cargo build -q --release --bins --example bench_peering
json=$(target/release/examples/bench_peering "${N:-10}")

python3 - "$json" <<'PY'
import json, sys
f = json.loads(sys.argv[1])
floor = f["tls_ms"] + 2 * f["quote_ms"]
print("| figure | warden | reference (same run) | ratio |")
print("|---|---|---|---|")
print(f"| new control channel: TCP connect → both attested, dialer (ms, median of {f['channels']}) | {f['handshake_ms_dialer']:.0f} | TLS 1.3 mutual handshake ({f['tls_group']}): {f['tls_ms']:.2f} ms + 2 evidence collections: 2 × {f['quote_ms']:.2f} ms = {floor:.1f} ms | {f['handshake_ms_dialer']/floor:.2f}x |")
print(f"| the same, acceptor side (ms) | {f['handshake_ms_acceptor']:.0f} | {floor:.1f} ms | {f['handshake_ms_acceptor']/floor:.2f}x |")
print(f"| wardend restart on one node → SAs keyed again both ways (ms) | {f['restart_to_keyed_ms']:.0f} | — (includes wardend start, TUN set-up and the dialer's redial) | — |")
PY
