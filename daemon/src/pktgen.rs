//! The packet generator behind `xlb-pktgen`, and the counting sink that measures what arrives.
//!
//! The generator needs neither the kernel's pktgen module nor AF_XDP: it runs the XDP program
//! `xlb_pktgen` with BPF_PROG_TEST_RUN and `BPF_F_TEST_XDP_LIVE_FRAMES`. The kernel builds
//! frames from one template, runs the program on each, and turns every XDP_TX into a
//! transmission out of the interface named by `ingress_ifindex` in the run's `xdp_md`
//! context (net/bpf/test_run.c: XDP_TX is redirected to `xdp->dev->ifindex`). The program
//! rewrites the headers of each frame, cycling the source port and address over the flows.
//!
//! The frames go out through the device's `ndo_xdp_xmit`: a real NIC transmits them, a veth
//! hands them to its peer's XDP program (and drops them if the peer has none).

use std::{
    ffi::CString,
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, PerCpuValues},
    programs::{ProgramError, TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use serde::Serialize;
use xlb_common::{
    Counter,
    pktgen::{
        PktgenConfig, PktgenCounter, PktgenCpu, TCP_ACK, TCP_SEQ, TCP_WINDOW, config_flags,
        map_names, program_names,
    },
    proto,
};

use crate::{
    config::MacAddr,
    dataplane::{DataplaneError, map_err, objects},
};

/// Smallest frame: an Ethernet minimum frame without its 4-byte FCS.
pub const MIN_FRAME: usize = 60;
/// Largest frame: live frames must fit in one 4 KiB page after the kernel's headroom and
/// `skb_shared_info` (3368 bytes on x86-64 since Linux 6.9; the kernel refuses larger ones).
pub const MAX_FRAME: usize = 3368;
/// Largest batch the kernel accepts for live frames (`TEST_XDP_MAX_BATCH`).
pub const MAX_BATCH: u32 = 256;

/// Ethernet header length.
const ETH_HLEN: usize = 14;
/// IPv4 header length (no options).
const IPV4_HLEN: usize = 20;
/// UDP header length.
const UDP_HLEN: usize = 8;
/// TCP header length (no options).
const TCP_HLEN: usize = 20;

/// Errors of the generator and the sink, each naming what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum PktgenError {
    /// A frame size outside what the headers and the kernel allow.
    #[error("frame size {size} is out of range ({min}..={max} bytes for {proto})")]
    Size {
        /// Requested size.
        size: usize,
        /// Smallest size for the protocol.
        min: usize,
        /// Largest size.
        max: usize,
        /// Protocol name.
        proto: &'static str,
    },
    /// Zero flows.
    #[error("the number of flows must be at least 1")]
    NoFlows,
    /// Source port 0 is not a valid first port.
    #[error("the first source port must be at least 1")]
    SourcePort,
    /// The flows need more source addresses than remain above the first one.
    #[error(
        "{flows} flows need {needed} source addresses from {src}, past 255.255.255.255 (use fewer flows or a lower --src)"
    )]
    SourceRange {
        /// Number of flows.
        flows: u32,
        /// Source addresses needed.
        needed: u32,
        /// First source address.
        src: Ipv4Addr,
    },
    /// Zero threads, or more than there are CPUs to pin them to.
    #[error("{threads} threads requested, {cpus} CPUs available")]
    Threads {
        /// Requested threads.
        threads: usize,
        /// CPUs this process may run on.
        cpus: usize,
    },
    /// A batch size the kernel refuses.
    #[error("batch size {0} is out of range (1..={MAX_BATCH})")]
    Batch(u32),
    /// The interface does not exist in this network namespace.
    #[error("interface {interface}: {source}")]
    Interface {
        /// Interface name.
        interface: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Loading, attaching or running a program, or a map operation, failed.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// A system call outside BPF failed: CPU affinity, the number of CPUs, the signal
    /// handler that interrupts a run.
    #[error("{what}: {source}")]
    System {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn program_err(
    action: &'static str,
    program: &'static str,
) -> impl FnOnce(ProgramError) -> DataplaneError {
    move |source| DataplaneError::Program {
        action,
        program,
        source: Box::new(source),
    }
}

/// Transport protocol of the generated frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// UDP, checksum 0 ("none", valid for IPv4).
    Udp,
    /// TCP with a correct checksum and the flags of [`FrameSpec::tcp_flags`].
    Tcp,
}

impl Protocol {
    fn number(self) -> u8 {
        match self {
            Protocol::Udp => proto::UDP,
            Protocol::Tcp => proto::TCP,
        }
    }

    fn header_len(self) -> usize {
        match self {
            Protocol::Udp => UDP_HLEN,
            Protocol::Tcp => TCP_HLEN,
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
        }
    }
}

/// TCP flag bits, for [`FrameSpec::tcp_flags`].
pub mod tcp_flags {
    /// SYN: every segment opens a connection.
    pub const SYN: u8 = 0x02;
    /// ACK: segments of established connections.
    pub const ACK: u8 = 0x10;
}

/// What the generated frames look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameSpec {
    /// Destination MAC (the next hop: the load balancer's interface).
    pub dst_mac: MacAddr,
    /// Source MAC.
    pub src_mac: MacAddr,
    /// First source address; more follow when the flows outnumber the source ports.
    pub src: Ipv4Addr,
    /// Destination address (the VIP).
    pub dst: Ipv4Addr,
    /// First source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Transport protocol.
    pub proto: Protocol,
    /// TCP flags ([`tcp_flags`]); ignored for UDP.
    pub tcp_flags: u8,
    /// Number of distinct 5-tuples, cycled through in order.
    pub flows: u32,
    /// Ethernet frame length without FCS.
    pub size: usize,
}

