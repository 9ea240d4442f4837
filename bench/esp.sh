#!/usr/bin/env bash
# Per-core ESP rates for docs/performance.md: for each engine (aws-lc-rs, ring, aes-gcm) and
# inner size (64, 1420, 9000 bytes), the same library's raw AES-256-GCM seal (the reference,
# same run), ESP seal (header, padding, trailer, ICV into a caller buffer) and ESP open (ICV,
# replay window, padding), from the criterion bench enforcer/benches/esp.rs.
# Usage: bash bench/esp.sh          (MEASURE=seconds per figure, default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
measure=${MEASURE:-2}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
cargo bench -q -p warden-enforcer --bench esp -- --warm-up-time 1 --measurement-time "$measure" \
    2>/dev/null | tee /dev/stderr >"$out"
# criterion prints "<engine>/<bench>/<size>" then "thrpt: [low mid high]"; take the middle.
python3 - "$out" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
rates = {}
name = None
unit = {"KiB/s": 2**-20, "MiB/s": 2**-10, "GiB/s": 1.0}
for line in text.splitlines():
    m = re.match(r"^(\S+)/(raw-seal|esp-seal|esp-open-2048)/(\d+)", line.strip())
    if m:
        name = (m.group(1), m.group(2), int(m.group(3)))
    t = re.search(r"thrpt:\s+\[\S+ \S+ (\S+) (\S+)", line)
    if t and name:
        rates[name] = float(t.group(1)) * unit.get(t.group(2), float("nan"))
        name = None
print("| engine | bytes | raw seal GiB/s | ESP seal GiB/s | ESP seal / raw | ESP open GiB/s |")
print("|---|---:|---:|---:|---:|---:|")
for engine in ("aws-lc-rs", "ring", "aes-gcm"):
    for size in (64, 1420, 9000):
        raw = rates.get((engine, "raw-seal", size))
        seal = rates.get((engine, "esp-seal", size))
        opn = rates.get((engine, "esp-open-2048", size))
        if raw is None or seal is None or opn is None:
            continue
        print(f"| {engine} | {size} | {raw:.2f} | {seal:.2f} | {seal / raw:.2f} | {opn:.2f} |")
PY
