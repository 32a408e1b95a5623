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

use std::{
    io,
    mem::size_of,
    net::Ipv4Addr,
    num::NonZeroU32,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

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

use super::{DataplaneError, map_err, objects};
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
}

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
        if let Some(link) = self.link.take()
            && let Ok(program) = classifier(&mut self.ebpf)
            && let Err(error) = program.detach(link)
        {
            warn!(interface = %self.interface, %error, "detaching {}", health::PROGRAM);
        }
        // Only after the filter is gone: deleting the qdisc takes every filter on it along.
        if self.added_qdisc
            && let Err(error) = delete_clsact(&self.interface)
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

/// `struct tcmsg` of `<linux/rtnetlink.h>`.
#[repr(C)]
struct TcMsg {
    family: u8,
    _pad1: u8,
    _pad2: u16,
    ifindex: i32,
    handle: u32,
    parent: u32,
    info: u32,
}

/// RTM_DELQDISC for the `clsact` qdisc, with its kind as an attribute so the kernel refuses to
/// delete anything else.
#[repr(C)]
struct DelClsact {
    header: libc::nlmsghdr,
    tc: TcMsg,
    kind_len: u16,
    kind_type: u16,
    kind: [u8; 8],
}
const _: () = assert!(size_of::<DelClsact>() == 48);

/// `TC_H_CLSACT`, the parent of the clsact qdisc (same value as `TC_H_INGRESS`).
const TC_H_CLSACT: u32 = 0xffff_fff1;
/// `TCA_KIND`.
const TCA_KIND: u16 = 1;

/// Deletes the `clsact` qdisc of `interface` (aya can add it but not delete it).
fn delete_clsact(interface: &str) -> io::Result<()> {
    let name = std::ffi::CString::new(interface)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };

    let request = DelClsact {
        header: libc::nlmsghdr {
            nlmsg_len: size_of::<DelClsact>() as u32,
            nlmsg_type: libc::RTM_DELQDISC,
            nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        tc: TcMsg {
            family: libc::AF_UNSPEC as u8,
            _pad1: 0,
            _pad2: 0,
            ifindex: ifindex as i32,
            handle: 0xffff_0000,
            parent: TC_H_CLSACT,
            info: 0,
        },
        kind_len: 4 + 7,
        kind_type: TCA_KIND,
        kind: *b"clsact\0\0",
    };
    // SAFETY: an all-zero sockaddr_nl is valid (the kernel as destination).
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: `request` and `kernel` are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            (&raw const request).cast(),
            size_of::<DelClsact>(),
            0,
            (&raw const kernel).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }

    // The acknowledgement: an NLMSG_ERROR message whose error is 0 on success.
    let mut reply = [0u8; 1024];
    // SAFETY: `reply` is writable for its whole length.
    let received = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            reply.as_mut_ptr().cast(),
            reply.len(),
            0,
        )
    };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    let header_len = size_of::<libc::nlmsghdr>();
    let received = received as usize;
    if received < header_len + 4 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short netlink reply",
        ));
    }
    let message_type = u16::from_ne_bytes([reply[4], reply[5]]);
    if message_type != libc::NLMSG_ERROR as u16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected netlink reply type {message_type}"),
        ));
    }
    let error = i32::from_ne_bytes(
        reply[header_len..header_len + 4]
            .try_into()
            .expect("four bytes"),
    );
    if error == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(-error))
    }
}
