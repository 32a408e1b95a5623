#!/usr/bin/env bash
# Drives the kernel's packet generator (/proc/net/pktgen) through the balancer, on machines
# whose kernel has it, and reports in the same table as perf/throughput.sh (which drives the
# same topology with xlb's own generator). Where the module is missing (`modprobe pktgen`
# fails, as on the project's test kernel) it says so, in the report and on standard error, and
# exits 0 so the perf suite goes on.
#
#   perf/kernel-pktgen.sh [--quick] [--sizes "64 1500"] [--seconds S] [--runs N] [--flows N]
#   perf/kernel-pktgen.sh --interface IF --dst-mac MAC --dst VIP [--src ADDR] [...]
#
# Without --interface: the topology of perf/throughput.sh (lib/forwarders.sh): a generator
# namespace joined by veths to the floor (xlb_floor) and to xlbd in L2 and IPIP mode. pktgen
# sends UDP to the VIP out of each veth; the forwarder sends every frame back with XDP_TX,
# and xlb_sink (`xlb-pktgen sink`) counts the arrivals at the generator's end.
# With --interface: a real NIC. pktgen sends from IF (in the current namespace) to the
# balancer's NIC (--dst-mac) and a VIP (--dst); the balancer forwards to its backends, so only
# the sent rate is measured here (read the balancer's own counters, `xlb status` or its
# metrics, for what it forwarded).
# Default: 5 runs of 3 s per size; --quick: 3 runs of 1 s.
#
# Writes kernel-pktgen.md and kernel-pktgen.csv into $XLB_PERF_OUT (default
# perf/results/<UTC date>/). Runs as root; what it creates is removed at the end.
set -euo pipefail

XLBPG_NAME=kernel-pktgen
# shellcheck source=perf/lib/xlbpg.sh
source "$(cd "$(dirname "$0")" && pwd)/lib/xlbpg.sh"
# shellcheck source=perf/lib/forwarders.sh
source "$(cd "$(dirname "$0")" && pwd)/lib/forwarders.sh"

sizes="64 1500" seconds=3 runs=5 flows=10000 quick=0
interface="" dst_mac="" dst="" src=10.70.1.1
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
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
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
            "frames) through the same topology instead; see the throughput section."
    } >"$md"
    echo "size,variant,run,sent_pps,received_pps,received_gbps,received_packets,sent_packets,seconds" >"$csv"
    cat "$md"
    xlbpg_say "kernel pktgen is NOT available on this machine: $reason. Nothing measured; wrote the note to $md"
    exit 0
fi
prefix=xlbpg-kp-
work=$(mktemp -d /tmp/xlbpg-kp.XXXXXX)
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
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ns_cmd=()
through_topology=0
if [ -z "$interface" ]; then
    xlbpg_build
    xlbpg_cleanup "$prefix"
    xlbpg_fwd_up
    ns_cmd=(ip netns exec "${prefix}gen")
    through_topology=1
    run_variants=$variants
elif [ -z "$dst_mac" ] || [ -z "$dst" ]; then
    xlbpg_die "--interface needs --dst-mac and --dst"
else
    run_variants=nic
fi
pg() { "${ns_cmd[@]}" sh -c "echo '$2' > /proc/net/pktgen/$1"; }

