#!/usr/bin/env bash
# The xlb lab: a client, a load balancer and N backends on one L2 segment (a bridge), each in
# its own network namespace, all named with PREFIX so labs can run side by side.
#
#   lab.sh up   PREFIX MODE WORKDIR [BACKENDS]   MODE = l2 | ipip
#   lab.sh down PREFIX [WORKDIR]
#
# Addresses (inside the namespaces only): client 10.99.0.1, balancer 10.99.0.2 (interface
# xlbdemo-lb), backends 10.99.0.11.. with MACs 02:99:00:00:00:11.., VIP 10.99.0.100 on every
# backend's loopback. The client routes the VIP via the balancer; backends answer the client
# directly (direct server return). Each backend runs a real HTTP server on port 80 (and a UDP
# echo on 53) that names itself. In ipip mode each backend runs `xlbd decap`.
#
# IPv6 alongside (no DAD, so the addresses are usable at once): client fd99::1, balancer
# fd99::2, backends fd99::11.. on fd99::/64, VIP6 fd99:1::100 on every backend's loopback,
# routed by the client via the balancer. The decapsulators strip for both VIPs (IPv4-in-IPv4,
# IPv6-in-IPv6, IPv4-in-IPv6).
set -euo pipefail

cmd=${1:?usage: lab.sh up|down PREFIX ...}
prefix=${2:?PREFIX}
here=$(cd "$(dirname "$0")" && pwd)
VIP=10.99.0.100
VIP6=fd99:1::100

ns() { ip netns exec "$1" "${@:2}"; }

down() {
    local workdir=${1:-}
    for n in $(ip netns list | awk '{print $1}' | grep "^${prefix}" || true); do
        # Stop every process still running inside the namespace (servers, xlbd, decap).
        for pid in $(ip netns pids "$n" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
    done
    sleep 0.3
    for n in $(ip netns list | awk '{print $1}' | grep "^${prefix}" || true); do
        for pid in $(ip netns pids "$n" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$n" 2>/dev/null || true
    done
    if [ -n "$workdir" ] && [ -d "$workdir" ]; then rm -rf "$workdir/lab"; fi
}

up() {
    local mode=${1:?MODE} workdir=${2:?WORKDIR} backends=${3:-3}
    local xlbd=${XLBD:-$here/../target/debug/xlbd}
    down
    mkdir -p "$workdir/lab"
    for n in sw client lb; do ip netns add "${prefix}$n"; ns "${prefix}$n" ip link set lo up; done
    ns "${prefix}sw" ip link add br0 type bridge
    ns "${prefix}sw" ip link set br0 up
    # Malformed test frames must reach the balancer: no netfilter on the bridge.
    ns "${prefix}sw" sysctl -qw net.bridge.bridge-nf-call-iptables=0 2>/dev/null || true

    # attach NAME PEER_NS IFNAME MAC: a veth from the bridge to PEER_NS, created in place so
    # no name is ever taken in the root namespace.
    attach() {
        ns "${prefix}sw" ip link add "p-$1" type veth peer name "$3" netns "${prefix}$2"
        ns "${prefix}sw" ip link set "p-$1" master br0 up
        ns "${prefix}$2" ip link set "$3" address "$4" up
    }
    attach client client eth0 02:99:00:00:00:01
    ns "${prefix}client" ip addr add 10.99.0.1/24 dev eth0
    # A veth leaves TCP/UDP checksums to "hardware" that does not exist; XDP forwarding then
    # carries the unfinished checksum on and the backend drops the segment. Real NICs finish
    # checksums in hardware; here the client's kernel must do it.
    ns "${prefix}client" ethtool -K eth0 tx off >/dev/null
    ns "${prefix}client" ip route add "$VIP/32" via 10.99.0.2
    ns "${prefix}client" ip -6 addr add fd99::1/64 dev eth0 nodad
    ns "${prefix}client" ip -6 route add "$VIP6/128" via fd99::2

    attach lb lb xlbdemo-lb 02:99:00:00:00:02
    ns "${prefix}lb" ip addr add 10.99.0.2/24 dev xlbdemo-lb
    ns "${prefix}lb" ip -6 addr add fd99::2/64 dev xlbdemo-lb nodad
    # Frames the balancer sends with XDP_TX arrive at the bridge end of its veth, which drops
    # them unless it has an XDP program of its own: give it one that passes everything.
    ns "${prefix}sw" "$xlbd" xdp-pass --interface p-lb >"$workdir/lab/xdp-pass.log" 2>&1 &

    for i in $(seq 1 "$backends"); do
        local n="be$i" ip="10.99.0.1$i" mac
        mac=$(printf '02:99:00:00:00:%02d' $((10 + i)))
        ip netns add "${prefix}$n"
        ns "${prefix}$n" ip link set lo up
        attach "$n" "$n" eth0 "$mac"
        ns "${prefix}$n" ip addr add "$ip/24" dev eth0
        ns "${prefix}$n" ip addr add "$VIP/32" dev lo
        ns "${prefix}$n" ip -6 addr add "fd99::1$i/64" dev eth0 nodad
        ns "${prefix}$n" ip -6 addr add "$VIP6/128" dev lo nodad
        # The VIP lives on loopback: never answer ARP for it, never use it as ARP source.
        ns "${prefix}$n" sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
        ns "${prefix}$n" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0
        ns "${prefix}$n" python3 "$here/lab-backend.py" --name "$n" \
            >"$workdir/lab/$n.log" 2>&1 &
        if [ "$mode" = ipip ]; then
            ns "${prefix}$n" "$xlbd" decap --interface eth0 --vip "$VIP" --vip "$VIP6" \
                >"$workdir/lab/$n-decap.log" 2>&1 &
        fi
    done
    # Wait until every backend answers on its own address (bounded).
    for i in $(seq 1 "$backends"); do
        for _ in $(seq 1 50); do
            if ns "${prefix}client" curl -s --max-time 1 "http://10.99.0.1$i/" >/dev/null 2>&1; then break; fi
            sleep 0.1
        done
        for _ in $(seq 1 50); do
            if ns "${prefix}client" curl -s --max-time 1 "http://[fd99::1$i]/" >/dev/null 2>&1; then break; fi
            sleep 0.1
        done
    done
}

case "$cmd" in
    up) up "${@:3}" ;;
    down) down "${@:3}" ;;
    *) echo "usage: lab.sh up|down PREFIX ..." >&2; exit 2 ;;
esac
