#!/usr/bin/env bash
# The seed's comparison: kube-proxy-style iptables service NAT against xlb, for 100, 1,000 and
# 10,000 services, on the same namespaces, with the direct client-to-backend path as the floor.
#
#   perf/iptables.sh [--quick] [--services "100 1000 10000"] [--seconds S] [--rate R]
#                    [--runs N] [--http-runs N] [--no-rt]
#
# For each number of services N and each path it measures:
#   - rule load time: iptables-restore of N services (kube-proxy's full sync) against xlbd's
#     start-to-ready time with N VIPs (program load, maps, N Maglev tables);
#   - HTTP latency P50/P99/P99.9 with oha at a fixed rate (-q, --latency-correction against
#     coordinated omission), one new connection per request (--disable-keepalive), to the
#     LAST service: the worst case for a linear chain;
#   - new-flow throughput through the node: xlb-pktgen sends TCP SYNs, every one a new flow,
#     to the last service as fast as it can; xlb_sink on the backends counts what arrives.
# Default: 3 runs of 10 s of HTTP at 200 requests/s, 3 throughput runs of 3 s (medians).
# --quick: N = 100 and 1,000 only, one 5 s HTTP run, one throughput run of 2 s.
#
# Writes iptables.md and iptables.csv into $XLB_PERF_OUT (default perf/results/<UTC date>/).
# Runs as root; installs nginx-light and conntrack (Debian) and oha (crates.io) if missing.
# Everything it creates is named xlbpg-ipt-* and removed at the end, also on failure.
#
# Topology: one L2 segment (a bridge in ns xlbpg-ipt-sw), two IP subnets on it.
#
#   client 10.71.0.1/16 --+                      +-- be1 10.72.0.11/24  nginx :80
#                          |   bridge (ns sw)     +-- be2 10.72.0.12/24  nginx :80
#   node   10.71.255.254/16 +--------------------+-- be3 10.72.0.13/24  nginx :80
#          10.72.0.254/24   (one-armed router)
#
# Services (VIPs) are 10.96.0.1 onwards; the client routes 10.96.0.0/16 via the node.
#   - iptables: the node DNATs (KUBE-SERVICES: one rule per service; KUBE-SVC-*: random
#     choice among 3 endpoints; KUBE-SEP-*: DNAT) and forwards; replies must come back through
#     the node to be un-NATed, so the backends route the client subnet via the node.
#   - xlb: xlbd on the node's interface, N VIPs in L2 (DSR) mode, 3 backends each. L2 because
#     everything shares one segment and the backends can own every VIP with one AnyIP route
#     (`local 10.96.0.0/16 dev lo`, arp_ignore=1); IPIP would need xlbd's decap program on
#     every backend for nothing. Replies go from the backend straight to the client (the
#     backends route the client subnet on-link).
#   - direct: the client talks to be1's own address; no node, no NAT: the floor.
set -euo pipefail

XLBPG_NAME=iptables
# shellcheck source=perf/lib/xlbpg.sh
source "$(cd "$(dirname "$0")" && pwd)/lib/xlbpg.sh"

services="100 1000 10000" seconds=10 rate=200 runs=3 http_runs=3 tp_seconds=3 quick=0 rt=1
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1; services="100 1000"; seconds=5; runs=1; http_runs=1; tp_seconds=2 ;;
        --services) services=${2:?}; shift ;;
        --seconds) seconds=${2:?}; shift ;;
        --rate) rate=${2:?}; shift ;;
        --runs) runs=${2:?}; shift ;;
        --http-runs) http_runs=${2:?}; shift ;;
        --no-rt) rt=0 ;;
        -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
        *) xlbpg_die "unknown argument $1 (see --help)" ;;
    esac
    shift
done