# One device on the first pktgen thread; flows spread over UDP source ports (and addresses
# when there are more flows than ports), as xlb-pktgen does.
ports=$(( flows < 64512 ? flows : 64512 ))
addresses=$(( (flows + ports - 1) / ports ))
src_max=$(python3 -c "import ipaddress,sys; print(ipaddress.IPv4Address(sys.argv[1]) + int(sys.argv[2]) - 1)" "$src" "$addresses")
thread=kpktgend_0
echo "size,variant,run,sent_pps,received_pps,received_gbps,received_packets,sent_packets,seconds" >"$csv"
machine=$(xlbpg_machine)
for size in $sizes; do
    for run in $(seq 1 "$runs"); do
        # Interleaved, so a change in the machine's load hits all variants alike.
        for v in $run_variants; do
            if [ "$through_topology" = 1 ]; then
                dev=$(gen_if "$v") to_mac=$(fwd_mac "$v") to=$VIP
            else
                dev=$interface to_mac=$dst_mac to=$dst
            fi
            pg "$thread" rem_device_all
            pg "$thread" "add_device $dev"
            # pktgen's pkt_size excludes the 4-byte FCS, like xlb-pktgen's --size.
            for setting in "count 0" "clone_skb 1000" "burst 32" "pkt_size $size" "delay 0" \
                "dst $to" "dst_mac $to_mac" "src_min $src" "src_max $src_max" \
                "udp_src_min 1024" "udp_src_max $((1024 + ports - 1))" "udp_dst_min 80" \
                "udp_dst_max 80" "flag UDPSRC_RND"; do
                pg "$dev" "$setting"
            done
            sink_pid=""
            if [ "$through_topology" = 1 ]; then
                "${ns_cmd[@]}" "$XLB_PKTGEN" sink --interface "$dev" \
                    --duration $((seconds + 30)) --json >"$work/sink.json" 2>/dev/null &
                sink_pid=$!
                sleep 0.5
            fi
            # count 0 runs until stopped: bounded by the stop below (and by timeout).
            timeout $((seconds + 20)) "${ns_cmd[@]}" sh -c 'echo start > /proc/net/pktgen/pgctrl' &
            start_pid=$!
            sleep "$seconds"
            "${ns_cmd[@]}" sh -c 'echo stop > /proc/net/pktgen/pgctrl'
            wait "$start_pid" 2>/dev/null || true
            result=$("${ns_cmd[@]}" cat "/proc/net/pktgen/$dev" | sed -n '/^Result/,$p')
            # "Result: OK: <usec>(...) usec, <packets> (<size>byte,0frags)" then "<pps>pps <Mb>Mb/sec"
            usec=$(sed -n 's/^Result: OK: \([0-9]*\)(.*/\1/p' <<<"$result" | head -1)
            sent=$(sed -n 's/.* usec, \([0-9]*\) (.*/\1/p' <<<"$result" | head -1)
            pps=$(sed -n 's/^ *\([0-9]*\)pps.*/\1/p' <<<"$result" | head -1)
            recv_pps=0 recv_gbps=0 recv=0
            if [ -n "$sink_pid" ]; then
                kill -INT "$sink_pid" 2>/dev/null || true
                wait "$sink_pid" 2>/dev/null || true
                read -r recv_pps recv_gbps recv < <(xlbpg_json "$work/sink.json" \
                    '"%f %f %d" % (j["pps"], j["gbps"], j["packets"])' 2>/dev/null || echo "0 0 0")
            fi
            secs=$(awk -v u="${usec:-0}" 'BEGIN { print u / 1e6 }')
            echo "$size,$v,$run,${pps:-0},$recv_pps,$recv_gbps,$recv,${sent:-0},$secs" >>"$csv"
            xlbpg_say "$size B $v run $run: ${pps:-?} pps sent, $recv_pps pps received"
        done
    done
done
pg "$thread" rem_device_all

if [ "$through_topology" = 1 ]; then
    xlbpg_fwd_stop_balancers
    xlbpg_fwd_report "$csv" "$md" "$machine" "$runs" "$seconds" "$flows" 1 "$quick" 0 \
        "Kernel pktgen: xlb against the XDP floor" \
        "the kernel's pktgen, one thread, skbs cloned 1000 times, bursts of 32"
else
    python3 - "$csv" "$md" "$machine" "$runs" "$seconds" "$quick" "$interface" <<'PY'
import csv, statistics, sys
path, md, machine, runs, seconds, quick, interface = sys.argv[1:]
rows = list(csv.DictReader(open(path)))
out = ["## Kernel pktgen to the balancer's NIC" + (" (quick)" if quick == "1" else ""), "",
       f"Medians of {runs} runs of {seconds} s per row, sent from {interface}. Machine: {machine}. "
       "Only the sent rate is measured here; what the balancer forwarded is in its own counters.", "",
       "| Frame | Forwarder | Mpps (median) | min - max | Gbit/s at sink | ns/frame | vs floor | Target >= 80% |",
       "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
for size in sorted({int(r["size"]) for r in rows}):
    pps = [float(r["sent_pps"]) for r in rows if int(r["size"]) == size]
    med = statistics.median(pps)
    out.append(f"| {size} B | balancer NIC (sent) | {med/1e6:.3f} | {min(pps)/1e6:.3f} - {max(pps)/1e6:.3f} | - | "
               f"{1e9/med if med else float('nan'):.0f} | - | - |")
open(md, "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
fi
xlbpg_say "wrote $md and $csv"
