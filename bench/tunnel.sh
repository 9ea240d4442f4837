#!/usr/bin/env bash
# Tunnel figures for docs/performance.md (root), every peer measured in the same run on the
# same topology: two network namespaces joined by a veth pair ("the wire", MTU 1500,
# 198.51.100.1/24 in a, .2/24 in b), tenant addresses 203.0.113.1 (a) and 203.0.113.2 (b):
#   - TCP throughput a -> b, iperf3 with 1 and with 4 streams (receiver side, Gbit/s);
#   - latency, p50 and p99 of the rtt of `ping -i 0.002` a -> b (ms);
# for these variants, the topology made fresh for each and torn down after it:
#   plain         203.0.113.x directly on the veth ends (no tunnel, the ceiling);
#   wireguard-go  Debian's userspace WireGuard (there is no kernel module here);
#   boringtun     boringtun-cli from crates.io (cargo install into $BENCH_TOOLS);
#   warden        Warden's two-node tunnel, via $WARDEN_CLUSTER (see setup_warden).
# Usage: [VARIANTS="plain wireguard-go boringtun warden"] [DURATION=10] [PINGS=1000] \
#        bash bench/tunnel.sh      (prints a Markdown table; progress goes to stderr)
# Other knobs: BENCH_TOOLS (default /var/tmp/warden-bench-tools), WARDEN_CLUSTER (default
# target/release/examples/bench_cluster), WARDEN_UP_TIMEOUT (s, default 30), WARDEN_ARGS (extra
# flags for `bench_cluster up`, e.g. "--limits --telemetry 1"; bench/governance.sh uses them).
set -euo pipefail
cd "$(dirname "$0")/.."

variants=${VARIANTS:-plain wireguard-go boringtun warden}
duration=${DURATION:-10}
pings=${PINGS:-1000}
tools=${BENCH_TOOLS:-/var/tmp/warden-bench-tools}
warden_cluster=${WARDEN_CLUSTER:-target/release/examples/bench_cluster}
warden_up_timeout=${WARDEN_UP_TIMEOUT:-30}
export DEBIAN_FRONTEND=noninteractive

nsa="wbench-a-$$" nsb="wbench-b-$$"
veth_a="wbv-a$$" veth_b="wbv-b$$"   # the wire (interface names: at most 15 characters)
# The userspace implementations put their control socket at /var/run/wireguard/IFACE.sock,
# a path that both namespaces (and the host) share, so each side gets its own name.
wg_a="wba$$" wg_b="wbb$$"
ip_a=203.0.113.1 ip_b=203.0.113.2 wire_a=198.51.100.1 wire_b=198.51.100.2

if [[ $(id -u) != 0 ]]; then echo "tunnel.sh: run as root" >&2; exit 1; fi
[[ $duration =~ ^[0-9]+$ && $pings =~ ^[0-9]+$ ]] || { echo "DURATION and PINGS must be integers" >&2; exit 1; }

last_msg=
log() { echo "[tunnel] $*" >&2; last_msg=$*; }

# ---- tools ----------------------------------------------------------------------------------

apt_updated=
ensure_pkg() { # command package: install the Debian package if the command is missing
    command -v "$1" >/dev/null 2>&1 && return 0
    log "installing $2"
    if ! apt-get install -y -qq --no-install-recommends "$2" >/dev/null 2>&1; then
        if [[ -z $apt_updated ]]; then
            apt_updated=1
            apt-get update -qq >/dev/null 2>&1 || true
        fi
        apt-get install -y -qq --no-install-recommends "$2" >/dev/null 2>&1 ||
            { log "apt-get install $2 failed"; return 1; }
    fi
    command -v "$1" >/dev/null 2>&1
}

