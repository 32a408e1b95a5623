//! The desired state: what the datapath should hold, built from a validated config, with every
//! VIP's Maglev table computed. Pure data: building it touches no map, so a state that fails to
//! build changes nothing.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use xlb_common::{VipKey, VipKey6, family, forward_mode};

use crate::{
    config::{Cidr, Config, EventsConfig, ForwardMode, Ipv4Net, MacAddr, PolicyConfig, VipConfig},
    maglev::{self, MaglevBackend, MaglevError},
};

/// Why a desired state could not be built from a config that passed validation.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The Maglev table of a VIP could not be built.
    #[error("VIP {vip}: {source}")]
    Maglev {
        /// Name of the VIP.
        vip: String,
        /// What the table builder said.
        #[source]
        source: MaglevError,
    },
}

/// Everything the datapath should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredState {
    /// IPIP outer source prefix.
    pub encap_source: Ipv4Net,
    /// Outer IPv6 source prefix of IPv6 encapsulation, if configured.
    pub encap_source_v6: Option<Cidr>,
    /// `encap.mtu` (`None`: the interface's).
    pub encap_mtu: Option<u16>,
    /// `encap.on_too_big`.
    pub on_too_big: crate::config::TooBig,
    /// VIPs by key; the order is the key order, so applying is deterministic.
    pub vips: BTreeMap<VipKeyOrd, Arc<DesiredVip>>,
    /// Global policy (lists, actions, rates); per-VIP source ranges are in each VIP's config.
    pub policy: Arc<PolicyConfig>,
    /// Which events the datapath reports.
    pub events: EventsConfig,
}

/// A [`VipKey`] with a total order (for deterministic maps and output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VipKeyOrd {
    /// Address words, network byte order.
    pub addr: [u32; 4],
    /// Port, host byte order.
    pub port: u16,
    /// IP protocol.
    pub proto: u8,
    /// Address family.
    pub family: u8,
}

impl VipKeyOrd {
    /// The datapath key of an IPv4 VIP (`XLB_VIPS`): the first address word is the address.
    pub fn to_key(self) -> VipKey {
        VipKey {
            addr: self.addr[0],
            port: self.port.to_be(),
            proto: self.proto,
            _pad: 0,
        }
    }
}

impl VipKeyOrd {
    /// The datapath key of an IPv6 VIP (`XLB_VIPS6`).
    pub fn to_key6(self) -> VipKey6 {
        VipKey6 {
            addr: self.addr,
            port: self.port.to_be(),
            proto: self.proto,
            _pad: 0,
        }
    }

    /// Whether this is an IPv6 VIP (its entry is in `XLB_VIPS6`).
    pub fn is_v6(self) -> bool {
        self.family == family::V6
    }
}

/// One VIP as the datapath should serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredVip {
    /// Operator's name for the VIP.
    pub name: String,
    /// The VIP's configuration, as validated.
    pub config: VipConfig,
    /// Forwarding mode ([`forward_mode`]).
    pub mode: u32,
    /// Backends, in config order.
    pub backends: Vec<DesiredBackend>,
    /// Maglev table: each slot is an index into `backends`. Empty when no backend has weight.
    /// Shared: an unchanged VIP keeps the table of the previous state instead of rebuilding it.
    pub table: Arc<[u32]>,
}

/// One backend as the datapath should know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredBackend {
    /// Operator's label.
    pub name: String,
    /// Address (IPIP outer destination).
    pub address: IpAddr,
    /// Destination MAC of its frames.
    pub mac: MacAddr,
    /// Weight; 0 = drained.
    pub weight: u32,
}

impl DesiredVip {
    /// Whether two states of a VIP are the same. Everything is derived from the VIP's config
    /// (the table deterministically), so comparing configs is enough, and cheap.
    pub fn same_as(&self, other: &DesiredVip) -> bool {
        std::ptr::eq(self, other) || self.config == other.config
    }

    /// Whether `other`'s table, as backend identities slot by slot, equals this one's: then
    /// the slots written in the datapath stay valid.
    pub fn same_slots(&self, other: &DesiredVip) -> bool {
        (Arc::ptr_eq(&self.table, &other.table) || self.table == other.table)
            && self.backends.len() == other.backends.len()
            && self
                .backends
                .iter()
                .zip(&other.backends)
                .all(|(a, b)| a.identity() == b.identity())
    }
}

impl DesiredBackend {
    /// What identifies the backend's datapath entry: a change of either gives a new entry.
    pub fn identity(&self) -> (IpAddr, MacAddr) {
        (self.address, self.mac)
    }
}

/// Address words as the datapath stores them (network byte order).
pub fn addr_words(address: IpAddr) -> ([u32; 4], u8) {
    match address {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], family::V4),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([word(0), word(4), word(8), word(12)], family::V6)
        }
    }
}

impl DesiredState {
    /// Builds the state a config asks for, Maglev tables included.
    pub fn from_config(config: &Config) -> Result<DesiredState, StateError> {
        Self::from_config_reusing(config, None)
    }

