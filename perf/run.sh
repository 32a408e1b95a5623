#!/usr/bin/env bash
# xlb's performance suite in one command: runs every benchmark and assembles
# perf/results/<UTC date>/report.md (<UTC date>-quick/ with --quick; see perf/README.md).
#   perf/run.sh            everything, full size (under 30 minutes on 2 cores)
#   perf/run.sh --quick    smaller and shorter runs of everything (a few minutes)
# Steps: scripts/setup.sh; one release build; the per-packet benchmarks (packet_bench, and
# policy_bench: the policy stage with 10,000 deny prefixes); the
# criterion benches (cargo bench -p xlb-daemon); the apply benchmark (perf/apply.sh); a
# perf(1) profile of three packet classes, where perf can sample; perf/throughput.sh and
# perf/iptables.sh when present and executable (they write their own markdown into the same
# directory, given to them as $XLB_PERF_OUT). Running it again the same day replaces that
# day's directory.
set -euo pipefail

usage() { sed -n '2,12s/^# \{0,1\}//p' "$0"; }
quick=""
for arg in "$@"; do
    case "$arg" in
        --quick) quick="--quick" ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"

if [ "$(id -u)" -ne 0 ]; then
    # BPF programs and maps, and the setup script, need root.
    exec sudo -E "$0" "$@"
fi

started=$(date +%s)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
say() { printf '\033[1m[perf %s +%ss]\033[0m %s\n' "$(date -u +%H:%M:%S)" "$(($(date +%s) - started))" "$*" >&2; }

date_utc=$(date -u +%Y-%m-%d)
# A quick run gets its own directory, so it never replaces the day's full results.
out="$here/results/$date_utc${quick:+-quick}"
# Start clean: a fragment left by an earlier run must not pass for this run's.
rm -rf "$out"
mkdir -p "$out"
export XLB_PERF_OUT="$out"
notes="$out/.notes"
: >"$notes"
note() { echo "$*" >>"$notes"; say "$*"; }
# Fragments this script writes; anything else in $out that ends in .md came from another script.
own="report.md packet.md limits.md criterion.md profile.md"

say "mode: ${quick:-full}; results in ${out#"$repo"/}"

say "1/7 setup (scripts/setup.sh)"
scripts/setup.sh

say "2/7 release build (benchmark binaries and criterion benches)"
cargo build --release --quiet -p xlb-tests --bin packet_bench --bin policy_bench --bin apply_bench
cargo bench --quiet -p xlb-daemon --bench maglev --bench apply_state --no-run 2>/dev/null
target=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
packet_bench="$target/release/packet_bench"

say "3/7 per-packet cost (packet_bench $quick; policy_bench $quick)"
"$packet_bench" $quick --out "$out" >/dev/null
# Writes policy.md, which the report takes in like the other scripts' fragments.
"$target/release/policy_bench" $quick --out "$out" >/dev/null

say "4/7 criterion benches (cargo bench -p xlb-daemon ${quick:+-- --quick})"
criterion_home="$target/criterion-perf"
rm -rf "$criterion_home"
CRITERION_HOME="$criterion_home" cargo bench --quiet -p xlb-daemon --bench maglev \
    --bench apply_state -- ${quick:+--quick} >"$out/criterion.log" 2>&1 ||
    { tail -20 "$out/criterion.log" >&2; exit 1; }
python3 - "$criterion_home" "$out" "$quick" <<'PY'
"""Turns criterion's estimates into criterion.md and criterion.csv (medians)."""
import json, pathlib, sys

home, out, quick = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
results = {}
for path in home.glob("*/*/*/new/estimates.json"):
    meta = json.loads((path.parent / "benchmark.json").read_text())
    est = json.loads(path.read_text())["median"]
    results[meta["full_id"]] = (
        est["point_estimate"],
        est["confidence_interval"]["lower_bound"],
        est["confidence_interval"]["upper_bound"],
    )

def fmt(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.1f} µs"
    return f"{ns:.0f} ns"

lines = ["## Control plane: criterion benches" + (" (quick)" if quick else ""), ""]
lines.append(
    "Medians (criterion's 95% interval of the median in brackets), `cargo bench -p xlb-daemon "
    "--bench maglev --bench apply_state`" + (" `-- --quick`" if quick else "")
    + "; 10 samples, 2 s per benchmark. The `maglev` crate (0.2, crates.io) builds the classic "
    "unweighted table with SipHash permutations and materialises every backend's full "
    "permutation (backends x table x 8 bytes), so it is not run at 10,000 backends (5.2 GB).")
