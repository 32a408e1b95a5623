//! Maglev table build: ours (`xlb::maglev::build_table`) against the crates.io `maglev` crate
//! (0.2), in the same run, for table sizes 16,381 and 65,537 and 10 to 10,000 backends.
//!
//! The `maglev` crate builds the classic, unweighted table (its permutations come from
//! `DefaultHasher`, i.e. SipHash), so both builders get equal weights here; one extra case
//! measures ours with unequal weights. The crate picks its table size as the first prime at or
//! above the capacity asked for (a sieve each build, counted in its time): 16,381 and 65,537 are
//! prime, so both build tables of the same size. It materialises every backend's full
//! permutation (backends x table size x 8 bytes: 524 MB for 1,000 backends x 65,537), so it is
//! left out at 10,000 backends, where it would need 5.2 GB and seconds per build.
//!
//! Run with `cargo bench -p xlb-daemon --bench maglev` (add `-- --quick` for a shorter run).
//! Criterion's settings are small (10 samples, 2 s) so the whole suite runs in a few minutes.

mod shared;

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use xlb::maglev::{MaglevBackend, build_table};

/// (table size, backends) pairs of the issue.
const CASES: [(u32, usize); 7] = [
    (16_381, 10),
    (16_381, 100),
    (16_381, 1_000),
    (65_537, 10),
    (65_537, 100),
    (65_537, 1_000),
    (65_537, 10_000),
];

/// The crate is only run up to this many backends (memory: backends x table size x 8 bytes).
const CRATE_MAX_BACKENDS: usize = 1_000;

/// Backend keys as xlb builds them: the address as text.
fn keys(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.{}.{}.{}", i >> 16, (i >> 8) & 0xff, i & 0xff))
        .collect()
}

fn maglev_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev_build");
    for (table_size, n) in CASES {
        let keys = keys(n);
        let equal: Vec<MaglevBackend<'_>> = keys
            .iter()
            .map(|k| MaglevBackend {
                key: k.as_bytes(),
                weight: 1,
            })
            .collect();
        let case = format!("{table_size}x{n}");
        group.bench_with_input(BenchmarkId::new("xlb", &case), &equal, |b, backends| {
            b.iter(|| build_table(black_box(backends), table_size).expect("valid backends"));
        });
        if n <= CRATE_MAX_BACKENDS {
            group.bench_with_input(BenchmarkId::new("maglev-crate", &case), &keys, |b, keys| {
                b.iter(|| {
                    maglev::Maglev::with_capacity(
                        black_box(keys).iter().map(String::as_str),
                        table_size as usize,
                    )
                });
            });
        }
        if (table_size, n) == (65_537, 1_000) {
            let weighted: Vec<MaglevBackend<'_>> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| MaglevBackend {
                    key: k.as_bytes(),
                    weight: 1 + (i as u32 % 7) * 50,
                })
                .collect();
            group.bench_with_input(
                BenchmarkId::new("xlb-weighted", &case),
                &weighted,
                |b, backends| {
                    b.iter(|| build_table(black_box(backends), table_size).expect("valid"));
                },
            );
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = shared::criterion();
    targets = maglev_build
}
criterion_main!(benches);
