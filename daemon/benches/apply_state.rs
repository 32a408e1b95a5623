//! The control plane's work on a reload, for 1 and 10,000 VIPs (10 backends each, Maglev tables
//! of 16,381 slots, as in `perf/apply.sh`):
//!
//! - `reuse_unchanged`: `DesiredState::from_config_reusing` on a config identical to the applied
//!   one: every VIP's config is compared and its table shared, nothing is rebuilt.
//! - `reuse_one_changed`: the same with one backend's weight changed in one VIP: that VIP's
//!   table is rebuilt, the others are reused.
//! - `apply_unchanged`: `Dataplane::apply` of a state equal to the applied one: the comparison
//!   part of apply (every VIP compared with what is applied, the capacity check on a copy of the
//!   region allocator), no map written. It needs root (it loads the XDP program, nothing is
//!   attached) and is skipped with a note otherwise.
//!
//! Run with `cargo bench -p xlb-daemon --bench apply_state` (add `-- --quick` for a shorter run).

mod shared;

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use xlb::{config::MacAddr, dataplane::Dataplane, state::DesiredState, synthetic};

const BACKENDS: usize = 10;
const TABLE_SIZE: u32 = 16_381;
const SIZES: [usize; 2] = [1, 10_000];

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn state_diff(c: &mut Criterion) {
    let mut group = c.benchmark_group("reload");
    for vips in SIZES {
        let config = synthetic::config(vips, BACKENDS, TABLE_SIZE);
        let applied = DesiredState::from_config(&config).expect("valid config");
        let mut changed = config.clone();
        changed.vips[vips / 2].backends[0].weight = 101;

        group.bench_with_input(
            BenchmarkId::new("reuse_unchanged", vips),
            &config,
            |b, config| {
                b.iter(|| {
                    DesiredState::from_config_reusing(black_box(config), Some(&applied))
                        .expect("valid")
                });
            },
        );
        group.bench_with_input(
            BenchmarkId::new("reuse_one_changed", vips),
            &changed,
            |b, changed| {
                b.iter(|| {
                    DesiredState::from_config_reusing(black_box(changed), Some(&applied))
                        .expect("valid")
                });
            },
        );

        if !is_root() {
            eprintln!("reload/apply_unchanged/{vips}: skipped, needs root (loads the program)");
            continue;
        }
        let mut dataplane = Dataplane::load(&config.limits, MacAddr([0x02, 0, 0, 0, 0, 0xaa]))
            .expect("loading the datapath");
        dataplane.apply(&applied).expect("initial apply");
        let same = DesiredState::from_config_reusing(&config, Some(&applied)).expect("valid");
        group.bench_with_input(
            BenchmarkId::new("apply_unchanged", vips),
            &same,
            |b, same| {
                b.iter(|| {
                    let report = dataplane.apply(black_box(same)).expect("apply");
                    assert_eq!(report.unchanged, vips);
                    report
                });
            },
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = shared::criterion();
    targets = state_diff
}
criterion_main!(benches);
