# The forwarding topology shared by perf/throughput.sh (xlb-pktgen) and perf/kernel-pktgen.sh
# (the kernel's pktgen): a generator namespace joined by one veth to each forwarder's namespace,
# the floor (xlb_floor) and xlbd in L2 and IPIP mode, so both generators measure the same path
# and report it in the same table. Source after lib/xlbpg.sh; callers set $prefix and $work.
# shellcheck shell=bash

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

# Builds the namespaces and veths, attaches the floor and starts both xlbd (unpinned, so they
# detach when stopped), and waits until all three forward.
xlbpg_fwd_up() {
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
}

# Stops both xlbd; each writes its stats file (the balancer's own counters, a check that
# every frame was balanced: tx, not passed) when it exits.
xlbpg_fwd_stop_balancers() {
    for v in l2 ipip; do
        for pid in $(ip netns pids "${prefix}$v"); do kill -TERM "$pid" 2>/dev/null || true; done
    done
    for _ in $(seq 1 100); do
        [ -z "$(ip netns pids "${prefix}l2")$(ip netns pids "${prefix}ipip")" ] && break
        sleep 0.1
    done
}

# Writes the report table: xlbpg_fwd_report CSV MD MACHINE RUNS SECONDS FLOWS THREADS QUICK RT
# TITLE GENERATOR, with GENERATOR the words naming the generator in the "how" paragraph. CSV
# columns: size,variant,run,sent_pps,received_pps,received_gbps,received_packets,sent_packets,
# seconds.
xlbpg_fwd_report() {
    python3 "$(dirname "${BASH_SOURCE[0]}")/forwarding_report.py" "$1" "$2" "$work" "${@:3}"
}