    /// As [`DesiredState::from_config`], taking every VIP whose config is unchanged from
    /// `previous` instead of rebuilding its Maglev table: a change to one VIP of 10,000 builds
    /// one table.
    pub fn from_config_reusing(
        config: &Config,
        previous: Option<&DesiredState>,
    ) -> Result<DesiredState, StateError> {
        // Both sides in key order, walked together: one pass, no tree lookup per VIP (at 10,000
        // VIPs the lookups were most of the time of a reload that changes one VIP).
        let mut keyed: Vec<(VipKeyOrd, &VipConfig)> =
            config.vips.iter().map(|vip| (vip_key(vip), vip)).collect();
        keyed.sort_by_key(|(key, _)| *key);
        let previous_state = previous;
        let previous = previous
            .into_iter()
            .flat_map(|p| p.vips.iter().map(|(key, vip)| (*key, vip)));
        let mut pairs = Vec::with_capacity(keyed.len());
        merge_by_key(keyed, previous, |key, new, old| {
            if let Some(new) = new {
                pairs.push((key, new, old));
            }
        });
        // Comparing configs is most of the work when one VIP of 10,000 changed: shared out
        // like the table builds.
        let decided = on_threads(&pairs, PARALLEL_MIN_COMPARISONS, |(key, new, old)| {
            old.filter(|old| old.config == **new)
                .map(|old| (*key, Arc::clone(old)))
                .ok_or(*new)
        });
        let mut reused = Vec::with_capacity(decided.len());
        let mut to_build = Vec::new();
        for decision in decided {
            match decision {
                Ok(kept) => reused.push(kept),
                Err(new) => to_build.push(new),
            }
        }
        let built = build_vips(&to_build)?
            .into_iter()
            .map(|(key, vip)| (key, Arc::new(vip)));
        let policy = match previous_state {
            Some(previous) if *previous.policy == config.policy => Arc::clone(&previous.policy),
            _ => Arc::new(config.policy.clone()),
        };
        Ok(DesiredState {
            encap_source: config.encap.source_prefix,
            encap_source_v6: config.encap.source_prefix_v6,
            encap_mtu: config.encap.mtu,
            on_too_big: config.encap.on_too_big,
            // Two runs in key order: collecting sorts them with one merge.
            vips: reused.into_iter().chain(built).collect(),
            policy,
            events: config.events,
        })
    }
}

/// Walks two sequences sorted by key together and calls `visit` once per key with the item of
/// each side that has it. Equal keys on one side (which validation rules out) are visited one
/// by one.
pub fn merge_by_key<K: Ord + Copy, A, B>(
    left: impl IntoIterator<Item = (K, A)>,
    right: impl IntoIterator<Item = (K, B)>,
    mut visit: impl FnMut(K, Option<A>, Option<B>),
) {
    let mut left = left.into_iter().peekable();
    let mut right = right.into_iter().peekable();
    loop {
        let order = match (left.peek(), right.peek()) {
            (None, None) => return,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((l, _)), Some((r, _))) => l.cmp(r),
        };
        match order {
            std::cmp::Ordering::Less => {
                let (key, a) = left.next().expect("peeked");
                visit(key, Some(a), None);
            }
            std::cmp::Ordering::Greater => {
                let (key, b) = right.next().expect("peeked");
                visit(key, None, Some(b));
            }
            std::cmp::Ordering::Equal => {
                let (key, a) = left.next().expect("peeked");
                let (_, b) = right.next().expect("peeked");
                visit(key, Some(a), Some(b));
            }
        }
    }
}

/// Below this many VIPs one thread builds them all: starting threads would cost more than the
/// tables (about 0.2 ms each).
const PARALLEL_MIN_VIPS: usize = 16;

/// Below this many VIPs one thread compares them all: a comparison takes well under a
/// microsecond, starting a thread tens of microseconds.
const PARALLEL_MIN_COMPARISONS: usize = 2048;

/// Builds every VIP, in config order; the error reported is the first in config order.
fn build_vips(vips: &[&VipConfig]) -> Result<Vec<(VipKeyOrd, DesiredVip)>, StateError> {
    on_threads(vips, PARALLEL_MIN_VIPS, |vip| build_vip(vip))
        .into_iter()
        .collect()
}

/// `f` of every item, in order, on every CPU once there are `min_items`. Each item is independent of the others, so with many items the
/// work is split into one contiguous run per CPU and the results are joined in order: the same
/// result as one thread gives.
fn on_threads<T: Sync, R: Send>(
    items: &[T],
    min_items: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    if items.len() < min_items {
        return items.iter().map(&f).collect();
    }
    // Asked only when there is enough to share: it reads cgroup files (tens of microseconds).
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    if threads < 2 {
        return items.iter().map(&f).collect();
    }
    let per_thread = items.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = items
            .chunks(per_thread)
            .map(|part| scope.spawn(|| part.iter().map(&f).collect::<Vec<_>>()))
            .collect();
        let mut all = Vec::with_capacity(items.len());
        for part in parts {
            all.extend(
                part.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            );
        }
        all
    })
}

