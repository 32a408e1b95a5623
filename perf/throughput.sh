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

VIP=10.70.0.100
variants="floor l2 ipip"
# Per variant: generator-side interface, forwarder-side interface, their MACs.
gen_if() { case $1 in floor) echo xlbpg-gf ;; l2) echo xlbpg-gl ;; ipip) echo xlbpg-gi ;; esac; }
fwd_if() { case $1 in floor) echo xlbpg-f ;; l2) echo xlbpg-l ;; ipip) echo xlbpg-i ;; esac; }
index() { case $1 in floor) echo 1 ;; l2) echo 2 ;; ipip) echo 3 ;; esac; }
gen_mac() { printf '02:70:00:00:0%d:01' "$(index "$1")"; }
fwd_mac() { printf '02:70:00:00:0%d:02' "$(index "$1")"; }

# The balancer's config: one UDP VIP with three backends on the veth's far side (their MACs
# are never looked at: the sink counts whatever arrives).
write_config() {
    local variant=$1 file=$2 mode=$1 i
    {
        printf '[interface]\nname = "%s"\nattach_mode = "native"\n\n' "$(fwd_if "$variant")"
        [ "$mode" = ipip ] && printf '[encap]\nsource_prefix = "172.16.0.0/16"\n\n'
        printf '[[vip]]\nname = "bench"\naddress = "%s"\nport = 80\nprotocol = "udp"\nmode = "%s"\n' "$VIP" "$mode"
        for i in 1 2 3; do
            printf '\n  [[vip.backend]]\n  name = "be%d"\n  address = "10.70.0.1%d"\n  mac = "02:70:00:00:00:1%d"\n' "$i" "$i" "$i"
        done
    } >"$file"
}

xlbpg_say "topology: generator namespace and one namespace per forwarder (floor, l2, ipip)"
xlbpg_ns_add "${prefix}gen"
for v in $variants; do
    xlbpg_ns_add "${prefix}$v"
    xlbpg_ns "${prefix}gen" ip link add "$(gen_if "$v")" type veth peer name "$(fwd_if "$v")" netns "${prefix}$v"
    xlbpg_ns "${prefix}gen" ip link set "$(gen_if "$v")" address "$(gen_mac "$v")" mtu 1600 up
    xlbpg_ns "${prefix}$v" ip link set "$(fwd_if "$v")" address "$(fwd_mac "$v")" mtu 1600 up
done

xlbpg_say "attaching xlb_floor and starting xlbd (L2 and IPIP) in their namespaces"
# Bounded: the floor detaches by itself after an hour at most; xlbd is stopped at cleanup.
ip netns exec "${prefix}floor" "$XLB_PKTGEN" floor --interface xlbpg-f --duration 3600 \
    >"$work/floor.log" 2>&1 &
for v in l2 ipip; do
    write_config "$v" "$work/$v.toml"
    "$XLBD" check "$work/$v.toml" >/dev/null
    ip netns exec "${prefix}$v" "$XLBD" --config "$work/$v.toml" --no-watch --no-pin \
        --api-socket "$work/$v.sock" --state-dir "$work/$v-state" \
        --stats-file "$work/$v-stats.json" --stats-interval 3600 >"$work/$v.log" 2>&1 &
done
xlbpg_wait_for "$work/floor.log" "attached" 10 || { cat "$work/floor.log"; xlbpg_die "xlb_floor did not attach"; }
for v in l2 ipip; do
    xlbpg_wait_for "$work/$v.log" "xlbd ready" 30 || { cat "$work/$v.log"; xlbpg_die "xlbd ($v) did not start"; }
done

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

# The balancers' own counters, as a check that every frame was balanced (tx), not passed:
# xlbd writes its stats file when it exits.
for v in l2 ipip; do
    for pid in $(ip netns pids "${prefix}$v"); do kill -TERM "$pid" 2>/dev/null || true; done
done
for _ in $(seq 1 100); do
    [ -z "$(ip netns pids "${prefix}l2")$(ip netns pids "${prefix}ipip")" ] && break
    sleep 0.1