impl FrameSpec {
    /// Checks that the frames can be built; every other method assumes it passed.
    pub fn validate(&self) -> Result<(), PktgenError> {
        let min = (ETH_HLEN + IPV4_HLEN + self.proto.header_len()).max(MIN_FRAME);
        if !(min..=MAX_FRAME).contains(&self.size) {
            return Err(PktgenError::Size {
                size: self.size,
                min,
                max: MAX_FRAME,
                proto: self.proto.name(),
            });
        }
        if self.flows == 0 {
            return Err(PktgenError::NoFlows);
        }
        if self.sport == 0 {
            return Err(PktgenError::SourcePort);
        }
        let needed = self.source_addresses();
        if u64::from(u32::from(self.src)) + u64::from(needed) - 1 > u64::from(u32::MAX) {
            return Err(PktgenError::SourceRange {
                flows: self.flows,
                needed,
                src: self.src,
            });
        }
        Ok(())
    }

    /// Source ports used per source address: from `sport` up to 65535, at most `flows`.
    pub fn ports_per_address(&self) -> u32 {
        (65536 - u32::from(self.sport)).min(self.flows)
    }

    /// Number of source addresses the flows use.
    pub fn source_addresses(&self) -> u32 {
        self.flows.div_ceil(self.ports_per_address())
    }

    /// Source address and port of flow `flow` (the generator's rule, for tests and reports).
    pub fn flow(&self, flow: u32) -> (Ipv4Addr, u16) {
        let ports = self.ports_per_address();
        let flow = flow % self.flows;
        (
            Ipv4Addr::from(u32::from(self.src) + flow / ports),
            self.sport + (flow % ports) as u16,
        )
    }

    /// The frame of flow 0, which the kernel copies into every live frame's page.
    pub fn template(&self) -> Vec<u8> {
        let mut frame = vec![0u8; self.size];
        frame[0..6].copy_from_slice(&self.dst_mac.0);
        frame[6..12].copy_from_slice(&self.src_mac.0);
        frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());

        let l3_len = self.size - ETH_HLEN;
        let ip = &mut frame[ETH_HLEN..ETH_HLEN + IPV4_HLEN];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(l3_len as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = self.proto.number();
        ip[12..16].copy_from_slice(&self.src.octets());
        ip[16..20].copy_from_slice(&self.dst.octets());
        let check = checksum(0, ip);
        ip[10..12].copy_from_slice(&check.to_be_bytes());

        let l4_off = ETH_HLEN + IPV4_HLEN;
        let l4_len = l3_len - IPV4_HLEN;
        let l4 = &mut frame[l4_off..];
        l4[0..2].copy_from_slice(&self.sport.to_be_bytes());
        l4[2..4].copy_from_slice(&self.dport.to_be_bytes());
        match self.proto {
            Protocol::Udp => l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes()),
            Protocol::Tcp => {
                l4[4..8].copy_from_slice(&TCP_SEQ.to_be_bytes());
                l4[8..12].copy_from_slice(&TCP_ACK.to_be_bytes());
                l4[12] = 0x50;
                l4[13] = self.tcp_flags;
                l4[14..16].copy_from_slice(&TCP_WINDOW.to_be_bytes());
                let check = l4_checksum(self.src, self.dst, proto::TCP, l4);
                l4[16..18].copy_from_slice(&check.to_be_bytes());
            }
        }
        frame
    }

    /// The program's config: flow 0's values plus what it needs to derive the others.
    pub fn config(&self) -> PktgenConfig {
        let template = self.template();
        let tcp_check_base = match self.proto {
            Protocol::Tcp => {
                let at = ETH_HLEN + IPV4_HLEN + 16;
                u16::from_ne_bytes([template[at], template[at + 1]])
            }
            Protocol::Udp => 0,
        };
        PktgenConfig {
            dst_mac: self.dst_mac.0,
            src_mac: self.src_mac.0,
            src_addr: u32::from(self.src),
            dst_addr: u32::from(self.dst).to_be(),
            dst_port: self.dport.to_be(),
            sport_base: self.sport,
            sport_count: self.ports_per_address(),
            flows: self.flows,
            proto: self.proto.number(),
            tcp_flags: self.tcp_flags,
            tcp_check_base,
            gap_ns: 0,
            flags: 0,
        }
    }
}

