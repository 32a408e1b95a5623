#!/usr/bin/env bash
# Drives the kernel's packet generator (/proc/net/pktgen) on machines whose kernel has it, as
# a cross-check of xlb-pktgen. Where the module is missing (`modprobe pktgen` fails, as on the
# project's test kernel) it says so in the report and exits 0.
#
#   perf/kernel-pktgen.sh [--quick] [--sizes "64 1500"] [--seconds S] [--runs N] [--flows N]
#   perf/kernel-pktgen.sh --interface IF --dst-mac MAC --dst ADDR [--src ADDR] [...]
#
# Without --interface it builds its own pair of namespaces (xlbpg-kp-gen, xlbpg-kp-sink) joined
# by a veth, runs pktgen in the first and counts arrivals with xlb_sink (`xlb-pktgen sink`) in
# the second: the same generator-to-sink path that perf/throughput.sh drives with xlb-pktgen.
# With --interface it sends from that interface in the current namespace towards --dst-mac
# and --dst (a NIC, for instance); then nothing is counted at the far end.
# Default: 5 runs of 3 s per size; --quick: 3 runs of 1 s.
#
# Writes kernel-pktgen.md and kernel-pktgen.csv into $XLB_PERF_OUT (default
# perf/results/<UTC date>/). Runs as root; what it creates is removed at the end.
set -euo pipefail

XLBPG_NAME=kernel-pktgen
# shellcheck source=perf/lib/xlbpg.sh
source "$(cd "$(dirname "$0")" && pwd)/lib/xlbpg.sh"

sizes="64 1500" seconds=3 runs=5 flows=10000 quick=0
interface="" dst_mac="" dst="" src=10.73.1.1
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1; runs=3; seconds=1 ;;
        --sizes) sizes=${2:?}; shift ;;
        --seconds) seconds=${2:?}; shift ;;
        --runs) runs=${2:?}; shift ;;
        --flows) flows=${2:?}; shift ;;
        --interface) interface=${2:?}; shift ;;
        --dst-mac) dst_mac=${2:?}; shift ;;
        --dst) dst=${2:?}; shift ;;
        --src) src=${2:?}; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) xlbpg_die "unknown argument $1 (see --help)" ;;
    esac
    shift
done

xlbpg_require_root
xlbpg_lock kernel-pktgen
out=$(xlbpg_out_dir)
md=$out/kernel-pktgen.md
csv=$out/kernel-pktgen.csv

# Why pktgen cannot be used, or nothing if it can.
pktgen_missing() {
    [ -e /proc/net/pktgen/pgctrl ] && return 0
    local why=()
    if command -v modprobe >/dev/null 2>&1; then
        modprobe pktgen 2>"/tmp/xlbpg-kp-modprobe.$$" && [ -e /proc/net/pktgen/pgctrl ] && return 0
        why+=("\`modprobe pktgen\` failed: $(tr '\n' ' ' <"/tmp/xlbpg-kp-modprobe.$$" | sed 's/ *$//')")
    else
        why+=("\`modprobe\` is not installed (Debian package kmod)")
    fi
    [ -e /proc/modules ] || why+=("the kernel has no loadable module support (no /proc/modules)")
    if [ -r /proc/config.gz ] && zcat /proc/config.gz | grep '^# CONFIG_NET_PKTGEN is not set' >/dev/null; then
        why+=("its config says CONFIG_NET_PKTGEN is not set")
    fi
    local IFS=';'
    echo "${why[*]}" | sed 's/;/; /g'
}

reason=$(pktgen_missing)
rm -f "/tmp/xlbpg-kp-modprobe.$$"
if [ -n "$reason" ]; then
    {
        echo "## Kernel pktgen"
        echo ""
        echo "Not measured: this kernel ($(uname -r)) has no pktgen (no /proc/net/pktgen;" \
            "$reason). The throughput figures come from xlb-pktgen (BPF_PROG_TEST_RUN live" \
            "frames) instead; see the throughput section."
    } >"$md"
    echo "size,device,run,sent_pps,sent_gbps,received_pps" >"$csv"
    cat "$md"
    xlbpg_say "kernel pktgen is not available here; wrote the note to $md"
    exit 0
