//! What the per-packet benchmark (`tests/src/bin/packet_bench.rs`) needs from a loaded
//! dataplane: a test run that returns the kernel's own measurement, and the program's identity
//! for `bpftool`.
//!
//! Why one packet per call. A non-live XDP `BPF_PROG_TEST_RUN` with `repeat > 1` runs the program
//! again and again on the *same* `xdp_buff`: the kernel (`bpf_test_run` in `net/bpf/test_run.c`)
//! does not copy the input back in nor reset `data`/`data_end` between repetitions. A program that
//! rewrites its packet is then fed its own output: an IPIP encapsulation grows the frame by 20
//! bytes per repetition (and after the first one the frame is addressed to the backend, so it
//! passes instead of being balanced), and a new flow is new only for the first repetition. So
//! benchmarks call this with `repeat = 1` and a fresh frame per call, and average the
//! kernel-reported durations over many calls. `repeat > 1` is only meaningful for frames the
//! program leaves as it found them (it is used to estimate the test harness's fixed cost).
//!
//! What the duration includes. With `repeat = 1` the kernel's figure is the time between two
//! `ktime_get_ns()` reads around one iteration: the program, plus the harness's per-iteration
//! work (`local_bh_disable`/`enable`, run-context setup) and one clock read. It excludes the
//! syscall, the copies of the frame in and out and the `xdp_buff` setup.

use std::time::Duration;

use aya::programs::{ProgramInfo, TestRun, TestRunOptions};
use xlb_common::{LbCounter, XDP_ACTION_COUNT, map_names, program_names};

use super::{Dataplane, DataplaneError, lb_program, map_err};

impl Dataplane {
    /// Runs the load balancer `repeat` times on `input` with BPF_PROG_TEST_RUN and returns
    /// (XDP action, output length, the kernel-measured average duration of one run). The output
    /// frame is written to `output`. Use `repeat = 1` for any frame the program rewrites: the
    /// kernel does not reset the frame between repetitions (see the module documentation).
    pub fn test_run_timed(
        &mut self,
        input: &[u8],
        output: &mut [u8],
        repeat: u32,
    ) -> Result<(u32, usize, Duration), DataplaneError> {
        let result = lb_program(&mut self.ebpf)?
            .test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(output),
                repeat: repeat.max(1),
                ..TestRunOptions::default()
            })
            .map_err(|source| DataplaneError::Program {
                action: "test-running",
                program: program_names::LB,
                source: Box::new(source),
            })?;
        Ok((
            result.return_value,
            result.data_size_out as usize,
            result.duration,
        ))
    }

    /// The kernel's description of the loaded load balancer program: its id (for
    /// `bpftool prog dump xlated id ID`), translated size and verified instruction count.
    pub fn program_info(&mut self) -> Result<ProgramInfo, DataplaneError> {
        lb_program(&mut self.ebpf)?
            .info()
            .map_err(|source| DataplaneError::Program {
                action: "querying",
                program: program_names::LB,
                source: Box::new(source),
            })
    }

    /// The load-balancing counters summed over CPUs, indexed by [`LbCounter`]. Reads only the
    /// four counters, whatever the number of VIPs, so a benchmark can check after every batch
    /// that its packets took the path it meant (flow-table hits, new flows).
    pub fn lb_counts(&self) -> Result<[u64; LbCounter::COUNT as usize], DataplaneError> {
        let mut counts = [0; LbCounter::COUNT as usize];
        for (index, count) in counts.iter_mut().enumerate() {
            let values = self
                .stats
                .lb
                .get(&(index as u32), 0)
                .map_err(map_err("lookup", map_names::STATS_LB))?;
            *count = values.iter().sum();
        }
        Ok(counts)
    }

    /// Packets counted per XDP action (index = action code), summed over CPUs.
    pub fn action_counts(&self) -> Result<[u64; XDP_ACTION_COUNT as usize], DataplaneError> {
        let mut counts = [0; XDP_ACTION_COUNT as usize];
        for (index, count) in counts.iter_mut().enumerate() {
            let values = self
                .stats
                .actions
                .get(&(index as u32), 0)
                .map_err(map_err("lookup", map_names::STATS_ACTIONS))?;
            *count = values.iter().map(|c| c.packets).sum();
        }
        Ok(counts)
    }
}
