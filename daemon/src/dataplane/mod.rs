//! The dataplane: owns the loaded XDP program, its maps and its attachment, and is the only code
//! that writes the maps. [`Dataplane::apply`] takes a [`DesiredState`] and changes only what
//! differs from what is applied, one VIP at a time, each VIP switched by a single map update.

mod adopt;
mod alloc;
mod bench;
pub mod decap;
mod dump;
pub mod flows;
pub mod hc_encap;
mod netlink;
pub mod objects;
pub mod pin;
mod policy;
mod slots;
pub mod stats;
mod verdicts;

use std::{collections::BTreeMap, sync::Arc};

use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{Array, HashMap, MapData, MapError},
    programs::{
        ProgramError, TestRun, TestRunOptions, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use tracing::{info, warn};
use xlb_common::{
    Backend, Globals, LAYOUT_VERSION, VipAddrKey, VipAddrValue, VipById, VipById6, VipByIdOf,
    VipKey, VipKey6, VipMeta, backend_flags,
    hash::{VIP_FILTER_WORDS, vip_filter_slot},
    map_names,
    policy::POLICY_V4_24_WORDS,
    program_names,
};

use crate::{
    config::{AttachMode, Limits, MacAddr},
    state::{DesiredState, DesiredVip, VipKeyOrd, addr_words, merge_by_key},
};
use alloc::{IdAllocator, RegionAllocator};
use pin::PinDir;
use policy::PolicyMaps;
pub use policy::datapath_settings;
use slots::SlotArray;

pub use dump::{DatapathDump, Inconsistency, VipDump};

/// Errors of the dataplane, each naming what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The eBPF object could not be loaded (verifier, map creation, permissions...).
    #[error("loading the eBPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program could not be loaded or attached.
    #[error("{action} program {program}: {source}")]
    Program {
        /// What was being done.
        action: &'static str,
        /// Program name.
        program: &'static str,
        /// The cause.
        #[source]
        source: Box<ProgramError>,
    },
    /// A program or map the object should contain is missing (build mismatch).
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    /// A map operation failed.
    #[error("{op} on map {map}: {source}")]
    Map {
        /// The operation.
        op: &'static str,
        /// Map name.
        map: &'static str,
        /// The cause.
        #[source]
        source: Box<MapError>,
    },
    /// Memory-mapping an array (the Maglev slots, the policy's /24 entries or tables) failed.
    #[error("memory-mapping the array {map}: {source}")]
    Mmap {
        /// Map name.
        map: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A slot write outside the array (a bug in region bookkeeping).
    #[error("slot range {offset}+{len} outside the Maglev array of {capacity} slots")]
    SlotRange {
        /// First slot.
        offset: u32,
        /// Number of slots.
        len: usize,
        /// Array size.
        capacity: usize,
    },
    /// A pinned map holds something this daemon cannot have written.
    #[error("map {map} holds {what}")]
    Inconsistent {
        /// Map name.
        map: &'static str,
        /// What is wrong.
        what: String,
    },
    /// A limit from the config would be exceeded by this change.
    #[error("not enough {what}: need {needed}, {available} available (raise limits.{limit})")]
    Capacity {
        /// What ran out.
        what: &'static str,
        /// How many the change needs.
        needed: u64,
        /// How many are free.
        available: u64,
        /// The config field that sets the limit.
        limit: &'static str,
    },
    /// The number of CPUs could not be read.
    #[error("reading {what}: {source}")]
    Cpus {
        /// What was read.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A routing or neighbour request to the kernel failed.
    #[error("{what}: {source}")]
    Netlink {
        /// What was asked, e.g. "adding the neighbour entry of 10.0.0.1 on eth0".
        what: String,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
    /// Pinned state could not be adopted, created or removed.
    #[error("{0}")]
    Pin(#[from] pin::PinError),
    /// A pinned XDP link could not be opened, pinned or updated.
    #[error("{action} the XDP link {path}: {source}")]
    Link {
        /// What was being done.
        action: &'static str,
        /// The link's pin.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The interface's MAC address could not be read.
    #[error("reading the MAC address of interface {interface}: {source}")]
    InterfaceMac {
        /// Interface name.
        interface: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The interface's MTU could not be read.
    #[error("reading the MTU of interface {interface}: {source}")]
    InterfaceMtu {
        /// Interface name.
        interface: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Turns a map error into a [`DataplaneError`] naming the operation and the map.
pub(crate) fn map_err(
    op: &'static str,
    map: &'static str,
) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map {
        op,
        map,
        source: Box::new(source),
    }
}

/// Where and how the program is attached.
#[derive(Debug)]
pub struct Attachment {
    /// Interface name.
    pub interface: String,
    /// The mode the kernel accepted.
    pub mode: XdpMode,
    link: LinkHandle,
}

/// How the attachment is held.
#[derive(Debug)]
enum LinkHandle {
    /// Attached by this process and not pinned: detached when the dataplane is dropped.
    Owned(XdpLinkId),
    /// Pinned on bpffs: stays attached after the daemon exits, until the pin is removed.
    Pinned {
        link: FdLink,
        pin: std::path::PathBuf,
    },
}

fn mode_name(mode: XdpMode) -> &'static str {
    match mode {
        XdpMode::Skb => "generic",
        _ => "native",
    }
}

fn link_err(
    action: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(LinkError) -> DataplaneError {
    move |source| DataplaneError::Link {
        action,
        path: path.to_owned(),
        source: Box::new(source),
    }
}

/// What one VIP looks like in the maps right now.
#[derive(Debug, Clone)]
struct AppliedVip {
    vip_id: u32,
    desired: Arc<DesiredVip>,
    /// Backend ids, parallel to `desired.backends`.
    backend_ids: Vec<u32>,
    /// Active table region (offset, length).
    region: Option<(u32, u32)>,
}

/// The VIPs a change touches, in key order.
#[derive(Default)]
struct VipDiff<'a> {
    /// Applied VIPs the desired state no longer has.
    removed: Vec<VipKeyOrd>,
    /// VIPs to write: new ones and changed ones.
    changed: Vec<(VipKeyOrd, &'a Arc<DesiredVip>)>,
    /// How many VIPs stay as they are.
    unchanged: usize,
}

/// What a call to [`Dataplane::apply`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApplyReport {
    /// VIPs created.
    pub added: usize,
    /// VIPs whose backends, weights, mode or table changed.
    pub changed: usize,
    /// VIPs removed.
    pub removed: usize,
    /// VIPs left as they were.
    pub unchanged: usize,
}

/// The loaded load balancer and its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    vips: HashMap<MapData, VipKey, VipMeta>,
    vips6: HashMap<MapData, VipKey6, VipMeta>,
    /// IPv4 VIPs by id, beside `vips`: written and cleared with it ([`Self::write_vip_entry`],
    /// [`Self::clear_vip_by_id`]).
    vip_by_id: Array<MapData, VipById>,
    /// `XLB_VIP_BY_ID6`: as `vip_by_id`, for the IPv6 VIPs.
    vip_by_id6: Array<MapData, VipById6>,
    vip_addrs: HashMap<MapData, VipAddrKey, VipAddrValue>,
    vip_filter: Array<MapData, u64>,
    /// VIP addresses per filter bit (the datapath sees only whether the count is zero).
    filter_counts: BTreeMap<u32, u32>,
    backends: Array<MapData, Backend>,
    slots: SlotArray,
    globals: Array<MapData, Globals>,
    stats: stats::StatsMaps,
    flows: flows::FlowTable,
    vip_ids: IdAllocator,
    backend_ids: IdAllocator,
    regions: RegionAllocator,
    policy: PolicyMaps,
    policy_prefixes: u32,
    events: Option<aya::maps::RingBuf<MapData>>,
    applied: BTreeMap<VipKeyOrd, AppliedVip>,
    if_mac: MacAddr,
    /// The settings entry as last written (or found pinned): rewritten when it would differ.
    globals_written: Globals,
    /// The interface's MTU: `encap.mtu` when the config leaves it out.
    interface_mtu: u16,
    attachment: Option<Attachment>,
    /// Where the maps and the link are pinned (`None`: nothing pinned, detach at exit).
    pins: Option<PinDir>,
    /// The maps were adopted from a previous daemon: the first apply matches them to the
    /// desired state before changing anything (see `adopt.rs`).
    pending_adoption: bool,
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, DataplaneError> {
    ebpf.take_map(name).ok_or(DataplaneError::Missing(name))
}

/// An array map's data, to memory-map.
fn take_array(ebpf: &mut Ebpf, name: &'static str) -> Result<MapData, DataplaneError> {
    match take_map(ebpf, name)? {
        aya::maps::Map::Array(data) => Ok(data),
        _ => Err(DataplaneError::Missing(name)),
    }
}

/// Tables of mixed IPv4 /24s (`XLB_POL_V4_MIX`) for a prefix limit: each mixed /24 holds a
/// prefix longer than /24, and a change holds at most the old tables and two sets of new ones
/// (a change of the allow-list flag writes a transition first); no more than a 16-bit entry
/// can name.
fn mixed_tables(policy_prefixes: u32) -> u32 {
    policy_prefixes
        .saturating_mul(3)
        .clamp(1, xlb_common::policy::POLICY_V4_MIX_MAX)
}

fn typed<T: TryFrom<aya::maps::Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, DataplaneError> {
    T::try_from(take_map(ebpf, name)?).map_err(map_err("open", name))
}

/// `encap.mtu` when neither the config nor the interface gives one.
pub const DEFAULT_MTU: u16 = 1500;

/// Reads an interface's MTU from sysfs (capped at 65535, the largest IPv4 packet).
pub fn interface_mtu(interface: &str) -> Result<u16, DataplaneError> {
    let error = |source| DataplaneError::InterfaceMtu {
        interface: interface.to_owned(),
        source,
    };
    let text = interface_attribute(interface, "mtu").map_err(error)?;
    let mtu: u32 = text
        .parse()
        .map_err(|_| error(std::io::Error::other(format!("unexpected MTU {text:?}"))))?;
    Ok(mtu.min(u32::from(u16::MAX)) as u16)
}

/// Reads an interface's MAC address from sysfs.
pub fn interface_mac(interface: &str) -> Result<MacAddr, DataplaneError> {
    let error = |source| DataplaneError::InterfaceMac {
        interface: interface.to_owned(),
        source,
    };
    let text = interface_attribute(interface, "address").map_err(error)?;
    text.parse().map_err(|_| {
        error(std::io::Error::other(format!(
            "unexpected address {text:?}"
        )))
    })
}

/// One attribute file of an interface in sysfs, trimmed.
fn interface_attribute(interface: &str, name: &str) -> std::io::Result<String> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{interface}/{name}"))?;
    Ok(text.trim().to_owned())
}

impl Dataplane {
    /// Loads the program with maps sized from `limits`; nothing is attached yet. `if_mac` is the
    /// source MAC of forwarded frames (the attached interface's own).
    pub fn load(limits: &Limits, if_mac: MacAddr) -> Result<Dataplane, DataplaneError> {
        Self::load_with(limits, if_mac, None)
    }

    /// As [`Dataplane::load`], with every map pinned in `pins`: maps already pinned there (by a
    /// previous daemon) are adopted after checking their layout version and sizes, and the
    /// first [`Dataplane::apply`] takes over their contents without disturbing flows.
    pub fn load_pinned(
        limits: &Limits,
        if_mac: MacAddr,
        pins: PinDir,
    ) -> Result<Dataplane, DataplaneError> {
        Self::load_with(limits, if_mac, Some(pins))
    }

    /// Whether the maps were adopted from pinned state (until the first apply takes them over).
    pub fn adopting(&self) -> bool {
        self.pending_adoption
    }

    /// The pin directory, when pinned.
    pub fn pins(&self) -> Option<&PinDir> {
        self.pins.as_ref()
    }

    fn load_with(
        limits: &Limits,
        if_mac: MacAddr,
        pins: Option<PinDir>,
    ) -> Result<Dataplane, DataplaneError> {
        let fresh_pins = pins.as_ref().filter(|p| !p.has_maps()).cloned();
        let result = Self::load_maps_and_program(limits, if_mac, pins);
        // Maps this attempt pinned are useless without their globals (layout version): a
        // failed fresh load removes them, so the next start is not refused for them.
        if result.is_err()
            && let Some(pins) = fresh_pins
            && let Err(error) = pins.remove()
        {
            warn!(%error, "removing the maps a failed load pinned");
        }
        result
    }

    fn load_maps_and_program(
        limits: &Limits,
        if_mac: MacAddr,
        pins: Option<PinDir>,
    ) -> Result<Dataplane, DataplaneError> {
        let sizes = [
            (map_names::VIPS, limits.max_vips),
            (map_names::VIP_ADDRS, limits.max_vips),
            (map_names::BACKENDS, limits.max_backends),
            (map_names::MAGLEV, limits.maglev_slots.div_ceil(2)),
            (
                map_names::FLOWS,
                xlb_common::flow_sets(limits.flow_table_size),
            ),
            (map_names::VIPS6, limits.max_vips),
            (map_names::VIP_BY_ID, limits.max_vips),
            (map_names::VIP_BY_ID6, limits.max_vips),
            (map_names::FLOWS6, limits.flow_table_size),
            (map_names::STATS_VIPS, limits.max_vips),
            (map_names::STATS_BACKENDS, limits.max_backends),
            (map_names::POLICY_V4, limits.policy_prefixes),
            (map_names::POLICY_V6, limits.policy_prefixes),
            (map_names::POLICY_V4_24, POLICY_V4_24_WORDS),
            (
                map_names::POLICY_V4_MIX,
                mixed_tables(limits.policy_prefixes),
            ),
            (
                map_names::POLICY_VIP,
                limits.policy_prefixes.saturating_add(limits.max_vips),
            ),
            (
                map_names::POLICY_VIP6,
                limits.policy_prefixes.saturating_add(limits.max_vips),
            ),
            (map_names::RATE, limits.rate_limit_sources),
            (map_names::RATE6, limits.rate_limit_sources),
        ];
        let mut loader = EbpfLoader::new();
        for (name, size) in sizes {
            loader.map_max_entries(name, size);
        }
        // The program picks a flow's set by the number of sets: a constant it is loaded with.
        let flow_sets = xlb_common::flow_sets(limits.flow_table_size);
        loader.override_global(map_names::FLOW_SET_COUNT, &flow_sets, true);
        let mut adopting = false;
        if let Some(pins) = &pins {
            adopting = pins.check_layout()?.is_some();
            if adopting {
                pins.check_sizes(&sizes)?;
            }
            pins.create()?;
            for name in pin::PINNED_MAPS {
                loader.map_pin_path(name, pins.map(name));
            }
        }
        let mut ebpf = loader
            .load(objects::LB)
            .map_err(|e| DataplaneError::Load(Box::new(e)))?;
        lb_program(&mut ebpf)?
            .load()
            .map_err(|source| DataplaneError::Program {
                action: "loading",
                program: program_names::LB,
                source: Box::new(source),
            })?;

        let maglev = take_array(&mut ebpf, map_names::MAGLEV)?;
        let mut dataplane = Dataplane {
            vips: typed(&mut ebpf, map_names::VIPS)?,
            vips6: typed(&mut ebpf, map_names::VIPS6)?,
            vip_by_id: typed(&mut ebpf, map_names::VIP_BY_ID)?,
            vip_by_id6: typed(&mut ebpf, map_names::VIP_BY_ID6)?,
            vip_addrs: typed(&mut ebpf, map_names::VIP_ADDRS)?,
            vip_filter: typed(&mut ebpf, map_names::VIP_FILTER)?,
            filter_counts: BTreeMap::new(),
            backends: typed(&mut ebpf, map_names::BACKENDS)?,
            slots: SlotArray::new(maglev, limits.maglev_slots.div_ceil(2) * 2)?,
            globals: typed(&mut ebpf, map_names::GLOBALS)?,
            stats: stats::StatsMaps {
                actions: typed(&mut ebpf, map_names::STATS_ACTIONS)?,
                drops: typed(&mut ebpf, map_names::STATS_DROPS)?,
                lb: typed(&mut ebpf, map_names::STATS_LB)?,
                vips: typed(&mut ebpf, map_names::STATS_VIPS)?,
                backends: typed(&mut ebpf, map_names::STATS_BACKENDS)?,
                policy: typed(&mut ebpf, map_names::STATS_POLICY)?,
            },
            policy: PolicyMaps::new(
                typed(&mut ebpf, map_names::POLICY)?,
                typed(&mut ebpf, map_names::POLICY_V4)?,
                typed(&mut ebpf, map_names::POLICY_V6)?,
                policy::VipRangeTries {
                    v4: typed(&mut ebpf, map_names::POLICY_VIP)?,
                    v6: typed(&mut ebpf, map_names::POLICY_VIP6)?,
                },
                policy::Resolved::new(
                    typed(&mut ebpf, map_names::POLICY_V4_B16)?,
                    take_array(&mut ebpf, map_names::POLICY_V4_24)?,
                    take_array(&mut ebpf, map_names::POLICY_V4_MIX)?,
                    mixed_tables(limits.policy_prefixes),
                )?,
            ),
            flows: flows::FlowTable::new(
                take_map(&mut ebpf, map_names::FLOWS)?,
                take_map(&mut ebpf, map_names::FLOWS6)?,
                take_map(&mut ebpf, map_names::CLOCK)?,
                limits.flow_table_size,
            )?,
            policy_prefixes: limits.policy_prefixes,
            events: Some(typed(&mut ebpf, map_names::EVENTS)?),
            ebpf,
            vip_ids: IdAllocator::new(limits.max_vips),
            backend_ids: IdAllocator::new(limits.max_backends),
            regions: RegionAllocator::new(limits.maglev_slots),
            applied: BTreeMap::new(),
            if_mac,
            globals_written: Globals::default(),
            interface_mtu: DEFAULT_MTU,
            attachment: None,
            pins,
            pending_adoption: adopting,
        };
        if adopting {
            // The live datapath keeps its settings until the first apply compares them.
            dataplane.globals_written = dataplane.read_globals()?;
            info!("adopting pinned maps: established flows and counters are kept");
        } else {
            let globals = dataplane.globals_for(None);
            dataplane.write_globals(globals)?;
        }
        Ok(dataplane)
    }

    /// Attaches the program to `interface`. `Auto` tries native mode first and falls back to
    /// generic mode with a warning. When pinned and a link is already pinned, the link is
    /// adopted instead: its program is replaced atomically (bpf_link update) if this build's
    /// differs, and the attachment never lapses.
    pub fn attach(
        &mut self,
        interface: &str,
        mode: AttachMode,
    ) -> Result<&Attachment, DataplaneError> {
        if let Some(pins) = &self.pins
            && let Some((path, mode)) = pins.pinned_link()
        {
            return self.adopt_link(interface, path, mode);
        }
        let program = lb_program(&mut self.ebpf)?;
        let attach = |program: &mut Xdp, mode: XdpMode| {
            program
                .attach(interface, mode)
                .map_err(|source| DataplaneError::Program {
                    action: "attaching",
                    program: program_names::LB,
                    source: Box::new(source),
                })
        };
        let (link, used) = match mode {
            AttachMode::Native => (attach(program, XdpMode::Driver)?, XdpMode::Driver),
            AttachMode::Generic => (attach(program, XdpMode::Skb)?, XdpMode::Skb),
            AttachMode::Auto => match attach(program, XdpMode::Driver) {
                Ok(link) => (link, XdpMode::Driver),
                Err(error) => {
                    warn!(interface, %error, "native XDP unavailable, falling back to generic mode (slower: runs after the stack allocates an skb)");
                    (attach(program, XdpMode::Skb)?, XdpMode::Skb)
                }
            },
        };
        info!(interface, mode = ?used, "XDP program attached");
        let link = match &self.pins {
            None => LinkHandle::Owned(link),
            Some(pins) => {
                let pin = pins.link(mode_name(used));
                let owned = program
                    .take_link(link)
                    .map_err(|source| DataplaneError::Program {
                        action: "taking the link of",
                        program: program_names::LB,
                        source: Box::new(source),
                    })?;
                let fd = FdLink::try_from(owned).map_err(link_err("opening", &pin))?;
                let pinned = fd.pin(&pin).map_err(|source| DataplaneError::Link {
                    action: "pinning",
                    path: pin.clone(),
                    source: Box::new(source),
                })?;
                info!(pin = %pin.display(), "XDP link pinned: the datapath outlives xlbd");
                LinkHandle::Pinned {
                    link: FdLink::from(pinned),
                    pin,
                }
            }
        };
        Ok(self.attachment.insert(Attachment {
            interface: interface.to_owned(),
            mode: used,
            link,
        }))
    }

    /// Takes over a pinned link; replaces its program when this build's differs (by tag).
    fn adopt_link(
        &mut self,
        interface: &str,
        pin: std::path::PathBuf,
        mode: &'static str,
    ) -> Result<&Attachment, DataplaneError> {
        let fd = FdLink::from(PinnedLink::from_pin(&pin).map_err(link_err("opening", &pin))?);
        let attached_id = fd.info().map_err(link_err("reading", &pin))?.program_id();
        let program = lb_program(&mut self.ebpf)?;
        let program_err = |action| {
            move |source| DataplaneError::Program {
                action,
                program: program_names::LB,
                source: Box::new(source),
            }
        };
        let ours = program.info().map_err(program_err("reading"))?;
        let attached_tag = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.id() == attached_id)
            .map(|p| p.tag());
        let link = if attached_tag == Some(ours.tag()) {
            info!(interface, pin = %pin.display(), "adopted the pinned XDP link; its program is this build's");
            fd
        } else {
            let xdp = XdpLink::try_from(fd).map_err(link_err("opening", &pin))?;
            let id = program
                .attach_to_link(xdp)
                .map_err(program_err("replacing (bpf_link update)"))?;
            let owned = program
                .take_link(id)
                .map_err(program_err("taking the link of"))?;
            let why = if attached_tag.is_some() {
                "another build's"
            } else {
                "not identifiable without CAP_SYS_ADMIN"
            };
            info!(interface, pin = %pin.display(), attached = why, "adopted the pinned XDP link and replaced its program atomically");
            FdLink::try_from(owned).map_err(link_err("holding", &pin))?
        };
        Ok(self.attachment.insert(Attachment {
            interface: interface.to_owned(),
            mode: if mode == "generic" {
                XdpMode::Skb
            } else {
                XdpMode::Driver
            },
            link: LinkHandle::Pinned { link, pin },
        }))
    }

    /// Detaches the program, if attached, and removes everything pinned. Without pins this
    /// also happens when the dataplane is dropped; with pins, dropping leaves the datapath
    /// running (see [`Dataplane::release`]).
    pub fn detach(&mut self) -> Result<(), DataplaneError> {
        if let Some(attachment) = self.attachment.take() {
            match attachment.link {
                LinkHandle::Owned(link) => {
                    lb_program(&mut self.ebpf)?.detach(link).map_err(|source| {
                        DataplaneError::Program {
                            action: "detaching",
                            program: program_names::LB,
                            source: Box::new(source),
                        }
                    })?
                }
                // Unpinning, then closing our descriptor, lets the kernel detach the link.
                LinkHandle::Pinned { link, pin } => {
                    std::fs::remove_file(&pin).map_err(|source| pin::PinError::Io {
                        what: "unpinning",
                        path: pin.clone(),
                        source,
                    })?;
                    drop(link);
                }
            }
            info!(interface = attachment.interface, "XDP program detached");
        }
        if let Some(pins) = &self.pins {
            pins.remove()?;
            info!(dir = %pins.path().display(), "pinned maps removed");
        }
        Ok(())
    }

    /// Whether the datapath stays when this dataplane is dropped (maps and link pinned).
    pub fn outlives_daemon(&self) -> bool {
        self.pins.is_some()
            && matches!(
                self.attachment.as_ref().map(|a| &a.link),
                Some(LinkHandle::Pinned { .. })
            )
    }

    /// Where the program is attached.
    pub fn attachment(&self) -> Option<&Attachment> {
        self.attachment.as_ref()
    }

    /// The ring buffer of datapath events, for the one reader that takes it.
    pub fn take_events(&mut self) -> Option<aya::maps::RingBuf<MapData>> {
        self.events.take()
    }

    /// Names of a VIP id and a backend id as applied now: (VIP name, backend address).
    pub fn names_of(&self, vip_id: u32, backend_id: u32) -> (Option<String>, Option<String>) {
        let Some(applied) = self.applied.values().find(|a| a.vip_id == vip_id) else {
            return (None, None);
        };
        let backend = applied
            .backend_ids
            .iter()
            .position(|&id| id == backend_id)
            .map(|i| applied.desired.backends[i].address.to_string());
        (Some(applied.desired.name.clone()), backend)
    }

    /// Runs the program once on `input` with BPF_PROG_TEST_RUN; the output frame is written to
    /// `output`. Returns (XDP action, output length).
    pub fn test_run(
        &mut self,
        input: &[u8],
        output: &mut [u8],
    ) -> Result<(u32, usize), DataplaneError> {
        test_run_xdp(
            lb_program(&mut self.ebpf)?,
            program_names::LB,
            input,
            output,
        )
    }

    /// Counters summed over CPUs, labelled with the applied VIPs and backends.
    pub fn stats(&self) -> Result<stats::Snapshot, DataplaneError> {
        let vips = self
            .applied
            .values()
            .map(|applied| stats::VipLabels {
                vip_id: applied.vip_id,
                vip: &applied.desired,
                backend_ids: &applied.backend_ids,
            })
            .collect::<Vec<_>>();
        self.stats.snapshot(&vips)
    }

    /// The datapath-wide counters only (actions, drops, load-balancing and policy events),
    /// without the per-VIP and per-backend ones and their Maglev slot counts: what status needs.
    pub fn global_stats(&self) -> Result<stats::Snapshot, DataplaneError> {
        self.stats.snapshot(&[])
    }

    /// Entries, capacity and removals of the flow tables (from a walk at most
    /// [`flows::MAX_AGE`] old).
    pub fn flow_table(&mut self) -> Result<flows::FlowTableView, DataplaneError> {
        self.flows.view()
    }

    /// A sweeper of the flow tables: the datapath clock, idle expiry after `idle_timeout_s`
    /// seconds, room under pressure ([`flows::FlowSweeper`]).
    pub fn flow_sweeper(&self, idle_timeout_s: u32) -> Result<flows::FlowSweeper, DataplaneError> {
        self.flows.sweeper(idle_timeout_s)
    }

    /// Counts the IPv4 flow table's flows now (slots in use), as the metrics do (tests and
    /// benchmarks).
    pub fn count_flows(&self) -> Result<u32, DataplaneError> {
        self.flows.count()
    }

    /// Entries in the IPv6 flow table now (`XLB_FLOWS6`), counted as [`Self::count_flows`].
    pub fn count_flows6(&self) -> Result<u32, DataplaneError> {
        self.flows.count6()
    }

    /// Counts the IPv6 flow table's entries now key by key, the slow way that kernels without
    /// batch reads take (tests).
    pub fn count_flows6_key_by_key(&self) -> Result<u32, DataplaneError> {
        self.flows.count6_keys()
    }

    /// The id the datapath uses for a VIP (tests check how ids are reused).
    pub fn vip_id(&self, vip: &VipKeyOrd) -> Option<u32> {
        self.applied.get(vip).map(|applied| applied.vip_id)
    }

    /// The backend id the datapath uses for a VIP's n-th backend (tests use it to predict
    /// forwarding and read counters).
    pub fn backend_id(&self, vip: &VipKeyOrd, index: usize) -> Option<u32> {
        self.applied.get(vip)?.backend_ids.get(index).copied()
    }

    /// The active Maglev table of a VIP as backend ids, read back from the datapath's array.
    pub fn table(&self, vip: &VipKeyOrd) -> Result<Option<Vec<u32>>, DataplaneError> {
        let Some(applied) = self.applied.get(vip) else {
            return Ok(None);
        };
        match applied.region {
            Some((offset, len)) => self.slots.read(offset, len as usize).map(Some),
            None => Ok(Some(Vec::new())),
        }
    }

    /// The settings entry for `desired` (`None`: before the first apply, no encapsulation
    /// source and no MTU check).
    fn globals_for(&self, desired: Option<&DesiredState>) -> Globals {
        let (prefix, host_mask) = match desired.map(|d| d.encap_source) {
            Some(net) => {
                let mask = if net.prefix_len >= 32 {
                    0
                } else {
                    u32::MAX >> net.prefix_len
                };
                (
                    u32::from_ne_bytes(net.addr.octets()),
                    u32::from_ne_bytes(mask.to_be_bytes()),
                )
            }
            None => (0, 0),
        };
        let (ip6_prefix, ip6_host_mask) = match desired.and_then(|d| d.encap_source_v6) {
            Some(net) => {
                let mask = u128::MAX
                    .checked_shr(u32::from(net.prefix_len))
                    .unwrap_or(0);
                (
                    addr_words(net.addr).0,
                    addr_words(std::net::Ipv6Addr::from(mask).into()).0,
                )
            }
            None => ([0; 4], [0; 4]),
        };
        let encap_flags = match desired.map(|d| d.on_too_big) {
            Some(crate::config::TooBig::Drop) => xlb_common::encap_flags::TOO_BIG_DROP,
            _ => 0,
        };
        Globals {
            if_mac: self.if_mac.0,
            encap_mtu: desired.map_or(0, |d| d.encap_mtu.unwrap_or(self.interface_mtu)),
            ipip_src_prefix: prefix,
            ipip_src_host_mask: host_mask,
            layout_version: LAYOUT_VERSION,
            ip6_src_prefix: ip6_prefix,
            ip6_src_host_mask: ip6_host_mask,
            encap_flags,
        }
    }

    fn write_globals(&mut self, globals: Globals) -> Result<(), DataplaneError> {
        self.globals
            .set(0, globals, 0)
            .map_err(map_err("update", map_names::GLOBALS))?;
        self.globals_written = globals;
        Ok(())
    }

    /// The MTU encapsulation keeps to, as written (0 before the first apply).
    pub fn encap_mtu(&self) -> u16 {
        self.globals_written.encap_mtu
    }

    /// Sets the interface's MTU, the `encap.mtu` of configs that leave it out (1500 until
    /// set). Takes effect at the next apply.
    pub fn set_interface_mtu(&mut self, mtu: u16) {
        self.interface_mtu = mtu;
    }

    /// Makes the maps hold `desired`, touching only VIPs that differ. Each VIP switches with one
    /// update of its VIP entry; a VIP's new table is written to a fresh region first.
    pub fn apply(&mut self, desired: &DesiredState) -> Result<ApplyReport, DataplaneError> {
        self.vip_ids.end_change();
        self.backend_ids.end_change();
        self.regions.end_change();
        let mut adopted = 0;
        if self.pending_adoption {
            adopted = self.adopt(desired)?;
            self.pending_adoption = false;
        }
        let diff = self.diff(desired);
        self.check_capacity(desired, &diff)?;

        let globals = self.globals_for(Some(desired));
        if self.globals_written != globals {
            self.write_globals(globals)?;
        }
        self.policy.add_global(&desired.policy)?;

        let mut report = ApplyReport {
            unchanged: diff.unchanged,
            changed: adopted,
            ..ApplyReport::default()
        };
        for &key in &diff.removed {
            self.remove_vip(key)?;
            report.removed += 1;
        }
        for (key, vip) in &diff.changed {
            let added = !self.applied.contains_key(key);
            self.apply_vip(*key, vip)?;
            if added {
                report.added += 1;
            } else {
                report.changed += 1;
            }
        }
        let vip_ranges = desired
            .vips
            .values()
            .any(|v| v.config.source_ranges.is_some());
        let settings = datapath_settings(&desired.policy, &desired.events, vip_ranges);
        self.policy.finish(&desired.policy, settings)?;
        Ok(report)
    }

    /// What differs between the applied VIPs and `desired`, found in one ordered walk of both
    /// (no tree lookup per VIP: at 10,000 VIPs the lookups were most of the time of a change to
    /// one VIP).
    fn diff<'a>(&self, desired: &'a DesiredState) -> VipDiff<'a> {
        let mut diff = VipDiff::default();
        let applied = self.applied.iter().map(|(key, vip)| (*key, &vip.desired));
        let wanted = desired.vips.iter().map(|(key, vip)| (*key, vip));
        merge_by_key(applied, wanted, |key, old, new| match (old, new) {
            (Some(_), None) => diff.removed.push(key),
            (Some(old), Some(new)) if old.same_as(new) => diff.unchanged += 1,
            (_, Some(new)) => diff.changed.push((key, new)),
            (None, None) => {}
        });
        diff
    }

    /// Refuses a change that cannot fit before writing anything.
    fn check_capacity(
        &self,
        desired: &DesiredState,
        diff: &VipDiff<'_>,
    ) -> Result<(), DataplaneError> {
        let mut new_vips = 0u64;
        let mut new_backends = 0u64;
        // Tables need contiguous regions: try them on a copy of the allocator.
        let mut regions = self.regions.clone();
        for (key, vip) in &diff.changed {
            let old = self.applied.get(key);
            new_vips += u64::from(old.is_none());
            let table_changed = old.is_none_or(|old| !old.desired.same_slots(vip));
            if table_changed
                && !vip.table.is_empty()
                && regions.alloc(vip.table.len() as u32).is_none()
            {
                return Err(DataplaneError::Capacity {
                    what: "contiguous Maglev slots",
                    needed: vip.table.len() as u64,
                    available: regions.free_slots(),
                    limit: "maglev_slots",
                });
            }
            new_backends += vip
                .backends
                .iter()
                .filter(|b| {
                    !old.is_some_and(|old| {
                        old.desired
                            .backends
                            .iter()
                            .any(|o| o.identity() == b.identity())
                    })
                })
                .count() as u64;
        }
        let family_count = |v4: bool| {
            let lists = desired.policy.deny.iter().chain(&desired.policy.allow);
            lists.filter(|c| c.addr.is_ipv4() == v4).count() as u64
        };
        let ranges: u64 = desired
            .vips
            .values()
            .filter_map(|v| v.config.source_ranges.as_ref())
            .map(|r| r.len() as u64)
            .sum();
        let prefixes = u64::from(self.policy_prefixes);
        let checks = [
            (
                "IPv4 policy prefixes",
                family_count(true),
                prefixes,
                "policy_prefixes",
            ),
            (
                "IPv6 policy prefixes",
                family_count(false),
                prefixes,
                "policy_prefixes",
            ),
            ("VIP source ranges", ranges, prefixes, "policy_prefixes"),
            (
                "VIP ids",
                new_vips,
                u64::from(self.vip_ids.available()),
                "max_vips",
            ),
            (
                "backend ids",
                new_backends,
                u64::from(self.backend_ids.available()),
                "max_backends",
            ),
        ];
        for (what, needed, available, limit) in checks {
            if needed > available {
                return Err(DataplaneError::Capacity {
                    what,
                    needed,
                    available,
                    limit,
                });
            }
        }
        Ok(())
    }

    fn apply_vip(&mut self, key: VipKeyOrd, vip: &Arc<DesiredVip>) -> Result<(), DataplaneError> {
        // The record of what is applied changes only once the switch has happened: a write
        // that fails before it leaves the VIP as it was, and still known as such.
        let old = self.applied.get(&key).cloned();
        let vip_id = match &old {
            Some(old) => old.vip_id,
            None => {
                let id = self.vip_ids.alloc().ok_or(DataplaneError::Capacity {
                    what: "VIP ids",
                    needed: 1,
                    available: 0,
                    limit: "max_vips",
                })?;
                self.stats.reset_vip(id)?;
                id
            }
        };

        // Backends: keep the entry of every backend whose identity is unchanged; new entries
        // are written before anything can point at them.
        let mut backend_ids = Vec::with_capacity(vip.backends.len());
        for backend in &vip.backends {
            let existing = old.as_ref().and_then(|old| {
                old.desired
                    .backends
                    .iter()
                    .position(|o| o.identity() == backend.identity())
                    .map(|i| old.backend_ids[i])
            });
            let id = match existing {
                Some(id) => id,
                None => {
                    let id = self.backend_ids.alloc().ok_or(DataplaneError::Capacity {
                        what: "backend ids",
                        needed: 1,
                        available: 0,
                        limit: "max_backends",
                    })?;
                    self.stats.reset_backend(id)?;
                    let (addr, family) = addr_words(backend.address);
                    let entry = Backend {
                        addr,
                        mac: backend.mac.0,
                        family,
                        _pad: 0,
                        vip_id,
                        flags: backend_flags::ACTIVE,
                    };
                    self.backends
                        .set(id, entry, 0)
                        .map_err(map_err("update", map_names::BACKENDS))?;
                    id
                }
            };
            backend_ids.push(id);
        }

        // Table: reuse the active region when the table is the same, else write a new one.
        let region = match &old {
            Some(old) if old.desired.same_slots(vip) => old.region,
            _ if vip.table.is_empty() => None,
            _ => {
                let len = vip.table.len() as u32;
                let offset = self.regions.alloc(len).ok_or(DataplaneError::Capacity {
                    what: "contiguous Maglev slots",
                    needed: u64::from(len),
                    available: self.regions.free_slots(),
                    limit: "maglev_slots",
                })?;
                let slots: Vec<u32> = vip.table.iter().map(|&i| backend_ids[i as usize]).collect();
                self.slots.write(offset, &slots)?;
                Some((offset, len))
            }
        };

        let meta = VipMeta {
            vip_id,
            mode: vip.mode,
            table_size: region.map_or(0, |(_, len)| len),
            table_offset: region.map_or(0, |(offset, _)| offset),
            backend_count: vip.backends.iter().filter(|b| b.weight > 0).count() as u32,
        };
        // The VIP's source ranges are in place before its entry points traffic at them.
        self.policy.set_vip_ranges(
            vip_id,
            vip.config.address.is_ipv6(),
            vip.config.source_ranges.as_deref(),
        )?;
        // A new VIP's address is known to the filter before the VIP can be found.
        if old.is_none() {
            self.add_vip_addr(&key)?;
        }
        // The switch: one update of the VIP entry.
        if let Err(e) = self.write_vip_entry(key, meta) {
            if old.is_none() {
                self.release_vip_addr(&key)?;
            }
            return Err(e);
        }
        self.applied.insert(
            key,
            AppliedVip {
                vip_id,
                desired: vip.clone(),
                backend_ids: backend_ids.clone(),
                region,
            },
        );

        if let Some(old) = old {
            if old.region != region
                && let Some((offset, len)) = old.region
            {
                self.regions.free(offset, len);
            }
            for id in old.backend_ids {
                if !backend_ids.contains(&id) {
                    self.retire_backend(id)?;
                }
            }
        }
        Ok(())
    }

    fn remove_vip(&mut self, key: VipKeyOrd) -> Result<(), DataplaneError> {
        if !self.applied.contains_key(&key) {
            return Ok(());
        }
        self.remove_vip_entry(key, self.applied[&key].vip_id)?;
        // Forgotten only once its entry is gone: a failed delete leaves it known and serving.
        let old = self.applied.remove(&key).expect("checked above");
        self.release_vip_addr(&key)?;
        self.policy.clear_vip_ranges(old.vip_id)?;
        if let Some((offset, len)) = old.region {
            self.regions.free(offset, len);
        }
        for id in old.backend_ids {
            self.retire_backend(id)?;
        }
        self.vip_ids.free(old.vip_id);
        Ok(())
    }

    /// Writes a VIP's entry in the VIP map of its family, and its id's entry in the by-id
    /// array of its family: the switch of [`Self::apply_vip`].
    fn write_vip_entry(&mut self, key: VipKeyOrd, meta: VipMeta) -> Result<(), DataplaneError> {
        if key.is_v6() {
            write_family(
                &mut self.vips6,
                &mut self.vip_by_id6,
                V6_MAPS,
                key.to_key6(),
                meta,
            )
        } else {
            write_family(
                &mut self.vips,
                &mut self.vip_by_id,
                V4_MAPS,
                key.to_key(),
                meta,
            )
        }
    }

    /// Clears a VIP id's entry in the by-id array of the VIP's family (once the VIP left its
    /// VIP map, or moved to another id): established flows that name the id find their VIP by
    /// the hash lookup again, or no VIP.
    pub(super) fn clear_vip_by_id(
        &mut self,
        key: VipKeyOrd,
        vip_id: u32,
    ) -> Result<(), DataplaneError> {
        if key.is_v6() {
            clear_by_id(&mut self.vip_by_id6, V6_MAPS, vip_id)
        } else {
            clear_by_id(&mut self.vip_by_id, V4_MAPS, vip_id)
        }
    }

    /// Deletes a VIP's entry from the VIP map of its family, and its id's entry in the by-id
    /// array of its family: the reverse of [`Self::write_vip_entry`].
    fn remove_vip_entry(&mut self, key: VipKeyOrd, vip_id: u32) -> Result<(), DataplaneError> {
        if key.is_v6() {
            self.vips6
                .remove(&key.to_key6())
                .map_err(map_err("delete", V6_MAPS.vips))?;
        } else {
            self.vips
                .remove(&key.to_key())
                .map_err(map_err("delete", V4_MAPS.vips))?;
        }
        self.clear_vip_by_id(key, vip_id)
    }

    /// Every VIP entry of both families, as ordered keys.
    fn live_vips(&self) -> Result<Vec<(VipKeyOrd, VipMeta)>, DataplaneError> {
        let mut live = Vec::new();
        for item in self.vips.iter() {
            let (key, meta) = item.map_err(map_err("iterate", map_names::VIPS))?;
            live.push((dump::key_ord(key), meta));
        }
        for item in self.vips6.iter() {
            let (key, meta) = item.map_err(map_err("iterate", map_names::VIPS6))?;
            live.push((dump::key_ord6(key), meta));
        }
        Ok(live)
    }

    /// Clears a backend's ACTIVE flag (flows pinned to it get rehashed) and frees its id. Only
    /// the flags word changes, so a reader racing with the write sees either the old, complete
    /// entry or an inactive one, never a half-written MAC or address.
    fn retire_backend(&mut self, id: u32) -> Result<(), DataplaneError> {
        let mut entry = self
            .backends
            .get(&id, 0)
            .map_err(map_err("lookup", map_names::BACKENDS))?;
        entry.flags &= !backend_flags::ACTIVE;
        self.backends
            .set(id, entry, 0)
            .map_err(map_err("update", map_names::BACKENDS))?;
        self.backend_ids.free(id);
        Ok(())
    }

    fn vip_addr_key(key: &VipKeyOrd) -> VipAddrKey {
        VipAddrKey {
            addr: key.addr,
            family: key.family,
            _pad: [0; 3],
        }
    }

    /// Counts one more VIP on `key`'s address; the address's first VIP raises its filter
    /// counter before the address is listed.
    fn add_vip_addr(&mut self, key: &VipKeyOrd) -> Result<(), DataplaneError> {
        let addr_key = Self::vip_addr_key(key);
        let count = self.vip_addrs.get(&addr_key, 0).map_or(0, |v| v.vip_count);
        if count == 0 {
            self.add_to_filter(key.addr, 1)?;
        }
        self.vip_addrs
            .insert(
                addr_key,
                VipAddrValue {
                    vip_count: count + 1,
                },
                0,
            )
            .map_err(map_err("update", map_names::VIP_ADDRS))
    }

    /// Counts one VIP less on `key`'s address; after its last VIP the address leaves the list
    /// and then the filter.
    fn release_vip_addr(&mut self, key: &VipKeyOrd) -> Result<(), DataplaneError> {
        let addr_key = Self::vip_addr_key(key);
        let count = self.vip_addrs.get(&addr_key, 0).map_or(0, |v| v.vip_count);
        if count <= 1 {
            self.vip_addrs
                .remove(&addr_key)
                .map_err(map_err("delete", map_names::VIP_ADDRS))?;
            if count == 1 {
                self.add_to_filter(key.addr, -1)?;
            }
            Ok(())
        } else {
            self.vip_addrs
                .insert(
                    addr_key,
                    VipAddrValue {
                        vip_count: count - 1,
                    },
                    0,
                )
                .map_err(map_err("update", map_names::VIP_ADDRS))
        }
    }

    /// Counts one address more (`delta` 1) or less (-1) on the address's filter bit, and sets
    /// or clears the bit when its count leaves or reaches zero (only this process writes it).
    fn add_to_filter(&mut self, addr: [u32; 4], delta: i32) -> Result<(), DataplaneError> {
        let slot = vip_filter_slot(addr);
        let before = self.filter_counts.get(&slot).copied().unwrap_or(0);
        let after = before.saturating_add_signed(delta);
        if after == 0 {
            self.filter_counts.remove(&slot);
        } else {
            self.filter_counts.insert(slot, after);
        }
        if (before == 0) == (after == 0) {
            return Ok(());
        }
        let index = slot / 64;
        let word = self
            .vip_filter
            .get(&index, 0)
            .map_err(map_err("lookup", map_names::VIP_FILTER))?;
        let bit = 1u64 << (slot % 64);
        let word = if after == 0 { word & !bit } else { word | bit };
        self.vip_filter
            .set(index, word, 0)
            .map_err(map_err("update", map_names::VIP_FILTER))
    }

    /// Rebuilds the filter's address counts from the exact address set of adopted maps, and
    /// corrects any bit that disagrees with them.
    pub(super) fn adopt_filter(&mut self) -> Result<(), DataplaneError> {
        self.filter_counts.clear();
        let mut expected: BTreeMap<u32, u64> = BTreeMap::new();
        for item in self.vip_addrs.iter() {
            let (key, _) = item.map_err(map_err("iterate", map_names::VIP_ADDRS))?;
            let slot = vip_filter_slot(key.addr);
            *self.filter_counts.entry(slot).or_default() += 1;
            *expected.entry(slot / 64).or_default() |= 1u64 << (slot % 64);
        }
        for index in 0..VIP_FILTER_WORDS {
            let want = expected.get(&index).copied().unwrap_or(0);
            let have = self
                .vip_filter
                .get(&index, 0)
                .map_err(map_err("lookup", map_names::VIP_FILTER))?;
            if have != want {
                self.vip_filter
                    .set(index, want, 0)
                    .map_err(map_err("update", map_names::VIP_FILTER))?;
            }
        }
        Ok(())
    }
}

/// Runs an XDP program once on `input` (BPF_PROG_TEST_RUN): the action and the length of the
/// frame written to `output`.
pub(crate) fn test_run_xdp(
    program: &mut Xdp,
    name: &'static str,
    input: &[u8],
    output: &mut [u8],
) -> Result<(u32, usize), DataplaneError> {
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(output),
            ..TestRunOptions::default()
        })
        .map_err(|source| DataplaneError::Program {
            action: "test-running",
            program: name,
            source: Box::new(source),
        })?;
    Ok((result.return_value, result.data_size_out as usize))
}

