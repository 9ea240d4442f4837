#!/usr/bin/env bash
# The cost of traffic governance on the data path: per packet on one core (criterion,
# enforcer/benches/governance.rs: Snapshot::egress with each configuration), then on the
# whole tunnel (root): Warden's two-node tunnel
# (examples/bench_cluster.rs through bench/tunnel.sh, iperf3 TCP 1 and 4 streams, ping), with
# limits and flow telemetry off, and the same run with each on:
#   off                 no limits, no telemetry (the reference, measured in the same run)
#   limits              every packet checked against non-binding limits (tenant and pair
#                       rates, new connections, a wire budget with a guarantee)
#   telemetry 1/N       flow records from one packet in N, exported as IPFIX and OCSF
#   limits+telemetry    both
# Each configuration runs ROUNDS times (default 2), interleaved, and reports the median.
# Usage: [DURATION=10] [ROUNDS=2] [SAMPLINGS="1 100"] bash bench/governance.sh
# Prints a Markdown table for docs/performance.md; progress and tunnel.sh's logs go to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
export DURATION=${DURATION:-10} PINGS=${PINGS:-500}
rounds=${ROUNDS:-2}
samplings=${SAMPLINGS:-1 100}

# Per packet, on one core: Snapshot::egress with each configuration (criterion).
if [[ -z ${REUSE_CRITERION:-} ]]; then   # REUSE_CRITERION=1: report the last criterion run
    echo "running the per-packet benchmark (enforcer/benches/governance.rs)..." >&2
    cargo bench -q -p warden-enforcer --bench governance -- --noplot >/dev/null 2>&1
fi
python3 - <<'PY'
import json
names = ["off", "limits", "telemetry-1", "telemetry-100", "limits+telemetry-1"]
ns = {n: json.load(open(f"target/criterion/egress/{n}/new/estimates.json"))["median"]["point_estimate"] for n in names}
print("| egress of a 1420-byte packet (classify, limits, flow record, seal) | ns per packet (median) | vs off |")
print("| --- | ---: | ---: |")
for n in names:
    rel = "reference" if n == "off" else f"{100 * (ns[n] / ns['off'] - 1):+.1f} %"
    print(f"| {n} | {ns[n]:.0f} | {rel} |")
print()
PY

echo "building examples/bench_cluster (release)..." >&2
cargo build -q --release -p warden --example bench_cluster

configs=("off|" "limits|--limits")
for n in $samplings; do configs+=("telemetry 1/$n|--telemetry $n"); done
first=${samplings%% *}
configs+=("limits+telemetry 1/$first|--limits --telemetry $first")

results=$(mktemp)
trap 'rm -f "$results"' EXIT
for ((r = 1; r <= rounds; r++)); do
    for c in "${configs[@]}"; do
        name=${c%%|*} args=${c#*|}
        echo "[governance] round $r/$rounds: $name" >&2
        row=$(VARIANTS=warden WARDEN_ARGS="$args" bash bench/tunnel.sh | grep '^| warden |' || true)
        [[ -n $row ]] || { echo "[governance] $name: no result" >&2; exit 1; }
        echo "$name|$row" >>"$results"
    done
done

python3 - "$results" <<'PY'
import statistics, sys
rows = {}
order = []
for line in open(sys.argv[1]):
    name, rest = line.rstrip("\n").split("|", 1)
    cells = [c.strip() for c in rest.strip().strip("|").split("|")]
    vals = [float(x) for x in cells[1:5]]
    if name not in rows:
        order.append(name)
    rows.setdefault(name, []).append(vals)
med = {n: [statistics.median(v[i] for v in rows[n]) for i in range(4)] for n in order}
ref = med["off"]
print("| configuration | 1 stream Gbit/s | 4 streams Gbit/s | ping p50 ms | ping p99 ms | throughput vs off (1 / 4 streams) |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for n in order:
    m = med[n]
    rel = "reference" if n == "off" else f"{m[0] / ref[0]:.2f} / {m[1] / ref[1]:.2f}"
    print(f"| {n} | {m[0]:.2f} | {m[1]:.2f} | {m[2]:.3f} | {m[3]:.3f} | {rel} |")
print()
for n in order:
    if n == "off":
        continue
    cost = [100 * (1 - med[n][i] / ref[i]) for i in range(2)]
    print(f"- {n}: costs {cost[0]:.1f} % (1 stream) and {cost[1]:.1f} % (4 streams) of the throughput with both off")
PY