xlbpg_require_root
xlbpg_lock iptables
prefix=xlbpg-ipt-
out=$(xlbpg_out_dir)
work=$(mktemp -d /tmp/xlbpg-ipt.XXXXXX)
cleanup() {
    xlbpg_cleanup "$prefix"
    # XLBPG_KEEP=1 keeps the logs, configs and raw results for a look after the run.
    if [ "${XLBPG_KEEP:-0}" = 1 ]; then xlbpg_say "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- Tools, installed only when missing ---------------------------------------------------
missing=()
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
command -v conntrack >/dev/null 2>&1 || missing+=(conntrack)
command -v iptables-restore >/dev/null 2>&1 || missing+=(iptables)
if [ ${#missing[@]} -gt 0 ]; then
    xlbpg_say "installing Debian packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
export PATH=$PATH:$HOME/.cargo/bin
if ! command -v oha >/dev/null 2>&1; then
    # 1.16.0 builds with rustc 1.95 (checked); --locked keeps its dependency versions.
    xlbpg_say "installing oha 1.16.0 (cargo install, a few minutes)"
    cargo install oha --version 1.16.0 --locked --quiet
fi
xlbpg_build
machine=$(xlbpg_machine)
xlbpg_cleanup "$prefix"
# The generator, oha and nginx run at real-time priority by default, so compiler jobs and the
# like on the same machine do not preempt them in the middle of a measurement
# (sched_rt_runtime_us still leaves everything else at least 5%). --no-rt turns this off.
rt_cmd=()
[ "$rt" = 1 ] && rt_cmd=(chrt -f 10)

# --- Topology ------------------------------------------------------------------------------
CLIENT_MAC=02:71:00:00:00:01 NODE_MAC=02:71:00:00:00:fe
NODE_BACKEND_IP=10.72.0.254
be_ip() { echo "10.72.0.1$1"; }
be_mac() { echo "02:71:00:00:00:1$1"; }
vip() { echo "10.96.$(($1 / 250)).$(($1 % 250 + 1))"; }

xlbpg_say "topology: client, node and 3 nginx backends on one bridge"
for n in sw client node be1 be2 be3; do xlbpg_ns_add "${prefix}$n"; done
sw="${prefix}sw"
xlbpg_ns "$sw" ip link add br0 type bridge
xlbpg_ns "$sw" ip link set br0 up
xlbpg_ns "$sw" sysctl -qw net.bridge.bridge-nf-call-iptables=0 2>/dev/null || true
attach() { # NAME NS MAC
    xlbpg_ns "$sw" ip link add "p-$1" type veth peer name eth0 netns "${prefix}$2"
    xlbpg_ns "$sw" ip link set "p-$1" master br0 up
    xlbpg_ns "${prefix}$2" ip link set eth0 address "$3" up
}
attach client client "$CLIENT_MAC"
xlbpg_ns "${prefix}client" ip addr add 10.71.0.1/16 dev eth0
xlbpg_ns "${prefix}client" ip route add 10.96.0.0/16 via 10.71.255.254
xlbpg_ns "${prefix}client" ip route add 10.72.0.0/24 dev eth0
# Veths leave checksums to hardware that does not exist; XDP forwarding would carry them on
# unfinished (see docs/architecture.md, "The lab").
xlbpg_ns "${prefix}client" ethtool -K eth0 tx off >/dev/null
xlbpg_ns "${prefix}client" sysctl -qw net.ipv4.ip_local_port_range="10000 65000"

attach node node "$NODE_MAC"
xlbpg_ns "${prefix}node" ip addr add 10.71.255.254/16 dev eth0
xlbpg_ns "${prefix}node" ip addr add "$NODE_BACKEND_IP/24" dev eth0
xlbpg_ns "${prefix}node" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.send_redirects=0 \
    net.ipv4.conf.default.send_redirects=0 net.ipv4.conf.eth0.send_redirects=0 \
    net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0

for i in 1 2 3; do
    b="${prefix}be$i"
    attach "be$i" "be$i" "$(be_mac $i)"
    xlbpg_ns "$b" ip addr add "$(be_ip $i)/24" dev eth0
    # AnyIP: every service address is local, so L2 DSR delivers to nginx on any VIP.
    xlbpg_ns "$b" ip route add local 10.96.0.0/16 dev lo
    xlbpg_ns "$b" sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2 \
        net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0
    mkdir -p "$work/be$i"
    cat >"$work/be$i/nginx.conf" <<EOF
worker_processes 1;
pid $work/be$i/nginx.pid;
error_log $work/be$i/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/be$i;
    server {
        listen 80 backlog=4096;
        location / { return 200 "be$i\n"; }
    }
}
EOF
    ip netns exec "$b" "${rt_cmd[@]}" nginx -e "$work/be$i/error.log" -c "$work/be$i/nginx.conf" -g 'daemon off;' \
        >"$work/be$i/stdout.log" 2>&1 &
done
# Frames sent with XDP_TX (the generator's, and xlb's) into a veth are dropped unless the peer
# end runs an XDP program: pass-all on the bridge ends of the client and the node.
for p in p-client p-node; do
    ip netns exec "$sw" "$XLBD" xdp-pass --interface "$p" >"$work/xdp-pass-$p.log" 2>&1 &
done

backend_routes() { # via-node | direct
    local i
    for i in 1 2 3; do
        if [ "$1" = via-node ]; then
            xlbpg_ns "${prefix}be$i" ip route replace 10.71.0.0/16 via "$NODE_BACKEND_IP"
        else
            xlbpg_ns "${prefix}be$i" ip route replace 10.71.0.0/16 dev eth0
        fi
    done
}
backend_routes direct
for i in 1 2 3; do
    for _ in $(seq 1 50); do
        xlbpg_ns "${prefix}client" curl -s --max-time 1 "http://$(be_ip $i)/" >/dev/null 2>&1 && break
        sleep 0.1
    done
    xlbpg_ns "${prefix}client" curl -s --max-time 2 "http://$(be_ip $i)/" | grep -q "be$i" \
        || xlbpg_die "backend be$i does not answer"
done

# --- Measurements ---------------------------------------------------------------------------
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# http_latency URL NAME: oha at a fixed rate, $http_runs times; writes
# $work/http-NAME-RUN.json.
http_latency() {
    local run
    for run in $(seq 1 "$http_runs"); do
        timeout $((seconds + 60)) "${rt_cmd[@]}" ip netns exec "${prefix}client" oha \
            -z "${seconds}s" -q "$rate" --latency-correction --disable-keepalive --no-tui \
            --output-format json -t 5s "$1" >"$work/http-$2-$run.json" 2>"$work/http-$2-$run.err" || true
    done
}

# throughput DST_MAC DST_IP NAME: new-flow TCP SYN throughput to DST_IP:80 as counted at the
# backends' sinks; appends one line per run to $work/tp-NAME.txt ("received sent seconds").
src_block=10
throughput() {
    local mac=$1 ip=$2 name=$3 run i pids
    for run in $(seq 1 "$runs"); do
        # Flows never repeat across runs (each run its own source block), so every SYN is a
        # new connection for the node, as in the HTTP test.
        src_block=$((src_block + 1))
        xlbpg_ns "${prefix}node" conntrack -F >/dev/null 2>&1 || true
        pids=()
        for i in 1 2 3; do
            ip netns exec "${prefix}be$i" "$XLB_PKTGEN" sink --interface eth0 \
                --duration $((tp_seconds + 30)) --json >"$work/sink-$i.json" 2>"$work/sink-$i.err" &
            pids+=($!)
        done
        for i in 1 2 3; do
            xlbpg_wait_for "$work/sink-$i.err" "counting" 10 \
                || { cat "$work/sink-$i.err" >&2; xlbpg_die "sink on be$i did not attach"; }
        done
        timeout $((tp_seconds + 30)) "${rt_cmd[@]}" ip netns exec "${prefix}client" "$XLB_PKTGEN" \
            --interface eth0 --dst-mac "$mac" --src "10.71.$src_block.1" --dst "$ip" \
            --dport 80 --proto tcp --tcp-flags syn --flows 1000000 --count 2000000 \
            --duration "$tp_seconds" --json >"$work/gen.json"
        sleep 0.3
        kill -INT "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
        python3 - "$work" "$work/tp-$name.txt" <<'PY'
import json, sys
work, out = sys.argv[1:]
gen = json.loads(open(f"{work}/gen.json").read().strip().splitlines()[-1])
received = 0
for i in (1, 2, 3):
    text = open(f"{work}/sink-{i}.json").read().strip()
    if text:
        received += json.loads(text.splitlines()[-1])["packets"]
with open(out, "a") as f:
    f.write(f"{received} {gen['sent']['packets']} {gen['sent']['seconds']}\n")
print(f"    throughput run: {received} of {gen['sent']['packets']} SYNs reached the backends "
      f"in {gen['sent']['seconds']:.2f} s: {received / max(gen['sent']['seconds'], 1e-9) / 1e6:.3f} Mpps",
      file=sys.stderr)
PY
    done
}

# iptables rules for N services, kube-proxy style; the last service is the one under test.
kube_rules() {
    python3 - "$1" <<'PY'
import sys
n = int(sys.argv[1])
eps = ["10.72.0.11", "10.72.0.12", "10.72.0.13"]
chains = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
          ":POSTROUTING ACCEPT [0:0]", ":KUBE-SERVICES - [0:0]"]
rules = ['-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES']
for i in range(n):
    vip = f"10.96.{i // 250}.{i % 250 + 1}"
    svc = f"KUBE-SVC-{i:06d}"
    chains.append(f":{svc} - [0:0]")
    rules.append(f'-A KUBE-SERVICES -d {vip}/32 -p tcp -m comment --comment "default/svc-{i}:http cluster IP" -m tcp --dport 80 -j {svc}')
    for j, ep in enumerate(eps):
        sep = f"KUBE-SEP-{i:06d}-{j}"
        chains.append(f":{sep} - [0:0]")
        left = len(eps) - j
        match = f"-m statistic --mode random --probability {1 / left:.11f} " if left > 1 else ""
        rules.append(f'-A {svc} -m comment --comment "default/svc-{i}:http -> {ep}:80" {match}-j {sep}')
        rules.append(f'-A {sep} -p tcp -m comment --comment "default/svc-{i}:http" -m tcp -j DNAT --to-destination {ep}:80')
print("\n".join(chains + rules + ["COMMIT"]))
PY
}

# xlbd config with N VIPs of 3 backends each, L2 mode, sized to fit. Health checks are off, as
# in the iptables rules they are compared with: with them on, 10,000 VIPs would run 15,000
# probes a second on the machine under test.
xlb_config() {
    python3 - "$1" <<'PY'
import sys
n = int(sys.argv[1])
table = 307  # prime, 100 x the backends
out = ['[interface]', 'name = "eth0"', 'attach_mode = "native"', '',
       '[limits]', f'max_vips = {max(n, 1)}', f'max_backends = {3 * n}',
       f'maglev_slots = {max(2 * table * n, 1024)}', 'flow_table_size = 262144', '']
for i in range(n):
    out += ['[[vip]]', f'name = "svc-{i}"', f'address = "10.96.{i // 250}.{i % 250 + 1}"',
            'port = 80', 'protocol = "tcp"', 'mode = "l2"', f'table_size = {table}',
            '  [vip.health]', '  check = "none"']
    for j in (1, 2, 3):
        out += ['  [[vip.backend]]', f'  name = "be{j}"', f'  address = "10.72.0.1{j}"',
                f'  mac = "02:71:00:00:00:1{j}"']
    out.append('')
print("\n".join(out))
PY
}

results=$work/results.txt
: >"$results"
record() { echo "$*" >>"$results"; }

xlbpg_say "direct path (client -> be1, no node): HTTP ${seconds} s at ${rate}/s, then throughput"
backend_routes direct
http_latency "http://$(be_ip 1)/" direct
throughput "$(be_mac 1)" "$(be_ip 1)" direct
record "direct - -"

for n in $services; do
    last=$(vip $((n - 1)))
    xlbpg_say "N=$n, iptables: loading $n services (kube-proxy style, $((7 * n + 1)) rules)"
    kube_rules "$n" >"$work/rules-$n.txt"
    backend_routes via-node
    t0=$(now)
    xlbpg_ns "${prefix}node" iptables-restore <"$work/rules-$n.txt"
    t1=$(now)
    load=$(elapsed "$t0" "$t1")
    xlbpg_say "  iptables-restore took $load s; HTTP to the last service $last"
    http_latency "http://$last/" "iptables-$n"
    throughput "$NODE_MAC" "$last" "iptables-$n"
    t0=$(now)
    xlbpg_ns "${prefix}node" iptables -t nat -F
    xlbpg_ns "${prefix}node" iptables -t nat -X
    t1=$(now)
    record "iptables-$n $load $(elapsed "$t0" "$t1")"
    xlbpg_ns "${prefix}node" conntrack -F >/dev/null 2>&1 || true

    xlbpg_say "N=$n, xlb: starting xlbd with $n VIPs (L2 DSR, 3 backends each)"
    xlb_config "$n" >"$work/xlb-$n.toml"
    "$XLBD" check "$work/xlb-$n.toml" >/dev/null
    backend_routes direct
    rm -f "$work/xlbd-$n.log"
    t0=$(now)
    ip netns exec "${prefix}node" "$XLBD" --config "$work/xlb-$n.toml" --no-watch --no-pin \
        --api-socket "$work/xlbd.sock" --state-dir "$work/xlbd-state-$n" >"$work/xlbd-$n.log" 2>&1 &
    xlbd_pid=$!
    for _ in $(seq 1 1200); do
        grep -q "xlbd ready" "$work/xlbd-$n.log" 2>/dev/null && break
        kill -0 "$xlbd_pid" 2>/dev/null || break
        sleep 0.05
    done
    t1=$(now)
    grep -q "xlbd ready" "$work/xlbd-$n.log" || { cat "$work/xlbd-$n.log"; xlbpg_die "xlbd did not start with $n VIPs"; }
    load=$(elapsed "$t0" "$t1")
    xlbpg_say "  xlbd ready after $load s; HTTP to the last VIP $last"
    http_latency "http://$last/" "xlb-$n"
    throughput "$NODE_MAC" "$last" "xlb-$n"
    kill -TERM "$xlbd_pid" 2>/dev/null || true
    wait "$xlbd_pid" 2>/dev/null || true
    record "xlb-$n $load -"
done

# --- Report ---------------------------------------------------------------------------------
python3 - "$work" "$results" "$out" "$machine" "$seconds" "$rate" "$runs" "$tp_seconds" "$quick" "$http_runs" "$rt" <<'PY'
import json, os, statistics, sys
work, results, out, machine, seconds, rate, runs, tp_seconds, quick, http_runs, rt = sys.argv[1:]

def http(name):
    """Median over the runs of each percentile; requests and errors summed."""
    runs = []
    for run in range(1, int(http_runs) + 1):
        try:
            runs.append(json.load(open(os.path.join(work, f"http-{name}-{run}.json"))))
        except (OSError, ValueError):
            pass
    if not runs:
        return None
    def med(key):
        values = [j.get("latencyPercentiles", {}).get(key) for j in runs]
        values = [v for v in values if isinstance(v, (int, float))]
        return statistics.median(values) if values else None
    # Requests still open when oha's duration ends are "aborted due to deadline": not failures.
    errors = sum(n for j in runs for kind, n in j.get("errorDistribution", {}).items()
                 if kind != "aborted due to deadline")
    return {
        "p50": med("p50"), "p99": med("p99"), "p999": med("p99.9"),
        "ok": sum(n for j in runs for code, n in j.get("statusCodeDistribution", {}).items()
                  if code.startswith("2")),
        "errors": errors,
    }

def throughput(name):
    try:
        lines = open(os.path.join(work, f"tp-{name}.txt")).read().split("\n")
    except OSError:
        return None
    rates, delivered = [], []
    for line in lines:
        if line.strip():
            received, sent, secs = line.split()
            rates.append(int(received) / float(secs) if float(secs) > 0 else 0.0)
            delivered.append(int(received) / int(sent) if int(sent) else 0.0)
    return (statistics.median(rates), statistics.median(delivered)) if rates else None

def ms(v):
    return f"{v * 1000:.3f}" if isinstance(v, (int, float)) else "n/a"

rows = []
for line in open(results):
    name, load, flush = line.split()
    rows.append((name, load, flush))

csv_lines = ["path,services,load_s,flush_s,http_p50_ms,http_p99_ms,http_p999_ms,http_ok,http_errors,syn_pps,syn_delivered"]
md = []
w = md.append
w("## iptables service NAT (kube-proxy style) against xlb" + (" (quick)" if quick == "1" else ""))
w("")
w(f"HTTP: oha at {rate} requests/s for {seconds} s, a new TCP connection per request, latency "
  f"corrected for coordinated omission, to the last of N services; each percentile is the "
  f"median of {http_runs} run(s). Throughput: TCP SYNs, each a new flow, sent as fast as "
  f"xlb-pktgen can to the last service and counted at the three backends; median of {runs} "
  f"run(s) of {tp_seconds} s. "
  + ("Generator, oha and nginx at real-time priority. " if rt == "1" else "")
  + f"Machine: {machine}.")
w("")
w("| Services | Path | Rules loaded in | HTTP P50 ms | P99 ms | P99.9 ms | 2xx / failed | New flows through the node (SYN Mpps) | Delivered |")
w("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
table = {}
for name, load, flush in rows:
    if name == "direct":
        path, n = "direct (no node)", "-"
        load_text = "-"
    else:
        kind, n = name.split("-")
        path = "iptables DNAT" if kind == "iptables" else "xlb (XDP, L2 DSR)"
        load_text = (f"{float(load):.2f} s (restore)" if kind == "iptables" else f"{float(load):.2f} s (xlbd start)")
    h = http(name)
    t = throughput(name)
    table[name] = (load, h, t)
    http_cells = (f"{ms(h['p50'])} | {ms(h['p99'])} | {ms(h['p999'])} | {h['ok']} / {h['errors']}"
                  if h else "n/a | n/a | n/a | n/a")
    tp_cells = f"{t[0] / 1e6:.3f} | {t[1] * 100:.0f}%" if t else "n/a | n/a"
    w(f"| {n} | {path} | {load_text} | {http_cells} | {tp_cells} |")
    csv_lines.append(",".join(str(x) for x in [
        name.split("-")[0], n, load, flush,
        h and h["p50"], h and h["p99"], h and h["p999"], h and h["ok"], h and h["errors"],
        t and t[0], t and t[1]]))
w("")
ns = sorted({int(name.split("-")[1]) for name, _, _ in rows if name != "direct"})
if len(ns) >= 2:
    lo, hi = ns[0], ns[-1]
    w(f"Growth from {lo} to {hi} services:")
    for kind, label in (("iptables", "iptables"), ("xlb", "xlb")):
        a, b = table.get(f"{kind}-{lo}"), table.get(f"{kind}-{hi}")
        if not (a and b):
            continue
        parts = [f"load {float(a[0]):.2f} s -> {float(b[0]):.2f} s"]
        if a[1] and b[1] and a[1]["p50"] and b[1]["p50"]:
            parts.append(f"HTTP P50 {ms(a[1]['p50'])} -> {ms(b[1]['p50'])} ms, "
                         f"P99 {ms(a[1]['p99'])} -> {ms(b[1]['p99'])} ms")
        if a[2] and b[2] and a[2][0] > 0:
            parts.append(f"new-flow rate {a[2][0] / 1e6:.3f} -> {b[2][0] / 1e6:.3f} Mpps "
                         f"(x{b[2][0] / a[2][0]:.2f})")
        w(f"- {label}: " + "; ".join(parts) + ".")
    w("")
w("Notes. iptables is the distribution's `iptables-restore` (nf_tables backend); the NAT "
  "rules are walked only for the first packet of a connection (conntrack remembers the "
  "decision), so their cost shows in new connections: each request above, and each SYN of the "
  "throughput test, where every packet is a new flow. xlb's cost per packet does not depend "
  "on the number of VIPs (hash lookups). All of a throughput run's work (generator, bridge, "
  "node, sinks) runs on the generator's CPU, so the rates compare paths on one core; "
  "'Delivered' is the share of sent SYNs that reached a backend (the rest were dropped on the "
  "way, e.g. in the node's backlog). The xlb load time is xlbd's whole start (program load, "
  "map creation, N Maglev tables); iptables' is the restore alone.")
open(os.path.join(out, "iptables.md"), "w").write("\n".join(md) + "\n")
open(os.path.join(out, "iptables.csv"), "w").write("\n".join(csv_lines) + "\n")
print("\n".join(md))
PY
xlbpg_say "wrote $out/iptables.md and $out/iptables.csv"