lines += ["", "### Maglev table build", "",
          "| table x backends | xlb | maglev crate | crate / xlb | xlb weighted |",
          "| --- | ---: | ---: | ---: | ---: |"]
csv = ["benchmark,median_ns,low_ns,high_ns"]
cases = sorted({k.split("/")[2] for k in results if k.startswith("maglev_build/")},
               key=lambda c: tuple(int(x) for x in c.split("x")))
for case in cases:
    ours = results.get(f"maglev_build/xlb/{case}")
    crate = results.get(f"maglev_build/maglev-crate/{case}")
    weighted = results.get(f"maglev_build/xlb-weighted/{case}")
    cell = lambda r: f"{fmt(r[0])} [{fmt(r[1])} – {fmt(r[2])}]" if r else "–"
    ratio = f"{crate[0] / ours[0]:.1f}x" if ours and crate else "–"
    size, n = case.split("x")
    lines.append(f"| {int(size):,} x {int(n):,} | {cell(ours)} | {cell(crate)} | {ratio} | "
                 f"{cell(weighted)} |")
target = results.get("maglev_build/xlb/65537x1000")
crate = results.get("maglev_build/maglev-crate/65537x1000")
if target:
    ok = target[0] < 5e6
    lines += ["", f"Target 65,537 x 1,000 under 5 ms: {fmt(target[0])} "
              f"({'met' if ok else '**missed**'})"
              + (f"; at least 3x faster than the crate: {crate[0] / target[0]:.0f}x "
                 f"({'met' if crate[0] / target[0] >= 3 else '**missed**'})." if crate else ".")]
lines += ["", "### Reload: desired state and the comparison part of apply", "",
          "10 backends per VIP, tables of 16,381 slots. `reuse_*` is "
          "`DesiredState::from_config_reusing` with the applied state (unchanged config; one "
          "VIP changed, whose table is rebuilt); `apply_unchanged` is `Dataplane::apply` of an "
          "equal state: the per-VIP comparison and the capacity check, no map written (needs "
          "root).", "",
          "| benchmark | 1 VIP | 10,000 VIPs |", "| --- | ---: | ---: |"]
for name in ["reuse_unchanged", "reuse_one_changed", "apply_unchanged"]:
    cells = []
    for vips in [1, 10000]:
        r = results.get(f"reload/{name}/{vips}")
        cells.append(f"{fmt(r[0])} [{fmt(r[1])} – {fmt(r[2])}]" if r else "not run")
    lines.append(f"| `{name}` | {' | '.join(cells)} |")
for key, (median, low, high) in sorted(results.items()):
    csv.append(f"{key},{median:.0f},{low:.0f},{high:.0f}")
(out / "criterion.md").write_text("\n".join(lines) + "\n")
(out / "criterion.csv").write_text("\n".join(csv) + "\n")
PY

say "5/7 apply benchmark (perf/apply.sh $quick)"
"$here/apply.sh" $quick --out "$out" >/dev/null

say "6/7 profile of the datapath (perf record -e cpu-clock on packet_bench --spin)"
profile="$out/profile.md"
rm -f "$profile"
if command -v perf >/dev/null 2>&1 && perf record -q -e cpu-clock -o /dev/null -- true 2>/dev/null; then
    seconds=$([ -n "$quick" ] && echo 2 || echo 6)
    data=$(mktemp -d)
    for class in tcp-l2-est-1 tcp-l2-est-10k tcp-l2-new; do
        perf record -q -e cpu-clock -F 10000 -g -o "$data/$class.data" -- \
            "$packet_bench" --spin "$class" "$seconds" >/dev/null 2>&1
        perf script -i "$data/$class.data" >"$data/$class.txt" 2>/dev/null
    done
    python3 - "$data" "$profile" <<'PY'
"""Where the time inside the kernel's timed region (bpf_test_run) goes, by leaf function."""
import collections, pathlib, re, sys

