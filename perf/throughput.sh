#!/usr/bin/env bash
# Forwarding throughput of xlb's XDP program (L2 and IPIP mode) against the floor, the least an
# XDP forwarder can do (xlb_floor: swap the MACs, XDP_TX), measured in the same run on the same
# topology with xlb's own packet generator (xlb-pktgen: BPF_PROG_TEST_RUN live frames; this
# kernel has no pktgen module).
#
#   perf/throughput.sh [--quick] [--runs N] [--seconds S] [--sizes "64 1500"] [--flows N]
#                      [--threads N] [--no-rt]
#
# Default: 5 runs of 3 s per (frame size, variant), medians reported; --quick: 3 runs of 1 s.
# Writes throughput.md and throughput.csv into $XLB_PERF_OUT (default perf/results/<UTC date>/)
# and prints the table. Runs as root; everything it creates is named xlbpg-tp-* and removed
# at the end, also on failure or Ctrl-C.
#
# Topology (one namespace per forwarder, so all three stay attached and the runs interleave):
#
#   ns xlbpg-tp-gen                                     ns xlbpg-tp-floor
#   xlbpg-gf  (xlb-pktgen: generator + xlb_sink)  <-->  xlbpg-f  xlb_floor   (xlb-pktgen floor)
#                                                       ns xlbpg-tp-l2
#   xlbpg-gl  (xlb-pktgen: generator + xlb_sink)  <-->  xlbpg-l  xlb_lb, L2  (xlbd)
#                                                       ns xlbpg-tp-ipip
#   xlbpg-gi  (xlb-pktgen: generator + xlb_sink)  <-->  xlbpg-i  xlb_lb, IPIP (xlbd)
#
# The generator sends UDP to the VIP 10.70.0.100:80 over --flows flows (source ports and
# addresses rotate) out of its veth; the forwarder's XDP program sends each frame back out of
# the same veth with XDP_TX (to a backend MAC, or encapsulated); the frame arrives at the
# generator's end, where xlb_sink counts and drops it. The veth MTU is 1600 so that a
# 1500-byte frame still fits after IPIP adds 20 bytes (an IPIP deployment needs that headroom
# on the balancer-to-backend path too).
set -euo pipefail

XLBPG_NAME=throughput
# shellcheck source=perf/lib/xlbpg.sh
source "$(cd "$(dirname "$0")" && pwd)/lib/xlbpg.sh"
# shellcheck source=perf/lib/forwarders.sh
source "$(cd "$(dirname "$0")" && pwd)/lib/forwarders.sh"

runs=5 seconds=3 sizes="64 1500" flows=10000 threads=1 quick=0 rt=1
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1; runs=3; seconds=1 ;;
        --runs) runs=${2:?}; shift ;;
        --seconds) seconds=${2:?}; shift ;;
        --sizes) sizes=${2:?}; shift ;;
        --flows) flows=${2:?}; shift ;;
        --threads) threads=${2:?}; shift ;;
        --no-rt) rt=0 ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) xlbpg_die "unknown argument $1 (see --help)" ;;
    esac
    shift
done

xlbpg_require_root
xlbpg_lock throughput
prefix=xlbpg-tp-
out=$(xlbpg_out_dir)
work=$(mktemp -d /tmp/xlbpg-tp.XXXXXX)
cleanup() {
    xlbpg_cleanup "$prefix"
    # XLBPG_KEEP=1 keeps the logs, configs and raw results for a look after the run.
    if [ "${XLBPG_KEEP:-0}" = 1 ]; then xlbpg_say "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

xlbpg_build
machine=$(xlbpg_machine)
# The generator runs at real-time priority by default, so compiler jobs and the like on the
# same machine do not preempt it in the middle of a run (sched_rt_runtime_us still leaves
# them 5%). Everything a run measures happens on the generator's CPU.
rt_cmd=()
[ "$rt" = 1 ] && rt_cmd=(chrt -f 10)
xlbpg_cleanup "$prefix"

xlbpg_fwd_up

csv=$out/throughput.csv
echo "size,variant,run,sent_pps,received_pps,received_gbps,received_packets,sent_packets,seconds" >"$csv"
total=$(( $(wc -w <<<"$sizes") * 3 * runs ))
n=0
xlbpg_say "measuring: sizes [$sizes], $runs run(s) of ${seconds} s per variant, $flows flows, $threads generator thread(s)"
for size in $sizes; do
    for run in $(seq 1 "$runs"); do
        # Interleaved, so a change in the machine's load hits all three variants alike.
        for v in $variants; do
            n=$((n + 1))
            result=$work/run.json
            # Bounded twice: by the tool's --duration/--count and by timeout.
            timeout $((seconds + 30)) "${rt_cmd[@]}" ip netns exec "${prefix}gen" "$XLB_PKTGEN" \
                --interface "$(gen_if "$v")" --dst-mac "$(fwd_mac "$v")" \
                --src 10.70.1.1 --dst "$VIP" --dport 80 --proto udp --flows "$flows" \
                --size "$size" --duration "$seconds" --count 100000000000 \
                --threads "$threads" --sink --json >"$result"
            read -r sent_pps recv_pps recv_gbps recv sent secs < <(xlbpg_json "$result" \
                '"%f %f %f %d %d %f" % (j["sent_pps"], j["sink"]["pps"], j["sink"]["gbps"], j["sink"]["packets"], j["sent"]["packets"], j["sent"]["seconds"])')
            echo "$size,$v,$run,$sent_pps,$recv_pps,$recv_gbps,$recv,$sent,$secs" >>"$csv"
            awk -v n="$n" -v t="$total" -v s="$size" -v v="$v" -v r="$run" -v p="$recv_pps" \
                -v rc="$recv" -v sn="$sent" -v g="$recv_gbps" 'BEGIN {
                printf "  [%2d/%d] %4d B %-5s run %d: %7.3f Mpps received (%.1f%% of sent), %6.2f Gbit/s\n",
                    n, t, s, v, r, p / 1e6, sn ? 100 * rc / sn : 0, g }' >&2
        done
    done
done

xlbpg_fwd_stop_balancers

xlbpg_fwd_report "$csv" "$out/throughput.md" "$machine" "$runs" "$seconds" "$flows" "$threads" \
    "$quick" "$rt" "Forwarding throughput: xlb against the XDP floor" \
    "\`xlb-pktgen\`, an XDP program run with BPF_PROG_TEST_RUN and live frames"
xlbpg_say "wrote $out/throughput.md and $out/throughput.csv"
