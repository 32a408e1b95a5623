//! Health probes that travel the data path: `xlb_hc_encap`, a tc egress classifier on the
//! balancer's interface, wraps every packet of a probe socket (marked with `SO_MARK`) in
//! IPv4-in-IPv4 towards the backend that mark stands for. The backend strips the outer header
//! and answers from the VIP, so a probe to VIP:port connects only if the backend serves the VIP
//! (VIP on its loopback, decapsulation running), not merely its own address.
//!
//! What the balancer host needs besides this: the VIP must not be a local address (a probe to a
//! local address never reaches the interface's egress); a route that sends the probes to the VIP
//! out of this interface (for marked packets only, through an `ip rule fwmark`, if the host
//! should otherwise reach the VIP some other way); a neighbour entry that resolves that route's
//! next hop (any MAC: the program rewrites the destination MAC); and a range of socket marks
//! that nothing else on the host uses. Unmarked packets, and marks without a target, are left
//! alone.

use std::{collections::BTreeSet, io, net::Ipv4Addr, num::NonZeroU32};

use aya::{
    Ebpf,
    maps::{HashMap, MapData, MapError, PerCpuArray},
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions, TcError},
    },
    sys::SyscallError,
    util::KernelVersion,
};
use tracing::warn;
use xlb_common::health::{self, HcCounter, HcTarget};

use super::{DataplaneError, map_err, netlink, objects};
use crate::config::MacAddr;

/// How the classifier is hooked into the interface's egress path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcHook {
    /// A tcx link (Linux 6.6 and later): needs no qdisc, and the kernel detaches it by itself
    /// when the process that holds it exits, even if it crashes.
    Tcx,
    /// A cls_bpf filter on the `clsact` qdisc, added if missing (kernels before 6.6). A filter
    /// outlives a crashed process; a stale one of the same name is removed before attaching.
    Netlink,
}

impl TcHook {
    /// The hook this kernel supports best: tcx from 6.6 on, netlink before.
    pub fn for_running_kernel() -> TcHook {
        match KernelVersion::current() {
            Ok(version) if version >= KernelVersion::new(6, 6, 0) => TcHook::Tcx,
            _ => TcHook::Netlink,
        }
    }
}

/// The probe encapsulator attached to the egress of one interface; detached when dropped (and
/// the `clsact` qdisc removed if this value added it).
pub struct HealthEncap {
    ebpf: Ebpf,
    targets: HashMap<MapData, u32, HcTarget>,
    stats: PerCpuArray<MapData, u64>,
    interface: String,
    link: Option<SchedClassifierLinkId>,
    added_qdisc: bool,
    /// VIPs given a neighbour entry by [`HealthEncap::set_neighbours`], removed on drop.
    neighbours: BTreeSet<Ipv4Addr>,
}

/// The MAC of the neighbour entries [`HealthEncap::set_neighbours`] adds: locally
/// administered, owned by nobody. Probes leave with their backend's MAC instead; any other
/// packet the host itself sends to the VIP goes nowhere, as it would without the entry.
pub const VIP_NEIGHBOUR_MAC: MacAddr = MacAddr([0x02, 0x78, 0x6c, 0x62, 0x00, 0x00]);

fn tc_err(action: &'static str) -> impl FnOnce(TcError) -> DataplaneError {
    move |source| DataplaneError::Program {
        action,
        program: health::PROGRAM,
        source: Box::new(ProgramError::TcError(source)),
    }
}

fn program_err(action: &'static str) -> impl FnOnce(ProgramError) -> DataplaneError {
    move |source| DataplaneError::Program {
        action,
        program: health::PROGRAM,
        source: Box::new(source),
    }
}