fi
prefix=xlbpg-kp-
# Stops any pktgen run in namespace $1 (or the current one if empty) and releases the devices.
pktgen_stop() {
    local cmd=() t
    [ -n "$1" ] && cmd=(ip netns exec "$1")
    "${cmd[@]}" test -e /proc/net/pktgen/pgctrl 2>/dev/null || return 0
    "${cmd[@]}" sh -c 'echo stop > /proc/net/pktgen/pgctrl' 2>/dev/null || true
    for t in $("${cmd[@]}" ls /proc/net/pktgen/ 2>/dev/null | grep '^kpktgend_'); do
        "${cmd[@]}" sh -c "echo rem_device_all > /proc/net/pktgen/$t" 2>/dev/null || true
    done
}
cleanup() {
    if ip netns list | grep -q "^${prefix}gen"; then pktgen_stop "${prefix}gen"; else pktgen_stop ""; fi
    xlbpg_cleanup "$prefix"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ns_cmd=()
sink_counting=0
if [ -z "$interface" ]; then
    xlbpg_build
    xlbpg_cleanup "$prefix"
    xlbpg_ns_add "${prefix}gen"
    xlbpg_ns_add "${prefix}sink"
    xlbpg_ns "${prefix}gen" ip link add xlbpg-kg type veth peer name xlbpg-ks netns "${prefix}sink"
    xlbpg_ns "${prefix}gen" ip link set xlbpg-kg address 02:73:00:00:00:01 mtu 1600 up
    xlbpg_ns "${prefix}sink" ip link set xlbpg-ks address 02:73:00:00:00:02 mtu 1600 up
    interface=xlbpg-kg dst_mac=02:73:00:00:00:02 dst=10.73.0.100
    ns_cmd=(ip netns exec "${prefix}gen")
    sink_counting=1
elif [ -z "$dst_mac" ] || [ -z "$dst" ]; then
    xlbpg_die "--interface needs --dst-mac and --dst"
fi
pg() { "${ns_cmd[@]}" sh -c "echo '$2' > /proc/net/pktgen/$1"; }

# One device on the first pktgen thread; flows spread over UDP source ports (and addresses
# when there are more flows than ports), as xlb-pktgen does.
ports=$(( flows < 64512 ? flows : 64512 ))
addresses=$(( (flows + ports - 1) / ports ))
src_max=$(python3 -c "import ipaddress,sys; print(ipaddress.IPv4Address(sys.argv[1]) + int(sys.argv[2]) - 1)" "$src" "$addresses")
thread=kpktgend_0
echo "size,device,run,sent_pps,sent_gbps,received_pps" >"$csv"
machine=$(xlbpg_machine)
for size in $sizes; do
    for run in $(seq 1 "$runs"); do
        pg "$thread" rem_device_all
        pg "$thread" "add_device $interface"
        # pktgen's pkt_size excludes the 4-byte FCS, like xlb-pktgen's --size.
        for setting in "count 0" "clone_skb 1000" "burst 32" "pkt_size $size" "delay 0" \
            "dst $dst" "dst_mac $dst_mac" "src_min $src" "src_max $src_max" \
            "udp_src_min 1024" "udp_src_max $((1024 + ports - 1))" "udp_dst_min 80" \
            "udp_dst_max 80" "flag UDPSRC_RND"; do
            pg "$interface" "$setting"
        done
        sink_pid=""
        if [ "$sink_counting" = 1 ]; then
            ip netns exec "${prefix}sink" "$XLB_PKTGEN" sink --interface xlbpg-ks \
                --duration $((seconds + 30)) --json >"/tmp/xlbpg-kp-sink.$$" 2>/dev/null &
            sink_pid=$!
            sleep 0.5
        fi
        # count 0 runs until stopped: bounded by the stop below (and by timeout).
        timeout $((seconds + 20)) "${ns_cmd[@]}" sh -c 'echo start > /proc/net/pktgen/pgctrl' &
        start_pid=$!
        sleep "$seconds"
        "${ns_cmd[@]}" sh -c 'echo stop > /proc/net/pktgen/pgctrl'
        wait "$start_pid" 2>/dev/null || true
        result=$("${ns_cmd[@]}" cat "/proc/net/pktgen/$interface" | sed -n '/^Result/,$p')
        # "Result: OK: <usec>(...) usec, <packets> (<size>byte,0frags)" then "<pps>pps <Mb>Mb/sec"
        pps=$(sed -n 's/^ *\([0-9]*\)pps.*/\1/p' <<<"$result" | head -1)
        mbps=$(sed -n 's/.*pps \([0-9]*\)Mb\/sec.*/\1/p' <<<"$result" | head -1)
        received_pps=""
        if [ -n "$sink_pid" ]; then
            kill -INT "$sink_pid" 2>/dev/null || true
            wait "$sink_pid" 2>/dev/null || true
            received_pps=$(xlbpg_json "/tmp/xlbpg-kp-sink.$$" 'j["pps"]' 2>/dev/null || echo "")
            rm -f "/tmp/xlbpg-kp-sink.$$"
        fi
        echo "$size,$interface,$run,${pps:-0},$(awk -v m="${mbps:-0}" 'BEGIN { print m / 1000 }'),${received_pps}" >>"$csv"
        xlbpg_say "$size B run $run: ${pps:-?} pps sent${received_pps:+, $received_pps pps received}"
    done
done
pg "$thread" rem_device_all

python3 - "$csv" "$md" "$machine" "$runs" "$seconds" "$quick" <<'PY'
import csv, statistics, sys
path, md, machine, runs, seconds, quick = sys.argv[1:]
rows = list(csv.DictReader(open(path)))
out = ["## Kernel pktgen" + (" (quick)" if quick == "1" else ""), "",
       f"Medians of {runs} runs of {seconds} s per row. Machine: {machine}.", "",
       "| Frame | Device | Sent Mpps | Sent Gbit/s | Received Mpps (xlb_sink) |",
       "| ---: | --- | ---: | ---: | ---: |"]
for size in sorted({int(r["size"]) for r in rows}):
    sel = [r for r in rows if int(r["size"]) == size]
    sent = statistics.median(float(r["sent_pps"]) for r in sel)
    gbps = statistics.median(float(r["sent_gbps"]) for r in sel)
    recv = [float(r["received_pps"]) for r in sel if r["received_pps"]]
    recv_text = f"{statistics.median(recv) / 1e6:.3f}" if recv else "-"
    out.append(f"| {size} B | {sel[0]['device']} | {sent / 1e6:.3f} | {gbps:.2f} | {recv_text} |")
open(md, "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
xlbpg_say "wrote $md and $csv"
