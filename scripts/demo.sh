#!/usr/bin/env bash
# The xlb demo: builds xlb, brings up a lab of network namespaces (a client, the balancer and
# three backends running real HTTP servers), runs xlbd with a config from config/, sends real
# requests through it, shows which backend answered each one and the balancer's counters, then
# tears everything down. Runs L2 DSR, then IPIP; `demo.sh l2` or `demo.sh ipip` runs one.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
modes=("${@:-l2}")
[ $# -eq 0 ] && modes=(l2 ipip)
prefix=xlbdemo-
workdir=$(mktemp -d /tmp/xlbdemo.XXXXXX)
export XLBD=$repo/target/release/xlbd

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() {
    bash "$here/lab.sh" down "$prefix" "$workdir" || true
    rm -rf "$workdir"
}
trap cleanup EXIT INT TERM

bold "setup (installs only what is missing)"
bash "$here/setup.sh"
bold "build (cargo build --release: daemon, CLI and the XDP programs)"
(cd "$repo" && cargo build --release --quiet -p xlb-daemon)

for mode in "${modes[@]}"; do
    config=$repo/config/demo-$mode.toml
    bold "$mode mode: lab up (client 10.99.0.1 / fd99::1, balancer 10.99.0.2, backends 10.99.0.11-13 / fd99::11-13, VIPs 10.99.0.100 and fd99:1::100)"
    bash "$here/lab.sh" up "$prefix" "$mode" "$workdir" 3
    "$XLBD" check "$config"
    ip netns exec "${prefix}lb" "$XLBD" --config "$config" --no-pin \
        --stats-file "$workdir/stats.json" --stats-interval 0.5 \
        --api-socket "$workdir/xlbd.sock" --state-dir "$workdir/state" >"$workdir/xlbd.log" 2>&1 &
    xlbd_pid=$!
    for _ in $(seq 1 100); do grep -q "xlbd ready" "$workdir/xlbd.log" 2>/dev/null && break; sleep 0.1; done
    if ! grep -q "xlbd ready" "$workdir/xlbd.log"; then cat "$workdir/xlbd.log"; exit 1; fi
    sed -e 's/\x1b\[[0-9;]*m//g' "$workdir/xlbd.log"
    ip netns exec "${prefix}lb" ip link show xlbdemo-lb | grep -o 'prog/xdp.*' || true

    bold "$mode mode: 12 HTTP requests from the client to http://10.99.0.100/ (one connection each)"
    for i in $(seq 1 12); do
        printf '  request %2d -> ' "$i"
        ip netns exec "${prefix}client" curl -s --max-time 3 -H 'Connection: close' http://10.99.0.100/
    done
    bold "$mode mode: 300 more requests with curl; answers per backend"
    urls=(); for _ in $(seq 1 300); do urls+=(http://10.99.0.100/); done
    ip netns exec "${prefix}client" curl -s --max-time 10 -H 'Connection: close' "${urls[@]}" \
        | awk '{print $1}' | sort | uniq -c | awk '{printf "  %s answered %d\n", $2, $1}'
    bold "$mode mode: UDP to 10.99.0.100:53 from 12 source ports"
    ip netns exec "${prefix}client" python3 -c '
import socket
for i in range(12):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    s.sendto(b"ping", ("10.99.0.100", 53))
    print("  datagram %2d -> %s" % (i + 1, s.recvfrom(256)[0].decode()))
'
    bold "$mode mode: 12 HTTP requests over IPv6 to http://[fd99:1::100]/ (VIP web6)"
    for i in $(seq 1 12); do
        printf '  request %2d -> ' "$i"
        ip netns exec "${prefix}client" curl -s --max-time 3 -H 'Connection: close' 'http://[fd99:1::100]/'
    done
    bold "$mode mode: ping 10.99.0.100 (echo requests answered by the XDP program itself)"
    ip netns exec "${prefix}client" python3 -c '
import socket, struct, time
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s & 0xffff) + (s >> 16)
    return ~((s & 0xffff) + (s >> 16)) & 0xffff
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
sock.settimeout(2)
for seq in range(3):
    msg = struct.pack("!BBHHH", 8, 0, 0, 0x4a1c, seq) + b"xlb demo"
    msg = msg[:2] + struct.pack("!H", csum(msg)) + msg[4:]
    sent = time.time()
    sock.sendto(msg, ("10.99.0.100", 0))
    while True:
        data, peer = sock.recvfrom(2048)
        kind, _, _, ident, rseq = struct.unpack("!BBHHH", data[(data[0] & 15) * 4:][:8])
        if kind == 0 and ident == 0x4a1c and rseq == seq:
            print("  echo reply from %s seq %d in %.0f us" % (peer[0], seq, (time.time() - sent) * 1e6))
            break
'
    bold "$mode mode: what the operator sees (xlb lb list, through xlbd's API)"
    "$repo/target/release/xlb" --socket "$workdir/xlbd.sock" lb list
    kill -TERM "$xlbd_pid"; wait "$xlbd_pid" || true
    bold "$mode mode: balancer counters (from xlbd's stats file)"
    python3 - "$workdir/stats.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
acts = {name: c["packets"] for name, c in s["actions"]}
print("  XDP actions: " + ", ".join(f"{k}={v}" for k, v in acts.items()))
print("  drops: " + (", ".join(f"{k}={v}" for k, v in s["drops"] if v) or "none"))
print("  flow table and ICMP: " + ", ".join(f"{k}={v}" for k, v in s["lb"]))
for vip in s["vips"]:
    print(f"  VIP {vip['name']} {vip['service']} ({vip['mode']}): {vip['counter']['packets']} packets")
    for b in vip["backends"]:
        print(f"    {b['name']:<12} weight {b['weight']:<4} {b['slots']:>6} Maglev slots  {b['counter']['packets']:>6} packets")
print("  Replies went from the backends straight to the client: the balancer passed only")
print(f"  {acts['pass']} packets (ARP and the like) to its own stack.")
PY
    bash "$here/lab.sh" down "$prefix" "$workdir"
done
bold "done: everything the demo created has been removed"