data, profile = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
classes = ["tcp-l2-est-1", "tcp-l2-est-10k", "tcp-l2-new"]
shares = {}
for cls in classes:
    counts, total = collections.Counter(), 0
    for sample in (data / f"{cls}.txt").read_text(errors="replace").split("\n\n"):
        frames = [l.split() for l in sample.strip().splitlines()[1:]]
        syms = [re.sub(r"\+0x[0-9a-f]+$", "", f[1]) for f in frames if len(f) >= 2]
        if "bpf_test_run" not in syms:
            continue
        total += 1
        leaf = syms[0]
        match = re.match(r"bpf_prog_[0-9a-f]+_(\w+)", leaf)
        counts[f"{match.group(1)} (program body)" if match else leaf] += 1
    shares[cls] = {sym: n / total for sym, n in counts.items()} if total else {}
top = collections.Counter()
for cls in classes:
    for sym, share in shares[cls].items():
        top[sym] = max(top[sym], share)
rows = [sym for sym, share in top.most_common() if share >= 0.02]
lines = ["### Profile: where the kernel's timed region goes", "",
         "`perf record -e cpu-clock` (software clock sampling: this VM has no hardware counters, "
         "and the distribution's bpftool has no `prog profile`) while `packet_bench --spin CLASS` "
         "runs one class on the smallest datapath; samples whose stack holds `bpf_test_run` (the "
         "region the kernel times), by the function they were in. Functions under 2% in every "
         "class are left out.", "",
         "| function | " + " | ".join(f"`{c}`" for c in classes) + " |",
         "| --- |" + " ---: |" * len(classes)]
for sym in rows:
    cells = [f"{shares[c].get(sym, 0) * 100:.0f}%" for c in classes]
    lines.append(f"| `{sym}` | " + " | ".join(cells) + " |")
lines += ["", "`lookup_nulls_elem_raw` walks a hash bucket (the hash and key compare of every map "
          "lookup: cache misses land here), `htab_map_hash` is jhash of the key, "
          "`htab_map_update_elem` / `alloc_htab_elem` / `pcpu_freelist_pop` the flow insert "
          "(a preallocated hash map: pop a per-CPU free list, link into the bucket), "
          "`read_tsc` / `ktime_get` the harness's clock read."]
profile.write_text("\n".join(lines) + "\n")
PY
    rm -rf "$data"
else
    note "profile skipped: perf(1) is not installed or cannot sample cpu-clock here"
fi

say "7/7 live-frame throughput and iptables comparison (perf/throughput.sh, perf/iptables.sh)"
for script in throughput iptables; do
    if [ -x "$here/$script.sh" ]; then
        say "running perf/$script.sh $quick"
        status=0
        "$here/$script.sh" $quick || status=$?
        [ "$status" -eq 0 ] || note "perf/$script.sh failed (exit status $status); its section may be missing"
    else
        note "perf/$script.sh not present (or not executable): skipped"
    fi
done

say "assembling ${out#"$repo"/}/report.md"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -n "$(git status --porcelain 2>/dev/null)" ] && commit="$commit (with uncommitted changes)"
{
    echo "# xlb performance report${quick:+ (quick)}"
    echo
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M') UTC; commit $commit"
    echo "- Machine: $(nproc) CPUs (nproc), $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), kernel $(uname -r), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
    echo "- Command: \`perf/run.sh${quick:+ --quick}\` ($(($(date +%s) - started)) s); load average at the start: $load_start"
    echo "- Medians throughout; every ratio is against a baseline measured in the same run."
    if [ -s "$notes" ]; then
        echo "- Notes:"
        sed 's/^/  - /' "$notes"
    fi
    echo
    cat "$out/packet.md"
    echo
    cat "$out/criterion.md"
    for fragment in "$out"/apply-*.md; do
        [ -e "$fragment" ] || continue
        case "$fragment" in *-quick.md) [ -n "$quick" ] || continue ;; *) [ -z "$quick" ] || continue ;; esac
        echo
        sed 's/^#/##/' "$fragment"
    done
    for fragment in "$out"/*.md; do
        name=$(basename "$fragment")
        case " $own " in *" $name "*) continue ;; esac
        case "$name" in apply-*) continue ;; esac
        echo
        # Other scripts' fragments: their top heading becomes a section of this report.
        sed 's/^# /## /' "$fragment"
    done
    echo
    echo "## What limits us"
    echo
    # The profile goes in before the proposals, which close the report.
    awk -v profile="$profile" '
        /^### What would move it/ && !done {
            if ((getline line < profile) > 0) {
                print line
                while ((getline line < profile) > 0) print line
                print ""
            }
            done = 1
        }
        { print }' "$out/limits.md"
} >"$out/report.md"
rm -f "$notes"
say "done in $(($(date +%s) - started)) s: ${out#"$repo"/}/report.md"