/// The datapath key of a VIP.
fn vip_key(vip: &VipConfig) -> VipKeyOrd {
    let (addr, family) = addr_words(vip.address);
    VipKeyOrd {
        addr,
        port: vip.port,
        proto: vip.protocol.number(),
        family,
    }
}

fn build_vip(vip: &VipConfig) -> Result<(VipKeyOrd, DesiredVip), StateError> {
    let key = vip_key(vip);
    let backends: Vec<DesiredBackend> = vip
        .backends
        .iter()
        .map(|b| DesiredBackend {
            name: b.name.clone(),
            address: b.address,
            mac: b.mac,
            weight: b.weight,
        })
        .collect();
    let table: Arc<[u32]> = if backends.iter().all(|b| b.weight == 0) {
        Arc::from([])
    } else {
        let keys: Vec<String> = backends.iter().map(|b| b.address.to_string()).collect();
        let input: Vec<MaglevBackend<'_>> = keys
            .iter()
            .zip(&backends)
            .map(|(key, b)| MaglevBackend {
                key: key.as_bytes(),
                weight: b.weight,
            })
            .collect();
        maglev::build_table(&input, vip.table_size)
            .map_err(|source| StateError::Maglev {
                vip: vip.name.clone(),
                source,
            })?
            .into()
    };
    let mode = match vip.mode {
        ForwardMode::L2 => forward_mode::L2,
        ForwardMode::Ipip => forward_mode::IPIP,
    };
    Ok((
        key,
        DesiredVip {
            name: vip.name.clone(),
            config: vip.clone(),
            mode,
            backends,
            table,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AllDown, BackendConfig, HealthConfig, Protocol};

    fn vip(i: usize, table_size: u32) -> VipConfig {
        let address = |host: u8| IpAddr::from([10, (i / 256) as u8, (i % 256) as u8, host]);
        VipConfig {
            name: format!("vip{i}"),
            address: address(1),
            port: 80,
            protocol: Protocol::Tcp,
            mode: ForwardMode::L2,
            table_size,
            health: HealthConfig::defaults_for(Protocol::Tcp, 80, ForwardMode::L2),
            on_all_down: AllDown::default(),
            backends: (2..5)
                .map(|host| BackendConfig {
                    name: format!("be{host}"),
                    address: address(host),
                    mac: MacAddr([2, 0, 0, 0, 0, host]),
                    weight: u32::from(host),
                    health: None,
                })
                .collect(),
            source_ranges: None,
        }
    }

    #[test]
    fn merge_by_key_visits_every_key_once_with_both_sides() {
        let left = [(1, 'a'), (3, 'c'), (4, 'd'), (9, 'i')];
        let right = [(2, "B"), (3, "C"), (9, "I"), (10, "J")];
        let mut seen = Vec::new();
        merge_by_key(left, right, |key, l, r| seen.push((key, l, r)));
        assert_eq!(
            seen,
            [
                (1, Some('a'), None),
                (2, None, Some("B")),
                (3, Some('c'), Some("C")),
                (4, Some('d'), None),
                (9, Some('i'), Some("I")),
                (10, None, Some("J")),
            ]
        );
    }

    #[test]
    fn a_rebuild_reuses_unchanged_vips_and_rebuilds_changed_ones() {
        let config = |weight: u32| Config {
            vips: (0..40)
                .rev()
                .map(|i| {
                    let mut v = vip(i, 251);
                    if i == 7 {
                        v.backends[0].weight = weight;
                    }
                    v
                })
                .collect(),
            interface: crate::config::InterfaceConfig {
                name: "test0".to_owned(),
                attach_mode: crate::config::AttachMode::Auto,
            },
            limits: crate::config::Limits::default(),
            encap: crate::config::EncapConfig::default(),
            policy: crate::config::PolicyConfig::default(),
            events: crate::config::EventsConfig::default(),
        };
        let first = DesiredState::from_config(&config(2)).expect("valid");
        let second = DesiredState::from_config_reusing(&config(9), Some(&first)).expect("valid");
        assert_eq!(
            second,
            DesiredState::from_config(&config(9)).expect("valid")
        );
        let changed = vip_key(&vip(7, 251));
        for (key, vip) in &second.vips {
            assert_eq!(
                Arc::ptr_eq(vip, &first.vips[key]),
                *key != changed,
                "{}",
                vip.name
            );
        }
    }

    #[test]
    fn a_build_on_many_threads_equals_one_on_one_thread() {
        let mut vips: Vec<VipConfig> = (0..3 * PARALLEL_MIN_VIPS).map(|i| vip(i, 251)).collect();
        let serial: Vec<_> = vips.iter().map(|v| build_vip(v).expect("valid")).collect();
        assert_eq!(
            build_vips(&vips.iter().collect::<Vec<_>>()).expect("valid"),
            serial
        );

        // The error reported is the first in config order, whichever thread finds it.
        for i in [40, 5, 30] {
            vips[i].table_size = 250;
        }
        match build_vips(&vips.iter().collect::<Vec<_>>()) {
            Err(StateError::Maglev { vip, .. }) => assert_eq!(vip, "vip5"),
            other => panic!("expected a Maglev error, got {other:?}"),
        }
    }
}