fn lb_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DataplaneError> {
    ebpf.program_mut(program_names::LB)
        .and_then(|p| <&mut Xdp>::try_from(p).ok())
        .ok_or(DataplaneError::Missing("XDP program xlb_lb"))
}

/// The names of one family's VIP map and by-id array, for errors.
#[derive(Clone, Copy)]
struct FamilyMaps {
    vips: &'static str,
    by_id: &'static str,
}

const V4_MAPS: FamilyMaps = FamilyMaps {
    vips: map_names::VIPS,
    by_id: map_names::VIP_BY_ID,
};
const V6_MAPS: FamilyMaps = FamilyMaps {
    vips: map_names::VIPS6,
    by_id: map_names::VIP_BY_ID6,
};

/// Writes a VIP's entry (`key` -> `meta`) in one family's VIP map, then its id's entry in the
/// family's by-id array.
fn write_family<K: Pod>(
    vips: &mut HashMap<MapData, K, VipMeta>,
    by_id: &mut Array<MapData, VipByIdOf<K>>,
    names: FamilyMaps,
    key: K,
    meta: VipMeta,
) -> Result<(), DataplaneError>
where
    VipByIdOf<K>: Pod,
{
    vips.insert(key, meta, 0)
        .map_err(map_err("update", names.vips))?;
    by_id
        .set(meta.vip_id, VipByIdOf { meta, key }, 0)
        .map_err(map_err("update", names.by_id))
}

/// Zeroes an id's entry in one family's by-id array.
fn clear_by_id<K: Pod + Default>(
    by_id: &mut Array<MapData, VipByIdOf<K>>,
    names: FamilyMaps,
    vip_id: u32,
) -> Result<(), DataplaneError>
where
    VipByIdOf<K>: Pod,
{
    by_id
        .set(vip_id, VipByIdOf::default(), 0)
        .map_err(map_err("update", names.by_id))
}
