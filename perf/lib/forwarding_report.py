"""The forwarding-throughput table of perf/throughput.sh and perf/kernel-pktgen.sh: medians per
(frame size, forwarder), the ratio to the floor, the balancers' own counters.

    forwarding_report.py CSV MD WORK MACHINE RUNS SECONDS FLOWS THREADS QUICK RT TITLE GENERATOR
"""
import csv, json, os, statistics, sys
csv_path, md_path, work, machine, runs, seconds, flows, threads, quick, rt, title, generator = sys.argv[1:]
rows = list(csv.DictReader(open(csv_path)))
sizes = sorted({int(r["size"]) for r in rows})
names = {"floor": "floor (xlb_floor: MAC swap + XDP_TX)", "l2": "xlb L2 (MAC rewrite)", "ipip": "xlb IPIP (encapsulation)"}
target = 0.80
out = []
w = out.append
w(f"## {title}" + (" (quick)" if quick == "1" else ""))
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
w(f"How it is measured: the generator ({generator}), the forwarder's XDP program and the "
  "sink (`xlb_sink`) all run on the generator's CPU: a veth hands XDP frames to its peer's NAPI on the sending "
  "CPU. A rate is therefore 1 / (generator + forwarder + sink + veth) per frame, and the ratio "
  "to the floor understates the balancer's own cost; the ns/frame difference to the floor is "
  "what the balancer adds per frame. Rates count frames that reached the sink (Ethernet "
  "frames without FCS; IPIP frames are 20 bytes longer). Gbit/s of 1500-byte frames on veth "
  "measure memory bandwidth, not a NIC.")
open(md_path, "w").write("\n".join(out) + "\n")
print("\n".join(out))