done

python3 - "$csv" "$out/throughput.md" "$work" "$machine" "$runs" "$seconds" "$flows" "$threads" "$quick" "$rt" <<'PY'
import csv, json, os, statistics, sys
csv_path, md_path, work, machine, runs, seconds, flows, threads, quick, rt = sys.argv[1:]
rows = list(csv.DictReader(open(csv_path)))
sizes = sorted({int(r["size"]) for r in rows})
names = {"floor": "floor (xlb_floor: MAC swap + XDP_TX)", "l2": "xlb L2 (MAC rewrite)", "ipip": "xlb IPIP (encapsulation)"}
target = 0.80
out = []
w = out.append
w("## Forwarding throughput: xlb against the XDP floor" + (" (quick)" if quick == "1" else ""))
w("")
w(f"Medians of {runs} runs of {seconds} s per row, runs of the three variants interleaved. "
  f"UDP to one VIP over {flows} flows, {threads} generator thread(s)"
  + (" at real-time priority" if rt == "1" else "") + f". Machine: {machine}.")
w("")
w("| Frame | Forwarder | Mpps (median) | min - max | Gbit/s at sink | ns/frame | vs floor | Target >= 80% |")
w("| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |")
summary = []
for size in sizes:
    med = {}
    for v in ["floor", "l2", "ipip"]:
        sel = [r for r in rows if int(r["size"]) == size and r["variant"] == v]
        if not sel:
            continue
        pps = [float(r["received_pps"]) for r in sel]
        gbps = statistics.median(float(r["received_gbps"]) for r in sel)
        med[v] = statistics.median(pps)
        ratio = med[v] / med["floor"] if med.get("floor") else float("nan")
        ns = 1e9 / med[v] if med[v] else float("nan")
        if v == "floor":
            verdict, rel = "(baseline)", "1.00"
        else:
            verdict = "met" if ratio >= target else "**missed**"
            rel = f"{ratio:.2f}"
            summary.append((size, v, ratio, ns - 1e9 / med["floor"]))
        w(f"| {size} B | {names[v]} | {med[v]/1e6:.3f} | {min(pps)/1e6:.3f} - {max(pps)/1e6:.3f} | "
          f"{gbps:.2f} | {ns:.0f} | {rel} | {verdict} |")
w("")
for size, v, ratio, extra in summary:
    w(f"- {size} B, {names[v]}: {ratio*100:.0f}% of the floor's rate; "
      f"{extra:+.0f} ns per frame over the floor.")
w("")
counters = []
for v in ["l2", "ipip"]:
    path = os.path.join(work, f"{v}-stats.json")
    try:
        s = json.load(open(path))
        acts = {name: c["packets"] for name, c in s["actions"]}
        drops = {k: n for k, n in s["drops"] if n}
        counters.append(f"{v}: tx {acts.get('tx', 0)}, pass {acts.get('pass', 0)}, drop {acts.get('drop', 0)}"
                        + (f" ({drops})" if drops else ""))
    except (OSError, ValueError, KeyError):
        counters.append(f"{v}: stats file not written")
w("Balancer counters over the whole run (every generated frame should be `tx`): " + "; ".join(counters) + ".")
w("")
w("How it is measured: the generator (`xlb-pktgen`, an XDP program run with "
  "BPF_PROG_TEST_RUN and live frames), the forwarder's XDP program and the sink (`xlb_sink`) "
  "all run on the generator's CPU: a veth hands XDP frames to its peer's NAPI on the sending "
  "CPU. A rate is therefore 1 / (generator + forwarder + sink + veth) per frame, and the ratio "
  "to the floor understates the balancer's own cost; the ns/frame difference to the floor is "
  "what the balancer adds per frame. Rates count frames that reached the sink (Ethernet "
  "frames without FCS; IPIP frames are 20 bytes longer). Gbit/s of 1500-byte frames on veth "
  "measure memory bandwidth, not a NIC.")
open(md_path, "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
xlbpg_say "wrote $out/throughput.md and $out/throughput.csv"