boringtun_bin="$tools/bin/boringtun-cli"
ensure_boringtun() {
    if [[ ! -x $boringtun_bin ]]; then
        log "installing boringtun-cli with cargo into $tools (a minute or so)"
        command -v cargo >/dev/null || { log "cargo not found: cannot install boringtun-cli"; return 1; }
        mkdir -p "$tools"
        local t0=$SECONDS
        cargo install -q boringtun-cli --locked --root "$tools" >&2 ||
            { log "cargo install boringtun-cli failed"; return 1; }
        log "boringtun-cli installed in $((SECONDS - t0)) s"
    fi
    [[ -x $boringtun_bin ]] || return 1
    log "boringtun: using $("$boringtun_bin" --version) ($boringtun_bin)"
}

ensure_pkg iperf3 iperf3
ensure_pkg ping iputils-ping
ensure_pkg python3 python3

# ---- topology and teardown ------------------------------------------------------------------

work=$(mktemp -d /tmp/wbench-$$.XXXXXX)   # keys, logs and the warden state dir
chmod 700 "$work"
extra_pids=()        # processes started outside the namespaces (e.g. the warden cluster)
warden_state=

wait_for() { # seconds description command...: poll every 0.1 s until the command succeeds
    local secs=$1 what=$2 i
    shift 2
    for ((i = 0; i < secs * 10; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    log "timed out after ${secs} s waiting for $what"
    return 1
}

ns_exists() { ip netns list | grep -qw -- "$1"; }

kill_ns_procs() { # TERM, then after up to 5 s KILL, every process inside the namespaces
    local ns pids=() i
    for i in 1 2; do
        pids=()
        for ns in "$nsa" "$nsb"; do
            if ns_exists "$ns"; then mapfile -t -O "${#pids[@]}" pids < <(ip netns pids "$ns" 2>/dev/null); fi
        done
        ((${#pids[@]})) || return 0
        if [[ $i == 1 ]]; then
            kill -TERM "${pids[@]}" 2>/dev/null || true
            for ((n = 0; n < 50; n++)); do
                kill -0 "${pids[@]}" 2>/dev/null || break
                sleep 0.1
            done
        else
            kill -KILL "${pids[@]}" 2>/dev/null || true
            sleep 0.2
        fi
    done
}

stop_pid() { # pid: TERM its process group and itself, KILL after 5 s
    local pid=$1 n
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM -- "-$pid" "$pid" 2>/dev/null || true
    for ((n = 0; n < 50; n++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$pid" "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

teardown() { # safe to call any number of times, whatever state a variant left
    local -
    set +e
    if [[ -n $warden_state && -x $warden_cluster ]]; then
        timeout 15 "$warden_cluster" down --state "$warden_state" >>"$work/warden.log" 2>&1 ||
            echo "[tunnel] warden: '$warden_cluster down' failed or timed out: $(tail -n 3 "$work/warden.log" | tr '\n' ' ')" >&2
    fi
    warden_state=
    local pid
    for pid in "${extra_pids[@]}"; do stop_pid "$pid"; done
    extra_pids=()
    kill_ns_procs
    local ns
    for ns in "$nsa" "$nsb"; do
        if ns_exists "$ns"; then ip netns del "$ns" 2>/dev/null; fi
    done
    wait_for 10 "namespaces to go" bash -c "! ip netns list | grep -qE -- '$nsa|$nsb'" ||
        log "WARNING: namespaces still listed: $(ip netns list | grep -E -- "$nsa|$nsb" | tr '\n' ' ')"
    ip link del "$veth_a" 2>/dev/null || true   # only there if the namespaces never got it
    rm -f "/var/run/wireguard/$wg_a.sock" "/var/run/wireguard/$wg_b.sock"
    return 0
}

on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    ((rc == 0)) || echo "[tunnel] stopped (exit status $rc), cleaning up" >&2
    teardown
    rm -rf "$work"
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

make_wire() { # fresh namespaces joined by the veth, wire addresses up, lo up
    teardown
    ip netns add "$nsa" && ip netns add "$nsb" || { log "ip netns add failed"; return 1; }
    ip link add "$veth_a" mtu 1500 type veth peer name "$veth_b" mtu 1500 &&
        ip link set "$veth_a" netns "$nsa" && ip link set "$veth_b" netns "$nsb" ||
        { log "creating the veth pair failed"; return 1; }
    ip -n "$nsa" link set lo up && ip -n "$nsb" link set lo up &&
        ip -n "$nsa" addr add "$wire_a/24" dev "$veth_a" &&
        ip -n "$nsb" addr add "$wire_b/24" dev "$veth_b" &&
        ip -n "$nsa" link set "$veth_a" up && ip -n "$nsb" link set "$veth_b" up ||
        { log "configuring the wire failed"; return 1; }
    wait_for 10 "the wire ($wire_a -> $wire_b)" ip netns exec "$nsa" ping -c 1 -W 1 "$wire_b"
}

tunnel_ready() { # 203.0.113.2 answers from 203.0.113.1
    wait_for "${1:-10}" "$ip_b to answer through the tunnel" \
        ip netns exec "$nsa" ping -c 1 -W 1 -I "$ip_a" "$ip_b"
}

# ---- variants: each setup_* leaves a ready tunnel (or returns non-zero) ----------------------

setup_plain() {
    ip -n "$nsa" addr add "$ip_a/24" dev "$veth_a" && ip -n "$nsb" addr add "$ip_b/24" dev "$veth_b" ||
        { log "adding tenant addresses to the veth failed"; return 1; }
    tunnel_ready 10
}

wg_configure() { # ns iface our-ip peer-wire-ip peer-tenant-ip privkey-file peer-pubkey
    local ns=$1 dev=$2 ip=$3 peer=$4 peer_ip=$5 key=$6 pub=$7
    ip netns exec "$ns" wg set "$dev" private-key "$key" listen-port 51820 \
        peer "$pub" endpoint "$peer:51820" allowed-ips "$peer_ip/32" &&
        ip -n "$ns" addr add "$ip/24" dev "$dev" &&
        ip -n "$ns" link set "$dev" mtu 1420 up ||
        { log "configuring $dev in $ns failed"; return 1; }
}

wg_userspace_pair() { # start-command...: run it in each namespace with the interface name appended
    local ns dev
    for ns in "$nsa" "$nsb"; do
        [[ $ns == "$nsa" ]] && dev=$wg_a || dev=$wg_b
        ip netns exec "$ns" "$@" "$dev" >>"$work/$dev.log" 2>&1 ||
            { log "'$* $dev' failed in $ns: $(tail -n 3 "$work/$dev.log" | tr '\n' ' ')"; return 1; }
        wait_for 10 "$dev to appear in $ns" ip -n "$ns" link show "$dev" || return 1
        wait_for 10 "the control socket of $dev" test -S "/var/run/wireguard/$dev.sock" || return 1
        # userspace for sure: a TUN device, not a kernel "wireguard" link
        ip -n "$ns" -d link show "$dev" | grep -qw tun ||
            { log "$dev in $ns is not a TUN device"; return 1; }
    done
    (umask 077 && wg genkey >"$work/a.key" && wg genkey >"$work/b.key") || { log "wg genkey failed"; return 1; }
    local pub_a pub_b
    pub_a=$(wg pubkey <"$work/a.key") && pub_b=$(wg pubkey <"$work/b.key") || return 1
    wg_configure "$nsa" "$wg_a" "$ip_a" "$wire_b" "$ip_b" "$work/a.key" "$pub_b" &&
        wg_configure "$nsb" "$wg_b" "$ip_b" "$wire_a" "$ip_a" "$work/b.key" "$pub_a" &&
        tunnel_ready 10
}

setup_wireguard-go() {
    ensure_pkg wireguard-go wireguard-go && ensure_pkg wg wireguard-tools || return 1
    # wireguard-go daemonizes itself; WG_PROCESS_FOREGROUND must not be set for that
    wg_userspace_pair env -u WG_PROCESS_FOREGROUND wireguard-go
}

setup_boringtun() {
    ensure_pkg wg wireguard-tools && ensure_boringtun || return 1
    # boringtun-cli daemonizes too; as root without sudo it must not try to drop privileges
    # (--disable-drop-privileges, same as WG_SUDO=1); its default log, /tmp/boringtun.out, would
    # be shared by both sides, so a wrapper gives each interface its own
    cat >"$work/boringtun-start" <<EOF
#!/bin/sh
exec "$boringtun_bin" --disable-drop-privileges --log "$work/\$1.boringtun.log" "\$1"
EOF
    chmod +x "$work/boringtun-start"
    wg_userspace_pair "$work/boringtun-start"
}

# Contract with the Warden side (the executable named by $WARDEN_CLUSTER, default
# target/release/examples/bench_cluster, built by
# `cargo build --release -p warden --example bench_cluster`):
#   - When it is called, the namespaces NSA and NSB exist with lo up and the wire configured:
#     a veth pair, MTU 1500, 198.51.100.1/24 in NSA and 198.51.100.2/24 in NSB, nothing else.
#   - `"$WARDEN_CLUSTER" up --ns-a NSA --ns-b NSB --state DIR` (run as root from the repo root,
#     DIR an empty directory it may use freely) brings up both Warden nodes, one per
#     namespace, peered over the wire, with tenant address 203.0.113.1 in NSA and 203.0.113.2
#     in NSB: 203.0.113.2 must be a local address in NSB, reachable from NSA (source
#     203.0.113.1) through the tunnel; the tenant addresses must not be put on the veth.
#     `up` may stay in the foreground for the tunnel's lifetime (the script starts it in the
#     background, in a process group of its own) or fork and exit 0 once the tunnel is up;
#     a non-zero exit is a failure. The script polls with ping for up to $WARDEN_UP_TIMEOUT s
#     (default 30) for the tunnel to carry traffic.
#   - `"$WARDEN_CLUSTER" down --state DIR` stops everything `up` started, within 15 s. After
#     it the script still kills `up`'s process group and every process left inside NSA/NSB,
#     then deletes the namespaces; being killed (TERM, then KILL) at any time must be safe.
#   - Output of both commands goes to a log the script shows the tail of on failure.
setup_warden() {
    if [[ ! -x $warden_cluster ]]; then
        echo "warden: skipped (build with: cargo build --release -p warden --example bench_cluster)" >&2
        return 2
    fi
    warden_state="$work/warden-state"
    rm -rf "$warden_state" && mkdir -p "$warden_state"
    : >"$work/warden.log"
    # shellcheck disable=SC2086  # WARDEN_ARGS: extra flags, word-split on purpose
    setsid "$warden_cluster" up --ns-a "$nsa" --ns-b "$nsb" --state "$warden_state" ${WARDEN_ARGS:-} \
        >>"$work/warden.log" 2>&1 &
    local pid=$! i rc
    extra_pids+=("$pid")
    for ((i = 0; i < warden_up_timeout * 10; i++)); do
        if ip netns exec "$nsa" ping -c 1 -W 1 -I "$ip_a" "$ip_b" >/dev/null 2>&1; then break; fi
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" && rc=0 || rc=$?
            if ((rc != 0)); then
                log "warden: '$warden_cluster up' exited with $rc: $(tail -n 5 "$work/warden.log" | tr '\n' ' ')"
                return 1
            fi
        fi
        sleep 0.1
    done
    ip netns exec "$nsa" ping -c 1 -W 1 -I "$ip_a" "$ip_b" >/dev/null 2>&1 || {
        log "warden: no answer from $ip_b through the tunnel after $warden_up_timeout s: $(tail -n 5 "$work/warden.log" | tr '\n' ' ')"
        return 1
    }
    ip -n "$nsb" -o addr show | grep -q " $ip_b/" ||
        { log "warden: $ip_b is not a local address in $nsb"; return 1; }
    if ip -n "$nsa" -o addr show dev "$veth_a" | grep -q ' 203\.0\.113\.' ||
        ip -n "$nsb" -o addr show dev "$veth_b" | grep -q ' 203\.0\.113\.'; then
        log "warden: tenant addresses are on the veth: that is no tunnel"
        return 1
    fi
}

# ---- measurements ---------------------------------------------------------------------------

iperf_gbps() { # streams: prints receiver-side Gbit/s
    local out
    out=$(ip netns exec "$nsa" timeout $((duration + 30)) \
        iperf3 -c "$ip_b" -B "$ip_a" -t "$duration" -P "$1" -J 2>&1) || true
    python3 -c '
import json, sys
try:
    d = json.loads(sys.stdin.read())
except ValueError:
    sys.exit("iperf3 printed no JSON")
if d.get("error"):
    sys.exit("iperf3: " + d["error"])
print("%.2f" % (d["end"]["sum_received"]["bits_per_second"] / 1e9))
' <<<"$out"
}

ping_percentiles() { # prints "p50 p99 loss%" in ms
    local out
    out=$(ip netns exec "$nsa" timeout $((pings / 100 + 30)) \
        ping -c "$pings" -i 0.002 -W 1 -I "$ip_a" "$ip_b" 2>&1) || true
    python3 -c '
import math, re, sys
n = int(sys.argv[1])
rtts = sorted(float(m) for m in re.findall(r"time=([0-9.]+) ms", sys.stdin.read()))
if not rtts:
    sys.exit("ping got no replies")
def pct(p):  # nearest rank
    return rtts[max(0, math.ceil(p / 100 * len(rtts)) - 1)]
print("%.3f %.3f %.1f" % (pct(50), pct(99), 100 * (n - len(rtts)) / n))
' "$pings" <<<"$out"
}

declare -A r1 r4 p50 p99 note
measure() { # variant
    local v=$1 out
    ip netns exec "$nsb" iperf3 -s -B "$ip_b" >"$work/iperf3-server.log" 2>&1 &
    wait_for 10 "the iperf3 server" bash -c \
        "ip netns exec '$nsb' ss -Hltn 'sport = :5201' | grep -q ." || return 1
    ip netns exec "$nsa" ping -c 20 -i 0.01 -q -I "$ip_a" "$ip_b" >/dev/null 2>&1 || true  # warm up
    log "$v: iperf3, 1 stream, ${duration} s"
    out=$(iperf_gbps 1 2>&1) || { log "$v: $out"; return 1; }
    r1[$v]=$out
    log "$v: iperf3, 4 streams, ${duration} s"
    out=$(iperf_gbps 4 2>&1) || { log "$v: $out"; return 1; }
    r4[$v]=$out
    log "$v: ping, $pings packets"
    out=$(ping_percentiles 2>&1) || { log "$v: $out"; return 1; }
    read -r p50[$v] p99[$v] loss <<<"$out"
    [[ $loss == 0.0 ]] || note[$v]="ping lost $loss %"
    return 0
}

run_variant() { # variant: 0 measured, 1 failed, 2 skipped
    local v=$1 rc=0
    if [[ $v == warden && ! -x $warden_cluster ]]; then setup_warden; return 2; fi
    log "$v: setting up"
    make_wire || return 1
    "setup_$v" || rc=$?
    [[ $v == warden && $rc == 2 ]] && return 2   # not built
    ((rc == 0)) || return 1
    log "$v: tunnel up, $ip_b routed via $(ip -n "$nsa" route get "$ip_b" from "$ip_a" 2>&1 | grep -o 'dev [^ ]*')"
    measure "$v" || rc=1
    teardown
    return "$rc"
}

# processes of the kinds we start that already run (not ours): not reported at the end
ours() { local p; for p in wireguard-go boringtun-cli iperf3 bench_cluster; do pgrep -x "$p" || true; done | sort; }
before=$(ours)

versions=()
order=()
for v in $variants; do
    case $v in plain | wireguard-go | boringtun | warden) ;;
    *) log "unknown variant '$v' (plain, wireguard-go, boringtun, warden): ignored"; continue ;;
    esac
    order+=("$v")
    rc=0 last_msg=
    run_variant "$v" || rc=$?
    teardown
    case $rc in
    0) log "$v: done" ;;
    2) note[$v]="skipped, not built" ;;
    *) note[$v]="failed: ${last_msg#"$v: "}"; log "$v: FAILED, going on with the next variant" ;;
    esac
    case $v in
    wireguard-go) command -v wireguard-go >/dev/null && versions+=("wireguard-go $(wireguard-go --version 2>&1 | head -n 1 | grep -oE '[0-9][0-9.]+' | head -n 1)") ;;
    boringtun) [[ -x $boringtun_bin ]] && versions+=("boringtun-cli $("$boringtun_bin" --version | awk '{print $2}')") ;;
    esac
done
versions+=("$(iperf3 --version | head -n 1 | awk '{print $1, $2}')")

# ---- report ---------------------------------------------------------------------------------

echo "| variant | 1 stream Gbit/s | 4 streams Gbit/s | ping p50 ms | ping p99 ms |"
echo "| --- | ---: | ---: | ---: | ---: |"
for v in "${order[@]}"; do
    [[ ${note[$v]:-} == skipped* ]] && continue
    echo "| $v | ${r1[$v]:--} | ${r4[$v]:--} | ${p50[$v]:--} | ${p99[$v]:--} |"
done
for v in "${order[@]}"; do
    [[ -n ${note[$v]:-} ]] && echo "- $v: ${note[$v]}"
done

has_row() { [[ -n ${r1[$1]:-} && -n ${r4[$1]:-} && -n ${p50[$1]:-} && -n ${p99[$1]:-} ]]; }
if has_row warden; then
    peers=()
    for v in wireguard-go boringtun; do has_row "$v" && peers+=("$v=${r1[$v]},${r4[$v]},${p50[$v]},${p99[$v]}"); done
    rows=()
    has_row plain && rows+=("plain=${r1[plain]},${r4[plain]},${p50[plain]},${p99[plain]}")
    echo
    python3 - "warden=${r1[warden]},${r4[warden]},${p50[warden]},${p99[warden]}" "${peers[@]}" -- "${rows[@]}" <<'PY'
import sys
args = sys.argv[1:]
def parse(a):
    name, vals = a.split("=")
    return name, [float(x) for x in vals.split(",")]
_, w = parse(args[0])
sep = args.index("--")
peers = [parse(a) for a in args[1:sep]]
plain = [parse(a) for a in args[sep + 1:]]
lines = []
if peers:  # per column, the better of the two: higher throughput, lower latency
    best = [max(peers, key=lambda p: p[1][i]) if i < 2 else min(peers, key=lambda p: p[1][i])
            for i in range(4)]
    lines.append(("best userspace WireGuard", [b[1][i] for i, b in enumerate(best)],
                  " (" + ", ".join(sorted({b[0] for b in best})) + ")"))
for name, vals in plain:
    lines.append((name, vals, ""))
if lines:
    print("| warden vs | 1 stream | 4 streams | p50 | p99 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, vals, who in lines:
        print("| %s%s | %s |" % (name, who, " | ".join("%.2fx" % (w[i] / vals[i]) for i in range(4))))
    print("(throughput: warden / peer, higher is better; latency: warden / peer, lower is better)")
PY
fi

cpu=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)
echo
echo "Kernel $(uname -r), CPU ${cpu:-unknown} ($(nproc) cores), $(date -u '+%Y-%m-%d %H:%M UTC');" \
    "$duration s per iperf3 run, $pings pings at 2 ms; $(IFS=,; echo "${versions[*]}" | sed 's/,/, /g')."

# nothing of ours may be left behind
trap - EXIT INT TERM
teardown
rm -rf "$work"
after=$(ours)
left=$(comm -13 <(echo "$before") <(echo "$after") | grep . || true)
if [[ -n $left ]]; then
    log "WARNING: processes left behind: $(ps -o pid=,comm= -p "$(echo $left | tr ' ' ,)" | tr -s ' ' | tr '\n' ';')"
fi
if ip netns list | grep -qE -- "$nsa|$nsb"; then log "WARNING: namespaces left behind"; fi
exit 0
