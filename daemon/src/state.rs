//! The desired state: what the datapath should hold, built from a validated config, with every
//! VIP's Maglev table computed. Pure data: building it touches no map, so a state that fails to
//! build changes nothing.

use std::{collections::BTreeMap, net::IpAddr};

use xlb_common::{VipKey, family, forward_mode};

use crate::{
    config::{Config, ForwardMode, Ipv4Net, MacAddr, VipConfig},
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
    /// An address family the datapath does not handle yet.
    #[error("VIP {vip}: {what} {address} is IPv6, which the datapath does not support yet")]
    Ipv6 {
        /// Name of the VIP.
        vip: String,
        /// "address" or "backend".
        what: &'static str,
        /// The address.
        address: IpAddr,
    },
}

/// Everything the datapath should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredState {
    /// IPIP outer source prefix.
    pub encap_source: Ipv4Net,
    /// VIPs by key; the order is the key order, so applying is deterministic.
    pub vips: BTreeMap<VipKeyOrd, DesiredVip>,
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
    /// The datapath key.
    pub fn to_key(self) -> VipKey {
        VipKey {
            addr: self.addr,
            port: self.port.to_be(),
            proto: self.proto,
            family: self.family,
        }
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
    pub table: Vec<u32>,
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
        let mut vips = BTreeMap::new();
        for vip in &config.vips {
            let (key, desired) = build_vip(vip)?;
            vips.insert(key, desired);
        }
        Ok(DesiredState {
            encap_source: config.encap.source_prefix,
            vips,
        })
    }
}

fn build_vip(vip: &VipConfig) -> Result<(VipKeyOrd, DesiredVip), StateError> {
    if vip.address.is_ipv6() {
        return Err(StateError::Ipv6 {
            vip: vip.name.clone(),
            what: "address",
            address: vip.address,
        });
    }
    if let Some(backend) = vip.backends.iter().find(|b| b.address.is_ipv6()) {
        return Err(StateError::Ipv6 {
            vip: vip.name.clone(),
            what: "backend",
            address: backend.address,
        });
    }
    let (addr, fam) = addr_words(vip.address);
    let key = VipKeyOrd {
        addr,
        port: vip.port,
        proto: vip.protocol.number(),
        family: fam,
    };
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
    let table = if backends.iter().all(|b| b.weight == 0) {
        Vec::new()
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
        maglev::build_table(&input, vip.table_size).map_err(|source| StateError::Maglev {
            vip: vip.name.clone(),
            source,
        })?
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
