#!/usr/bin/env bash
# Installs what xlb needs to build, run and test, skipping whatever is already there:
# Debian packages, the nightly toolchain's rust-src, bpf-linker built against rustc's LLVM,
# and a mounted bpffs. Safe to run again and again.
set -euo pipefail

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: run as root (XDP, BPF maps and network namespaces need it)" >&2
    exit 1
fi

# 1. Debian packages: iproute2 (namespaces, veths), ethtool (lab offloads), tcpdump (checks
#    that replies bypass the balancer), curl (real HTTP client), bpftool (inspection and the
#    pinned-link checks), systemd (systemd-analyze verify of the unit), libcap2-bin (capsh:
#    the unit's capabilities are known to the kernel).
missing=()
for pair in ip:iproute2 ethtool:ethtool tcpdump:tcpdump curl:curl bpftool:bpftool python3:python3 \
    systemd-analyze:systemd capsh:libcap2-bin dpkg-deb:dpkg; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 2. Rust: stable builds the user side; nightly with rust-src builds the eBPF side.
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found; install Rust with rustup first" >&2
    exit 1
fi
if ! rustup toolchain list | grep -q '^nightly'; then
    say "installing the nightly toolchain"
    rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
    say "adding rust-src to nightly"
    rustup component add rust-src --toolchain nightly
fi

# 3. bpf-linker, built against the LLVM that ships with rustc (its default LLVM is newer
#    than rustc's and fails to link).
if ! bpf-linker --version >/dev/null 2>&1; then
    sysroot=$(rustc +nightly --print sysroot)
    lib=$(ls "$sysroot"/lib/libLLVM.so.*-nightly 2>/dev/null | head -1)
    if [ -z "$lib" ]; then
        echo "setup: no libLLVM in $sysroot/lib; cannot build bpf-linker" >&2
        exit 1
    fi
    llvm_major=$(basename "$lib" | sed -E 's/libLLVM\.so\.([0-9]+).*/\1/')
    prefix=/opt/llvm-rust-nightly
    mkdir -p "$prefix/lib"
    ln -sf "$lib" "$prefix/lib/libLLVM.so"
    ln -sf "$lib" "$prefix/lib/$(basename "$lib")"
    say "building bpf-linker against LLVM $llvm_major (about 2 minutes)"
    LLVM_PREFIX=$prefix cargo install bpf-linker --locked --no-default-features \
        --features "llvm-$llvm_major"
fi

# 4. cargo-deb, which builds the Debian package (and the packaging test). Pinned: 3.8 builds
#    on rustc 1.95 and still accepts the dev profile the test packages without rebuilding.
if ! cargo deb --version 2>/dev/null | grep -q ' 3\.8\.'; then
    say "installing cargo-deb 3.8.0"
    cargo install cargo-deb --version 3.8.0 --locked
fi

# 5. bpffs, for pinned BPF objects (bpftool, xlbd pins its datapath there).
if ! mount | grep -q ' /sys/fs/bpf type bpf'; then
    say "mounting bpffs on /sys/fs/bpf"
    mkdir -p /sys/fs/bpf
    mount -t bpf bpffs /sys/fs/bpf
fi
say "ready"