/// One's complement sum of `bytes` (big-endian 16-bit words) added to `sum`, folded and
/// inverted: the Internet checksum (RFC 1071).
pub fn checksum(sum: u32, bytes: &[u8]) -> u16 {
    let mut sum = u64::from(sum);
    for pair in bytes.chunks(2) {
        let word = match pair {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        };
        sum += u64::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// TCP or UDP checksum of `segment` (with its checksum field zero, or the result verifies to
/// 0 when it is filled in) under the IPv4 pseudo header.
pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, segment: &[u8]) -> u16 {
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = protocol;
    pseudo[10..12].copy_from_slice(&(segment.len() as u16).to_be_bytes());
    let partial = !checksum(0, &pseudo);
    checksum(u32::from(partial), segment)
}

/// How long and how fast to generate.
#[derive(Debug, Clone)]
pub struct RunLimits {
    /// Stop after this many frames (over all threads); exact.
    pub count: u64,
    /// Stop after this long, whatever was sent.
    pub duration: Duration,
    /// Frames per second over all threads; `None` for as fast as possible.
    pub rate: Option<u64>,
    /// Generator threads, each pinned to its own CPU.
    pub threads: usize,
    /// Frames the kernel builds and runs per batch (1..=256).
    pub batch: u32,
}

/// What a run sent.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RunReport {
    /// Frames sent with XDP_TX.
    pub packets: u64,
    /// Their bytes (Ethernet frames without FCS).
    pub bytes: u64,
    /// How long frames were being sent: from the last reading before the count first moved
    /// to the reading where it last moved (readings every [`POLL`]). The kernel's set-up and
    /// tear-down of each run (two RCU grace periods) fall outside it.
    pub seconds: f64,
    /// Frames the program dropped because its config or the frame was unusable (should be 0).
    pub failed: u64,
}

impl RunReport {
    /// Frames per second.
    pub fn pps(&self) -> f64 {
        rate(self.packets, self.seconds)
    }

    /// Gigabits per second of Ethernet frames (without FCS, preamble and gap).
    pub fn gbps(&self) -> f64 {
        rate(self.bytes * 8, self.seconds) / 1e9
    }
}

fn rate(amount: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        amount as f64 / seconds
    } else {
        0.0
    }
}

/// How often a run reads the sent counter, to find its window and to stop it.
pub const POLL: Duration = Duration::from_millis(5);

/// Readings of a growing counter, giving the window over which it grew.
#[derive(Debug, Default)]
struct Window {
    last: Option<(Instant, u64)>,
    first_move: Option<Instant>,
    last_move: Option<Instant>,
}

impl Window {
    fn record(&mut self, at: Instant, value: u64) {
        if let Some((previous_at, previous)) = self.last
            && value != previous
        {
            self.first_move.get_or_insert(previous_at);
            self.last_move = Some(at);
        }
        self.last = Some((at, value));
    }

