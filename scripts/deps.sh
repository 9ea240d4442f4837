#!/usr/bin/env bash
# Installs what building and testing Warden needs, skipping whatever is already there.
#
#   scripts/deps.sh          Debian packages (swtpm, tpm2-tss, ...), cargo-nextest and cargo-deb
#   scripts/deps.sh --fuzz   also cargo-fuzz and a nightly toolchain
#
# Debian packages need root (or sudo). The Rust toolchain itself (rustup, stable) is expected
# to be installed already.
set -euo pipefail

fuzz=false
for arg in "$@"; do
    case "$arg" in
        --fuzz) fuzz=true ;;
        -h | --help)
            sed -n '2,8p' "$0"
            exit 0
            ;;
        *)
            echo "deps.sh: unknown argument: $arg" >&2
            exit 2
            ;;
    esac
done

say() { echo "deps: $*"; }

# --- Debian packages --------------------------------------------------------------------
# gcc and libc6-dev: C code in aws-lc-rs, ring and libfuzzer; the rest: the TPM stack and its tools.
# tshark: enforcer/tests/keylog_tshark.rs decrypts Warden's ESP with the SA key log.
# iperf3 and ping: tests/governance_e2e.rs measures one tenant's throughput and latency under another's flood.
packages=(gcc g++ libc6-dev make swtpm swtpm-tools libtss2-dev tpm2-tools pkg-config ca-certificates openssl rsyslog rsyslog-gnutls libnftnl-dev libmnl-dev nftables iproute2 procps tshark tcpdump iperf3 iputils-ping)
missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed'; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]} > 0)); then
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || {
            echo "deps: need root to install: ${missing[*]}" >&2
            exit 1
        }
        sudo=(sudo)
    fi
    say "installing Debian packages: ${missing[*]}"
    # tshark's wireshark-common asks whether non-root users may capture: answer no.
    echo 'wireshark-common wireshark-common/install-setuid boolean false' |
        "${sudo[@]}" debconf-set-selections
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# --- Rust -------------------------------------------------------------------------------
if ! command -v cargo >/dev/null; then
    echo "deps: cargo not found: install the Rust toolchain (rustup, stable) first" >&2
    exit 1
fi

if ! cargo nextest --version >/dev/null 2>&1; then
    say "installing cargo-nextest"
    cargo install cargo-nextest --locked
fi

# cargo-deb builds the Debian package (tests/package.rs); pinned, as its CLI changes.
if ! cargo deb --version 2>/dev/null | grep -q '3\.8\.0'; then
    say "installing cargo-deb"
    cargo install cargo-deb --version 3.8.0 --locked
fi

if $fuzz; then
    if ! rustup toolchain list | grep -q '^nightly'; then
        say "installing the nightly toolchain"
        rustup toolchain install nightly --profile minimal
    fi
    if ! cargo fuzz --version >/dev/null 2>&1; then
        say "installing cargo-fuzz"
        cargo install cargo-fuzz --locked
    fi
fi

say "all present"
