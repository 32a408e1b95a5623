//! Types shared by the packet generator (`xlb_pktgen`), the counting sink (`xlb_sink`) and the
//! `xlb-pktgen` tool. Not part of the load balancer's map layout: changing them does not bump
//! [`crate::LAYOUT_VERSION`].

/// What the generator writes into every frame, and how fast: one entry of
/// [`map_names::CONFIG`].
///
/// Flow `i` (of `flows`) has source port `sport_base + i % sport_count` and source address
/// `src_addr + i / sport_count`; everything else is the same for all flows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PktgenConfig {
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// First source address, host byte order (so the generator can add the flow's offset).
    pub src_addr: u32,
    /// Destination address, network byte order.
    pub dst_addr: u32,
    /// Destination port, network byte order.
    pub dst_port: u16,
    /// First source port, host byte order.
    pub sport_base: u16,
    /// Source ports per source address (at least 1).
    pub sport_count: u32,
    /// Number of distinct flows the generator cycles through (at least 1).
    pub flows: u32,
    /// IP protocol: [`crate::proto::UDP`] or [`crate::proto::TCP`].
    pub proto: u8,
    /// TCP flags of generated TCP segments (ignored for UDP).
    pub tcp_flags: u8,
    /// TCP checksum of flow 0's segment (`src_addr`, `sport_base`), as stored in the packet;
    /// the generator adjusts it for each flow's address and port (RFC 1624).
    pub tcp_check_base: u16,
    /// Nanoseconds between two frames of one CPU; 0 sends as fast as the kernel runs the
    /// program. Frames that come too early are dropped, not sent ([`PktgenCounter::Paced`]).
    pub gap_ns: u32,
    /// [`config_flags`]: bit set of options.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<PktgenConfig>() == 44);

/// Bits of [`PktgenConfig::flags`].
pub mod config_flags {
    /// Each CPU sends at most [`super::PktgenCpu::budget`] frames; the rest are dropped
    /// ([`super::PktgenCounter::Exhausted`]). Makes a frame count exact even while the
    /// kernel keeps running the program.
    pub const BUDGETED: u32 = 1;
}

/// Per-CPU state of the generator: one entry of [`map_names::CPU`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PktgenCpu {
    /// Frames this CPU generated (sent or not); frame `n` carries flow `n % flows`.
    pub seq: u64,
    /// Earliest time (`bpf_ktime_get_ns`) of this CPU's next frame when paced.
    pub next_ns: u64,
    /// Frames this CPU may still send when [`config_flags::BUDGETED`] is set.
    pub budget: u64,
}
const _: () = assert!(core::mem::size_of::<PktgenCpu>() == 24);

/// How far behind its schedule a paced CPU may fall and still catch up (by sending without
/// gaps), in nanoseconds. A generator thread that loses its CPU for a moment keeps the average
/// rate; one stopped for longer loses what lies beyond this.
pub const PACE_CATCH_UP_NS: u64 = 10_000_000;

/// Sequence number of generated TCP segments (the same in every segment).
pub const TCP_SEQ: u32 = 1;
/// Acknowledgement number of generated TCP segments.
pub const TCP_ACK: u32 = 1;
/// Receive window of generated TCP segments.
pub const TCP_WINDOW: u16 = 65535;

/// What the generator counts, per CPU, in [`map_names::STATS`]. Every frame the kernel hands
/// the program is counted once.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PktgenCounter {
    /// Frames rewritten and sent with XDP_TX.
    Sent = 0,
    /// Frames dropped because the config was missing or the frame too short for its headers
    /// (the tool checks both before a run, so this stays 0 unless something is wrong).
    Failed = 1,
    /// Frames dropped because they came before the pace allowed.
    Paced = 2,
    /// Frames dropped because this CPU's budget was spent.
    Exhausted = 3,
}

impl PktgenCounter {
    /// Every counter, in index order.
    pub const ALL: [PktgenCounter; 4] = [
        PktgenCounter::Sent,
        PktgenCounter::Failed,
        PktgenCounter::Paced,
        PktgenCounter::Exhausted,
    ];
    /// Number of counters: the size of the per-CPU array.
    pub const COUNT: u32 = Self::ALL.len() as u32;
}

/// Map names of the generator and sink objects (at most 15 bytes each).
pub mod map_names {
    /// The generator's one [`super::PktgenConfig`] entry.
    pub const CONFIG: &str = "XLBPG_CONFIG";
    /// The generator's per-CPU state ([`super::PktgenCpu`]).
    pub const CPU: &str = "XLBPG_CPU";
    /// The generator's per-CPU counters ([`super::PktgenCounter`]).
    pub const STATS: &str = "XLBPG_STATS";
    /// The sink's per-CPU [`crate::Counter`] of frames received (and dropped).
    pub const SINK: &str = "XLB_SINK";
}

/// Program names of the generator and the sink.
pub mod program_names {
    /// The generator, run with BPF_PROG_TEST_RUN and live frames.
    pub const PKTGEN: &str = "xlb_pktgen";
    /// Counts every frame and drops it: the end of a throughput test (in the `xlb-aux` object).
    pub const SINK: &str = "xlb_sink";
}

#[cfg(feature = "user")]
mod user {
    use super::{PktgenConfig, PktgenCpu};

    // SAFETY: #[repr(C)], Copy, no implicit padding (size asserted above), valid for any bit
    // pattern.
    unsafe impl aya::Pod for PktgenConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PktgenCpu {}
}