fn classifier(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, DataplaneError> {
    ebpf.program_mut(health::PROGRAM)
        .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
        .ok_or(DataplaneError::Missing(health::PROGRAM))
}

impl HealthEncap {
    /// Loads `xlb_hc_encap` and attaches it to the egress of `interface`, with the hook the
    /// running kernel supports best ([`TcHook::for_running_kernel`]).
    pub fn attach(interface: &str) -> Result<HealthEncap, DataplaneError> {
        Self::attach_with(interface, TcHook::for_running_kernel())
    }

    /// As [`HealthEncap::attach`], with the hook chosen by the caller.
    pub fn attach_with(interface: &str, hook: TcHook) -> Result<HealthEncap, DataplaneError> {
        let mut ebpf =
            Ebpf::load(objects::HC_ENCAP).map_err(|e| DataplaneError::Load(Box::new(e)))?;
        let targets = ebpf
            .take_map(health::TARGETS_MAP)
            .ok_or(DataplaneError::Missing(health::TARGETS_MAP))?;
        let stats = ebpf
            .take_map(health::STATS_MAP)
            .ok_or(DataplaneError::Missing(health::STATS_MAP))?;
        let mut encap = HealthEncap {
            targets: HashMap::try_from(targets).map_err(map_err("open", health::TARGETS_MAP))?,
            stats: PerCpuArray::try_from(stats).map_err(map_err("open", health::STATS_MAP))?,
            ebpf,
            interface: interface.to_owned(),
            link: None,
            added_qdisc: false,
            neighbours: BTreeSet::new(),
        };
        classifier(&mut encap.ebpf)?
            .load()
            .map_err(program_err("loading"))?;

        // From here on, dropping `encap` undoes whatever was done.
        let options = match hook {
            TcHook::Tcx => TcAttachOptions::TcxOrder(LinkOrder::default()),
            TcHook::Netlink => {
                encap.added_qdisc = add_clsact(interface)?;
                // A filter left behind by a process that died without detaching it.
                match tc::qdisc_detach_program(interface, TcAttachType::Egress, health::PROGRAM) {
                    Ok(()) => warn!(interface, "removed a stale {} filter", health::PROGRAM),
                    Err(TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(tc_err("removing a stale filter of")(e)),
                }
                TcAttachOptions::Netlink(NlOptions::default())
            }
        };
        let link = classifier(&mut encap.ebpf)?
            .attach_with_options(interface, TcAttachType::Egress, options)
            .map_err(program_err("attaching"))?;
        encap.link = Some(link);
        Ok(encap)
    }

    /// Sends packets of sockets marked `mark` to `backend` inside IPv4-in-IPv4 from
    /// `outer_src` (the interface's own address), in frames addressed to `next_hop_mac` (the
    /// backend's MAC, or the router's towards it). Replaces an existing target of that mark.
    pub fn set_target(
        &mut self,
        mark: NonZeroU32,
        backend: Ipv4Addr,
        next_hop_mac: MacAddr,
        outer_src: Ipv4Addr,
    ) -> Result<(), DataplaneError> {
        let target = HcTarget {
            backend: u32::from_ne_bytes(backend.octets()),
            outer_src: u32::from_ne_bytes(outer_src.octets()),
            mac: next_hop_mac.0,
            _pad: [0; 2],
        };
        self.targets
            .insert(mark.get(), target, 0)
            .map_err(map_err("update", health::TARGETS_MAP))
    }

    /// Stops encapsulating packets marked `mark`; they then leave unchanged. Removing a mark
    /// without a target is not an error.
    pub fn remove_target(&mut self, mark: NonZeroU32) -> Result<(), DataplaneError> {
        match self.targets.remove(&mark.get()) {
            Err(MapError::SyscallError(SyscallError { io_error, .. }))
                if io_error.kind() == io::ErrorKind::NotFound =>
            {
                Ok(())
            }
            result => result.map_err(map_err("delete", health::TARGETS_MAP)),
        }
    }

    /// Makes the neighbour entries of the interface for `vips` exactly this set (of those this
    /// value added). A probe to a VIP inside the interface's own subnet needs one: the kernel
    /// resolves the next hop before tc egress runs, and nothing answers ARP for a VIP (backends
    /// hold it on their loopback and ignore ARP for it). Probes routed through a gateway do not
    /// use it. Entries point at [`VIP_NEIGHBOUR_MAC`]; the classifier rewrites the MAC of
    /// probes.
    pub fn set_neighbours(&mut self, vips: &BTreeSet<Ipv4Addr>) -> Result<(), DataplaneError> {
        let stale: Vec<Ipv4Addr> = self.neighbours.difference(vips).copied().collect();
        for vip in stale {
            netlink::delete_neighbour(&self.interface, vip).map_err(|source| {
                DataplaneError::Netlink {
                    what: format!(
                        "deleting the neighbour entry of {vip} on {}",
                        self.interface
                    ),
                    source,
                }
            })?;
            self.neighbours.remove(&vip);
        }
        for &vip in vips.difference(&self.neighbours.clone()) {
            netlink::set_neighbour(&self.interface, vip, VIP_NEIGHBOUR_MAC).map_err(|source| {
                DataplaneError::Netlink {
                    what: format!("adding the neighbour entry of {vip} on {}", self.interface),
                    source,
                }
            })?;
            self.neighbours.insert(vip);
        }
        Ok(())
    }

    /// Packets per outcome (`encapsulated`, `passed`, `errors`), summed over CPUs.
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>, DataplaneError> {
        HcCounter::ALL
            .iter()
            .map(|c| {
                let values = self
                    .stats
                    .get(&(*c as u32), 0)
                    .map_err(map_err("lookup", health::STATS_MAP))?;
                Ok((c.name(), values.iter().sum()))
            })
            .collect()
    }
}

impl Drop for HealthEncap {
    fn drop(&mut self) {
        for vip in std::mem::take(&mut self.neighbours) {
            if let Err(error) = netlink::delete_neighbour(&self.interface, vip) {
                warn!(interface = %self.interface, %vip, %error, "removing a probe neighbour entry");
            }
        }
        if let Some(link) = self.link.take()
            && let Ok(program) = classifier(&mut self.ebpf)
            && let Err(error) = program.detach(link)
        {
            warn!(interface = %self.interface, %error, "detaching {}", health::PROGRAM);
        }
        // Only after the filter is gone: deleting the qdisc takes every filter on it along.
        if self.added_qdisc
            && let Err(error) = netlink::delete_clsact(&self.interface)
        {
            warn!(interface = %self.interface, %error, "removing the clsact qdisc");
        }
    }
}

/// Adds the `clsact` qdisc to `interface`; true if it was added, false if it was there already.
fn add_clsact(interface: &str) -> Result<bool, DataplaneError> {
    match tc::qdisc_add_clsact(interface) {
        Ok(()) => Ok(true),
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(tc_err("adding the clsact qdisc for")(e)),
    }
}

/// The first IPv4 address of `interface`: the outer source of encapsulated probes (backends
/// answer the inner packet, from the VIP, to this address).
pub fn interface_ipv4(interface: &str) -> io::Result<Ipv4Addr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs(3) fills `list`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = None;
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*entry };
        entry = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: ifa_addr is non-null and points to a sockaddr of the family it names.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        if name.to_bytes() == interface.as_bytes() && family == libc::AF_INET {
            // SAFETY: an AF_INET address is a sockaddr_in.
            let addr = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
            found = Some(Ipv4Addr::from(addr.sin_addr.s_addr.to_ne_bytes()));
            break;
        }
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    found.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("interface {interface} has no IPv4 address"),
        )
    })
}
