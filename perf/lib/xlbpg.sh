# Helpers shared by perf/throughput.sh, perf/iptables.sh and perf/kernel-pktgen.sh. Sourced,
# not run. Everything these scripts create is named with the prefix xlbpg- (namespaces,
# interfaces inside them, temporary directories), and xlbpg_cleanup removes it again.

# shellcheck shell=bash

xlbpg_here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
xlbpg_repo=$(cd "$xlbpg_here/.." && pwd)

xlbpg_say() { printf '\033[1m[%s]\033[0m %s\n' "${XLBPG_NAME:-perf}" "$*" >&2; }
xlbpg_die() { xlbpg_say "error: $*"; exit 1; }

# The report directory: $XLB_PERF_OUT, or perf/results/<UTC date>/.
xlbpg_out_dir() {
    local out=${XLB_PERF_OUT:-$xlbpg_here/results/$(date -u +%Y-%m-%d)}
    mkdir -p "$out"
    (cd "$out" && pwd)
}

# xlbpg_lock NAME: one run of a script at a time (they share namespace names, and each
# removes leftovers of its own name at start). The lock goes with the process.
xlbpg_lock() {
    exec 9>"/tmp/xlbpg-$1.lock"
    flock -n 9 || xlbpg_die "another $1 run is in progress (lock /tmp/xlbpg-$1.lock)"
}

xlbpg_require_root() {
    [ "$(id -u)" -eq 0 ] || xlbpg_die "run as root (XDP, BPF and network namespaces need it)"
}

# Builds xlbd and xlb-pktgen (release) unless XLBD and XLB_PKTGEN point at binaries already.
xlbpg_build() {
    local target
    target=$(cd "$xlbpg_repo" && cargo metadata --format-version 1 --no-deps \
        | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    if [ -z "${XLBD:-}" ] || [ -z "${XLB_PKTGEN:-}" ]; then
        xlbpg_say "building xlbd and xlb-pktgen (cargo build --release -p xlb-daemon)"
        (cd "$xlbpg_repo" && cargo build --release --quiet -p xlb-daemon --bin xlbd --bin xlb-pktgen)
    fi
    XLBD=${XLBD:-$target/release/xlbd}
    XLB_PKTGEN=${XLB_PKTGEN:-$target/release/xlb-pktgen}
    export XLBD XLB_PKTGEN
}

# ns NAME CMD...: runs CMD inside the network namespace NAME.
xlbpg_ns() { ip netns exec "$1" "${@:2}"; }

# Creates namespace NAME with loopback up and IPv6 off (no router solicitations or other
# chatter reaching the counting programs).
xlbpg_ns_add() {
    ip netns add "$1"
    xlbpg_ns "$1" ip link set lo up
    xlbpg_ns "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
}

# Removes every namespace whose name starts with PREFIX, ending the processes inside first
# (all of them were started by these scripts: the namespaces are theirs).
xlbpg_cleanup() {
    local prefix=$1 n pid
    for n in $(ip netns list | awk '{print $1}' | grep "^${prefix}" || true); do
        for pid in $(ip netns pids "$n" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
    done
    sleep 0.3
    for n in $(ip netns list | awk '{print $1}' | grep "^${prefix}" || true); do
        for pid in $(ip netns pids "$n" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$n" 2>/dev/null || true
    done
}

# xlbpg_wait_for FILE PATTERN SECONDS: waits until FILE contains PATTERN (bounded).
xlbpg_wait_for() {
    local file=$1 pattern=$2 seconds=$3 i
    for i in $(seq 1 $((seconds * 10))); do
        grep -q "$pattern" "$file" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# xlbpg_json FILE EXPR: evaluates a Python expression over the JSON object `j` read from the
# last line of FILE.
xlbpg_json() {
    python3 - "$1" "$2" <<'PY'
import json, sys
lines = [l for l in open(sys.argv[1]) if l.strip()]
j = json.loads(lines[-1])
print(eval(sys.argv[2], {"j": j}))
PY
}

# One line about the machine, for the reports.
xlbpg_machine() {
    local cpu
    cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
    printf 'kernel %s, %s CPU(s) %s, load average at start %s' \
        "$(uname -r)" "$(nproc)" "${cpu:+($cpu)}" "$(cut -d' ' -f1-3 /proc/loadavg)"
}
