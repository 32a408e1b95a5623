//! What the criterion benches share: short runs, so `cargo bench` and `perf/run.sh` fit their
//! time budget on a 2-core machine.

use std::time::Duration;

use criterion::Criterion;

/// 10 samples, 0.5 s of warm-up, 2 s of measurement per benchmark.
pub fn criterion() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}