    fn seconds(&self) -> f64 {
        match (self.first_move, self.last_move) {
            (Some(first), Some(last)) => (last - first).as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// The loaded generator program with its config written.
pub struct Generator {
    ebpf: Ebpf,
    spec: FrameSpec,
    template: Vec<u8>,
}

impl Generator {
    /// Loads `xlb_pktgen` and writes `spec` into its config map (unpaced, no budget).
    pub fn load(spec: &FrameSpec) -> Result<Generator, PktgenError> {
        spec.validate()?;
        let mut ebpf =
            Ebpf::load(objects::PKTGEN).map_err(|e| DataplaneError::Load(Box::new(e)))?;
        xdp_program(&mut ebpf, program_names::PKTGEN)?
            .load()
            .map_err(program_err("loading", program_names::PKTGEN))?;
        let mut generator = Generator {
            ebpf,
            spec: spec.clone(),
            template: spec.template(),
        };
        generator.write_config(spec.config())?;
        Ok(generator)
    }

    fn write_config(&mut self, config: PktgenConfig) -> Result<(), PktgenError> {
        let mut map: Array<_, PktgenConfig> = Array::try_from(
            self.ebpf
                .map_mut(map_names::CONFIG)
                .ok_or(DataplaneError::Missing(map_names::CONFIG))?,
        )
        .map_err(map_err("open", map_names::CONFIG))?;
        map.set(0, config, 0)
            .map_err(map_err("update", map_names::CONFIG))?;
        Ok(())
    }

    /// Gives `budgets[i]` frames to CPU `cpus[i]` and none to the others; resets the pace.
    fn write_budgets(&mut self, cpus: &[usize], budgets: &[u64]) -> Result<(), PktgenError> {
        let possible = aya::util::nr_cpus().map_err(|(what, source)| PktgenError::System {
            what: format!("reading {what}"),
            source,
        })?;
        let mut states = vec![PktgenCpu::default(); possible];
        for (&cpu, &budget) in cpus.iter().zip(budgets) {
            if let Some(state) = states.get_mut(cpu) {
                state.budget = budget;
            }
        }
        let values = PerCpuValues::try_from(states).map_err(|source| PktgenError::System {
            what: "building per-CPU budgets".into(),
            source,
        })?;
        let mut map: PerCpuArray<_, PktgenCpu> = PerCpuArray::try_from(
            self.ebpf
                .map_mut(map_names::CPU)
                .ok_or(DataplaneError::Missing(map_names::CPU))?,
        )
        .map_err(map_err("open", map_names::CPU))?;
        map.set(0, values, 0)
            .map_err(map_err("update", map_names::CPU))?;
        Ok(())
    }

    /// What the frames look like.
    pub fn spec(&self) -> &FrameSpec {
        &self.spec
    }

    /// Runs the program once on the template (no live frames, nothing sent) and returns the
    /// XDP action and the frame it produced: the next flow's frame of this CPU.
    pub fn run_once(&mut self) -> Result<(u32, Vec<u8>), PktgenError> {
        let mut out = vec![0u8; self.template.len()];
        let result = xdp_program(&mut self.ebpf, program_names::PKTGEN)?
            .test_run(TestRunOptions {
                data_in: Some(&self.template),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .map_err(program_err("test-running", program_names::PKTGEN))?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    /// Sends live frames out of `interface` until `limits.count` frames are sent,
    /// `limits.duration` has passed or `stop` returns true (it is asked every [`POLL`]),
    /// whichever comes first.
    ///
    /// Each thread makes as few test-run calls as it can: the kernel waits for two RCU grace
    /// periods around every call with more than one frame (it adds the program to the XDP
    /// dispatcher and removes it again), tens of milliseconds on a busy machine. The run is
    /// stopped by interrupting the calls with SIGUSR1 (a no-op handler is installed), and the
    /// frames are counted by the program, so an interrupted call loses nothing.
    ///
    /// The time limit holds even if the calling thread never gets a CPU (generator threads at
    /// real-time priority on the caller's only CPU): each thread has a kernel timer that sends
    /// it SIGUSR1 at the deadline and every millisecond after. When the process runs at a
    /// real-time priority, the calling thread raises its own by one for the run, so that it
    /// can read the counters and stop the run on count or `stop` in time.
    pub fn run(
        &mut self,
        interface: &str,
        limits: &RunLimits,
        stop: &dyn Fn() -> bool,
    ) -> Result<RunReport, PktgenError> {
        if limits.batch == 0 || limits.batch > MAX_BATCH {
            return Err(PktgenError::Batch(limits.batch));
        }
        let allowed = allowed_cpus()?;
        if limits.threads == 0 || limits.threads > allowed.len() {
            return Err(PktgenError::Threads {
                threads: limits.threads,
                cpus: allowed.len(),
            });
        }
        let cpus = &allowed[..limits.threads];
        let threads = limits.threads as u64;
        // The first threads take the remainder of an uneven split.
        let quotas: Vec<u64> = (0..threads)
            .map(|i| limits.count / threads + u64::from(i < limits.count % threads))
            .collect();
        let gap_ns = limits.rate.map(|rate| {
            let per_thread = (rate / threads).max(1);
            (1_000_000_000 / per_thread).clamp(1, u64::from(u32::MAX)) as u32
        });
        self.write_config(PktgenConfig {
            gap_ns: gap_ns.unwrap_or(0),
            flags: config_flags::BUDGETED,
            ..self.spec.config()
        })?;
        self.write_budgets(cpus, &quotas)?;
        install_interrupt_handler()?;

        let ctx = xdp_md(ifindex(interface)?, self.template.len());
        let sent_before = self.counter(PktgenCounter::Sent)?;
        let failed_before = self.counter(PktgenCounter::Failed)?;
        let stats = self.stats_map()?;
        let program: &Xdp = self
            .ebpf
            .program(program_names::PKTGEN)
            .and_then(|p| p.try_into().ok())
            .ok_or(DataplaneError::Missing(program_names::PKTGEN))?;
        let template = &self.template;
        let finish = AtomicBool::new(false);
        let paced = gap_ns.is_some();

        let start = Instant::now();
        let deadline = start + limits.duration;
        let mut window = Window::default();
        let outcome = std::thread::scope(|scope| {
            let workers: Vec<_> = cpus
                .iter()
                .zip(&quotas)
                .map(|(&cpu, &quota)| {
                    let worker = Worker {
                        program,
                        template,
                        ctx: &ctx,
                        batch: limits.batch,
                        deadline,
                        // A paced thread cannot know when its budget is spent: it runs until
                        // interrupted. An unpaced one asks for exactly its quota.
                        quota: if paced { None } else { Some(quota) },
                        finish: &finish,
                    };
                    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
                    let handle = scope.spawn(move || {
                        // SAFETY: pthread_self has no preconditions.
                        let _ = tid_tx.send(unsafe { libc::pthread_self() });
                        pin_to_cpu(cpu)?;
                        worker.run()
                    });
                    (handle, tid_rx.recv().ok())
                })
                .collect();
            // Spawned threads inherit the caller's priority: raise it only now.
            let _priority = RaisedPriority::raise();

            let mut reading = Ok(());
            loop {
                let now = Instant::now();
                match sum_counter(&stats, PktgenCounter::Sent) {
                    Ok(sent) => {
                        window.record(now, sent);
                        if sent - sent_before >= limits.count {
                            break;
                        }
                    }
                    Err(error) => {
                        reading = Err(error);
                        break;
                    }
                }
                if now >= deadline
                    || stop()
                    || workers.iter().all(|(handle, _)| handle.is_finished())
                {
                    break;
                }
                std::thread::sleep(POLL);
            }
            finish.store(true, Ordering::Relaxed);
            // A signal that lands just before a thread enters the kernel is lost: repeat it
            // until every thread has returned.
            while !workers.iter().all(|(handle, _)| handle.is_finished()) {
                for (handle, tid) in &workers {
                    if let (false, Some(tid)) = (handle.is_finished(), tid) {
                        // SAFETY: the thread is alive (not finished, and scoped threads are
                        // joined only below), so its pthread_t is valid.
                        unsafe { libc::pthread_kill(*tid, libc::SIGUSR1) };
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let mut first_error = reading.err();
            for (handle, _) in workers {
                match handle.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        first_error.get_or_insert(error);
                    }
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            match first_error {
                Some(error) => Err(error),
                None => Ok(()),
            }
        });
        // Leave the program unpaced and unbudgeted for run_once, whatever happened.
        let restored = self.write_config(self.spec.config());
        outcome?;
        restored?;
        let sent = self.counter(PktgenCounter::Sent)? - sent_before;
        window.record(Instant::now(), sent_before + sent);
        let failed = self.counter(PktgenCounter::Failed)? - failed_before;
        Ok(RunReport {
            packets: sent,
            bytes: sent * self.template.len() as u64,
            seconds: window.seconds(),
            failed,
        })
    }

    fn stats_map(&self) -> Result<PerCpuArray<&MapData, u64>, PktgenError> {
        PerCpuArray::try_from(
            self.ebpf
                .map(map_names::STATS)
                .ok_or(DataplaneError::Missing(map_names::STATS))?,
        )
        .map_err(map_err("open", map_names::STATS))
        .map_err(PktgenError::from)
    }

    /// One of the program's counters, summed over CPUs.
    pub fn counter(&self, counter: PktgenCounter) -> Result<u64, PktgenError> {
        sum_counter(&self.stats_map()?, counter)
    }
}

fn sum_counter(
    stats: &PerCpuArray<&MapData, u64>,
    counter: PktgenCounter,
) -> Result<u64, PktgenError> {
    let values = stats
        .get(&(counter as u32), 0)
        .map_err(map_err("lookup", map_names::STATS))?;
    Ok(values.iter().sum())
}

/// One generator thread's share of a run.
struct Worker<'a> {
    program: &'a Xdp,
    template: &'a [u8],
    ctx: &'a [u8],
    batch: u32,
    deadline: Instant,
    /// Frames to run through the program, or `None` to run until interrupted.
    quota: Option<u64>,
    finish: &'a AtomicBool,
}

impl Worker<'_> {
    /// Runs the program until the quota is done or the run is finished.
    fn run(self) -> Result<(), PktgenError> {
        let _timer = DeadlineTimer::arm(self.deadline)?;
        let mut left = self.quota;
        while !self.finish.load(Ordering::Relaxed)
            && left != Some(0)
            && Instant::now() < self.deadline
        {
            let repeat = left.map_or(u32::MAX, |left| left.min(u64::from(u32::MAX)) as u32);
            let result = self.program.test_run(TestRunOptions {
                data_in: Some(self.template),
                ctx_in: Some(self.ctx),
                repeat,
                attrs: TestRunAttrs::new().xdp_live_frames(self.batch),
                ..TestRunOptions::default()
            });
            match result {
                Ok(_) => {
                    if let Some(left) = &mut left {
                        *left -= u64::from(repeat);
                    }
                }
                Err(ProgramError::SyscallError(error))
                    if error.io_error.raw_os_error() == Some(libc::EINTR) => {}
                Err(error) => {
                    return Err(
                        program_err("running live frames of", program_names::PKTGEN)(error).into(),
                    );
                }
            }
        }
        Ok(())
    }
}

/// A kernel timer that sends SIGUSR1 to the calling thread at a deadline and every
/// millisecond after it, until dropped. It bounds a run's time without help from any other
/// thread.
struct DeadlineTimer {
    id: libc::timer_t,
}

impl DeadlineTimer {
    fn arm(deadline: Instant) -> Result<DeadlineTimer, PktgenError> {
        let err = |what: &str| PktgenError::System {
            what: format!("{what} the deadline timer"),
            source: std::io::Error::last_os_error(),
        };
        // SAFETY: sigevent is plain data; all-zero is a valid starting value.
        let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
        event.sigev_notify = libc::SIGEV_THREAD_ID;
        event.sigev_signo = libc::SIGUSR1;
        // SAFETY: gettid has no preconditions.
        event.sigev_notify_thread_id = unsafe { libc::gettid() };
        let mut id: libc::timer_t = std::ptr::null_mut();
        // SAFETY: `event` and `id` are valid for the call; the timer targets this thread,
        // which deletes it (Drop) before it exits.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut id) } != 0 {
            return Err(err("creating"));
        }
        let timer = DeadlineTimer { id };
        // At least 1 ns: a zero it_value would disarm the timer instead.
        let first = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 1_000_000,
            },
            it_value: libc::timespec {
                tv_sec: first.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(first.subsec_nanos() as i32),
            },
        };
        // SAFETY: `timer.id` is a live timer and `spec` a valid itimerspec.
        if unsafe { libc::timer_settime(timer.id, 0, &spec, std::ptr::null_mut()) } != 0 {
            return Err(err("arming"));
        }
        Ok(timer)
    }
}

impl Drop for DeadlineTimer {
    fn drop(&mut self) {
        // SAFETY: `self.id` is a timer this value created and has not deleted.
        unsafe { libc::timer_delete(self.id) };
    }
}

/// The calling thread's real-time priority raised by one, restored when dropped; does nothing
/// for a thread that is not real-time.
struct RaisedPriority {
    saved: Option<(libc::c_int, libc::sched_param)>,
}

impl RaisedPriority {
    fn raise() -> RaisedPriority {
        let mut policy = 0;
        // SAFETY: sched_param is plain data.
        let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
        // SAFETY: pthread_self is always valid; both pointers are valid for writes.
        let rc =
            unsafe { libc::pthread_getschedparam(libc::pthread_self(), &mut policy, &mut param) };
        if rc != 0 || !(policy == libc::SCHED_FIFO || policy == libc::SCHED_RR) {
            return RaisedPriority { saved: None };
        }
        // SAFETY: sched_get_priority_max has no preconditions.
        let max = unsafe { libc::sched_get_priority_max(policy) };
        if param.sched_priority >= max {
            return RaisedPriority { saved: None };
        }
        let raised = libc::sched_param {
            sched_priority: param.sched_priority + 1,
        };
        // SAFETY: as above; `raised` is a valid priority for `policy`.
        let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), policy, &raised) };
        RaisedPriority {
            saved: (rc == 0).then_some((policy, param)),
        }
    }
}

impl Drop for RaisedPriority {
    fn drop(&mut self) {
        if let Some((policy, param)) = self.saved {
            // SAFETY: restores the values read in `raise` on the same thread.
            unsafe { libc::pthread_setschedparam(libc::pthread_self(), policy, &param) };
        }
    }
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Makes SIGUSR1 interrupt a system call instead of killing the process.
fn install_interrupt_handler() -> Result<(), PktgenError> {
    // SAFETY: sigaction is plain data; all-zero is an empty mask and no flags.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = ignore_signal as *const () as libc::sighandler_t;
    // No SA_RESTART: the interrupted test-run call must return.
    // SAFETY: `action` is initialised; the handler is async-signal-safe (it does nothing).
    let rc = unsafe { libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(PktgenError::System {
            what: "installing the SIGUSR1 handler".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The run's `struct xdp_md`: data from 0 to the frame's end, received on `ifindex`, queue 0.
/// The kernel takes the device for live frames (and so for XDP_TX) from `ingress_ifindex`.
fn xdp_md(ifindex: u32, len: usize) -> Vec<u8> {
    // data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
    let fields = [0, len as u32, 0, ifindex, 0, 0];
    fields.iter().flat_map(|f| f.to_ne_bytes()).collect()
}

fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, PktgenError> {
    ebpf.program_mut(name)
        .and_then(|p| <&mut Xdp>::try_from(p).ok())
        .ok_or(DataplaneError::Missing(name).into())
}

/// The index of `interface` in this network namespace.
pub fn ifindex(interface: &str) -> Result<u32, PktgenError> {
    let err = |source| PktgenError::Interface {
        interface: interface.to_owned(),
        source,
    };
    let name = CString::new(interface)
        .map_err(|_| err(std::io::Error::other("name contains a NUL byte")))?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(index)
}

/// The CPUs this process may run on, in order.
fn allowed_cpus() -> Result<Vec<usize>, PktgenError> {
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if rc != 0 {
        return Err(PktgenError::System {
            what: "reading the CPU affinity".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, inside the set.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Pins the calling thread to `cpu`: the kernel runs each test-run call on the caller's CPU,
/// and so (through NAPI) does the receiving end of a veth.
fn pin_to_cpu(cpu: usize) -> Result<(), PktgenError> {
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` comes from allowed_cpus, so it is below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        return Err(PktgenError::System {
            what: format!("pinning a generator thread to CPU {cpu}"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// `xlb_sink` attached to an interface, counting and dropping every frame; detached when
/// dropped.
pub struct Sink {
    _ebpf: Ebpf,
    counters: PerCpuArray<MapData, Counter>,
}

impl Sink {
    /// Attaches `xlb_sink` to `interface` in native mode (generic if `generic`).
    pub fn attach(interface: &str, generic: bool) -> Result<Sink, PktgenError> {
        let mut ebpf = attach_aux(program_names::SINK, interface, generic)?;
        let map = ebpf
            .take_map(map_names::SINK)
            .ok_or(DataplaneError::Missing(map_names::SINK))?;
        Ok(Sink {
            counters: PerCpuArray::try_from(map).map_err(map_err("open", map_names::SINK))?,
            _ebpf: ebpf,
        })
    }

    /// Frames and bytes received so far, summed over CPUs.
    pub fn counter(&self) -> Result<Counter, PktgenError> {
        let values = self
            .counters
            .get(&0, 0)
            .map_err(map_err("lookup", map_names::SINK))?;
        Ok(values.iter().fold(Counter::default(), |sum, c| Counter {
            packets: sum.packets + c.packets,
            bytes: sum.bytes + c.bytes,
        }))
    }
}

/// Loads the helper object and attaches its program `name` to `interface`.
fn attach_aux(name: &'static str, interface: &str, generic: bool) -> Result<Ebpf, PktgenError> {
    let mut ebpf = Ebpf::load(objects::AUX).map_err(|e| DataplaneError::Load(Box::new(e)))?;
    let program = xdp_program(&mut ebpf, name)?;
    program.load().map_err(program_err("loading", name))?;
    let mode = if generic {
        XdpMode::Skb
    } else {
        XdpMode::Driver
    };
    program
        .attach(interface, mode)
        .map_err(program_err("attaching", name))?;
    Ok(ebpf)
}

/// `xlb_floor` attached to an interface: swaps the MACs and sends every frame back
/// (XDP_TX), the least an XDP forwarder can do. Throughput tests measure it in the load
/// balancer's place as the floor. Detached when dropped.
pub struct Floor {
    _ebpf: Ebpf,
}

impl Floor {
    /// Attaches `xlb_floor` to `interface` in native mode (generic if `generic`).
    pub fn attach(interface: &str, generic: bool) -> Result<Floor, PktgenError> {
        Ok(Floor {
            _ebpf: attach_aux(xlb_common::program_names::FLOOR, interface, generic)?,
        })
    }
}

/// What a sink counted over a window.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SinkReport {
    /// Frames received.
    pub packets: u64,
    /// Their bytes (Ethernet frames as received, without FCS).
    pub bytes: u64,
    /// Length of the window the rates are computed over.
    pub seconds: f64,
}

impl SinkReport {
    /// The difference between two readings taken `seconds` apart.
    pub fn between(before: Counter, after: Counter, seconds: f64) -> SinkReport {
        SinkReport {
            packets: after.packets - before.packets,
            bytes: after.bytes - before.bytes,
            seconds,
        }
    }

    /// Frames per second.
    pub fn pps(&self) -> f64 {
        rate(self.packets, self.seconds)
    }

    /// Gigabits per second of Ethernet frames as received.
    pub fn gbps(&self) -> f64 {
        rate(self.bytes * 8, self.seconds) / 1e9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(proto: Protocol, flows: u32, size: usize) -> FrameSpec {
        FrameSpec {
            dst_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            src_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            src: Ipv4Addr::new(10, 1, 0, 1),
            dst: Ipv4Addr::new(10, 2, 0, 100),
            sport: 1024,
            dport: 80,
            proto,
            tcp_flags: tcp_flags::ACK,
            flows,
            size,
        }
    }

    /// Checks the IPv4 and (for TCP) the L4 checksum of `frame`, and returns its source
    /// address and port.
    fn check_frame(frame: &[u8], proto: Protocol) -> (Ipv4Addr, u16) {
        let ip = &frame[ETH_HLEN..ETH_HLEN + IPV4_HLEN];
        assert_eq!(checksum(0, ip), 0, "IPv4 header checksum of {frame:02x?}");
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        let l4 = &frame[ETH_HLEN + IPV4_HLEN..];
        if proto == Protocol::Tcp {
            assert_eq!(
                l4_checksum(src, dst, proto::TCP, l4),
                0,
                "TCP checksum of {frame:02x?}"
            );
        }
        (src, u16::from_be_bytes([l4[0], l4[1]]))
    }

    #[test]
    fn template_has_valid_checksums_and_lengths() {
        for proto in [Protocol::Udp, Protocol::Tcp] {
            for size in [60, 64, 1500, 1514] {
                let spec = spec(proto, 10, size);
                spec.validate().unwrap();
                let frame = spec.template();
                assert_eq!(frame.len(), size);
                assert_eq!(
                    u16::from_be_bytes([frame[16], frame[17]]) as usize,
                    size - 14
                );
                assert_eq!(
                    check_frame(&frame, proto),
                    (spec.src, spec.sport),
                    "{proto:?} {size}"
                );
            }
        }
    }

    #[test]
    fn flows_spread_over_ports_then_addresses() {
        let spec = spec(Protocol::Udp, 200_000, 64);
        spec.validate().unwrap();
        assert_eq!(spec.ports_per_address(), 64512);
        assert_eq!(spec.source_addresses(), 4);
        assert_eq!(spec.flow(0), (Ipv4Addr::new(10, 1, 0, 1), 1024));
        assert_eq!(spec.flow(64511), (Ipv4Addr::new(10, 1, 0, 1), 65535));
        assert_eq!(spec.flow(64512), (Ipv4Addr::new(10, 1, 0, 2), 1024));
        assert_eq!(spec.flow(200_000), spec.flow(0));
        let few = FrameSpec { flows: 10, ..spec };
        assert_eq!(few.ports_per_address(), 10);
        assert_eq!(few.flow(13), (Ipv4Addr::new(10, 1, 0, 1), 1027));
    }

    #[test]
    fn invalid_specs_are_refused() {
        assert!(matches!(
            spec(Protocol::Tcp, 1, 59).validate(),
            Err(PktgenError::Size { min: 60, .. })
        ));
        assert!(matches!(
            spec(Protocol::Udp, 1, MAX_FRAME + 1).validate(),
            Err(PktgenError::Size { .. })
        ));
        assert!(matches!(
            spec(Protocol::Udp, 0, 64).validate(),
            Err(PktgenError::NoFlows)
        ));
        let high = FrameSpec {
            src: Ipv4Addr::new(255, 255, 255, 255),
            ..spec(Protocol::Udp, 100_000, 64)
        };
        assert!(matches!(
            high.validate(),
            Err(PktgenError::SourceRange { needed: 2, .. })
        ));
    }

    /// Runs the real program (BPF_PROG_TEST_RUN without live frames: nothing is sent) and
    /// checks every frame it writes. Needs root, as all of xlb's BPF tests do.
    #[test]
    fn program_writes_each_flow_with_valid_checksums() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: loading BPF programs needs root");
            return;
        }
        for proto in [Protocol::Udp, Protocol::Tcp] {
            // 3 flows per address, so a few runs cross into the next source address.
            let spec = FrameSpec {
                sport: 65533,
                ..spec(proto, 7, 64)
            };
            let mut generator = Generator::load(&spec).unwrap();
            // The sequence number is per CPU: stay on one CPU to see the flows in order.
            pin_to_cpu(allowed_cpus().unwrap()[0]).unwrap();
            for i in 0..20 {
                let (action, frame) = generator.run_once().unwrap();
                assert_eq!(action, 3, "XDP_TX");
                assert_eq!(frame.len(), 64);
                assert_eq!(&frame[0..6], &spec.dst_mac.0);
                assert_eq!(&frame[6..12], &spec.src_mac.0);
                assert_eq!(
                    check_frame(&frame, proto),
                    spec.flow(i),
                    "{proto:?} run {i}"
                );
            }
            assert_eq!(generator.counter(PktgenCounter::Sent).unwrap(), 20);
            assert_eq!(generator.counter(PktgenCounter::Failed).unwrap(), 0);
        }
    }
}
