//! Address types the standard library lacks: MAC addresses and IPv4 prefixes.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// How a service is written everywhere an operator reads one (CLI, stats file, API errors):
/// `10.0.0.100:80/tcp`, `[2001:db8::10]:80/tcp`; port 0 (every port) as `*`.
pub fn service_label(address: &str, port: u16, protocol: &str) -> String {
    let address = if address.contains(':') {
        format!("[{address}]")
    } else {
        address.to_owned()
    };
    let port = if port == 0 {
        "*".to_owned()
    } else {
        port.to_string()
    };
    format!("{address}:{port}/{protocol}")
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The all-ones broadcast address.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// True for group addresses (the I/G bit of the first octet), broadcast included.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// True for ff:ff:ff:ff:ff:ff.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// True for 00:00:00:00:00:00.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

/// Why a string is not a [`MacAddr`] or an [`Ipv4Net`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetParseError {
    /// Not six colon-separated pairs of hex digits.
    #[error("`{0}` is not a MAC address (expected six hex octets like 02:00:00:00:00:01)")]
    Mac(String),
    /// Not `a.b.c.d/len`.
    #[error("`{0}` is not an IPv4 prefix (expected a.b.c.d/len, like 172.16.0.0/16)")]
    Prefix(String),
    /// The prefix length is above 32.
    #[error("prefix length /{0} is out of range (an IPv4 prefix length is at most 32)")]
    PrefixLen(u8),
    /// Bits below the prefix length are set, so the text does not name a network.
    #[error("`{text}` has host bits set; the network is {network}")]
    HostBits {
        /// The text as written.
        text: String,
        /// The network the text lies in.
        network: Ipv4Net,
    },
}

impl FromStr for MacAddr {
    type Err = NetParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NetParseError::Mac(s.to_owned());
        let mut octets = [0u8; 6];
        let mut parts = s.split(':');
        for octet in &mut octets {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(octets))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// An IPv4 network: an address masked to its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    /// The network address, host bits zero.
    pub addr: Ipv4Addr,
    /// Number of leading network bits, 0..=32.
    pub prefix_len: u8,
}

impl Ipv4Net {
    /// The network of `addr` with `prefix_len` leading bits (host bits are cleared).
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Self, NetParseError> {
        if prefix_len > 32 {
            return Err(NetParseError::PrefixLen(prefix_len));
        }
        Ok(Ipv4Net {
            addr: Ipv4Addr::from_bits(addr.to_bits() & Self::mask_bits(prefix_len)),
            prefix_len,
        })
    }

    /// The netmask as a number, e.g. 0xffff_0000 for /16.
    pub fn mask(&self) -> u32 {
        Self::mask_bits(self.prefix_len)
    }

    /// True when `addr` lies inside this network.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        addr.to_bits() & self.mask() == self.addr.to_bits()
    }

    fn mask_bits(prefix_len: u8) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(prefix_len))
            .unwrap_or(0)
    }
}

impl FromStr for Ipv4Net {
    type Err = NetParseError;

    /// Parses `a.b.c.d/len`; host bits must be zero so the text says what it means.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NetParseError::Prefix(s.to_owned());
        let (addr, len) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        if len.is_empty() || len.len() > 2 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let len: u8 = len.parse().map_err(|_| bad())?;
        let network = Ipv4Net::new(addr, len)?;
        if network.addr != addr {
            return Err(NetParseError::HostBits {
                text: s.to_owned(),
                network,
            });
        }
        Ok(network)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl Serialize for Ipv4Net {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parses_and_displays_lowercase() {
        let mac: MacAddr = "02:AB:cd:00:01:ff".parse().unwrap();
        assert_eq!(mac, MacAddr([0x02, 0xab, 0xcd, 0x00, 0x01, 0xff]));
        assert_eq!(mac.to_string(), "02:ab:cd:00:01:ff");
    }

    #[test]
    fn mac_rejects_malformed_text() {
        for text in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "02-00-00-00-00-01",
            "2:00:00:00:00:01",
            "002:00:00:00:00:01",
            "0g:00:00:00:00:01",
            "+2:00:00:00:00:01",
            "02:00:00:00:00:01:",
        ] {
            assert_eq!(
                text.parse::<MacAddr>(),
                Err(NetParseError::Mac(text.to_owned())),
                "{text}"
            );
        }
    }

    #[test]
    fn mac_classes() {
        assert!(MacAddr::BROADCAST.is_broadcast());
        assert!(MacAddr::BROADCAST.is_multicast());
        assert!(MacAddr([0x01, 0, 0x5e, 0, 0, 1]).is_multicast());
        assert!(!MacAddr([0x02, 0, 0, 0, 0, 1]).is_multicast());
        assert!(MacAddr([0; 6]).is_zero());
    }

    #[test]
    fn prefix_parses_and_displays() {
        let net: Ipv4Net = "172.16.0.0/16".parse().unwrap();
        assert_eq!(net.addr, Ipv4Addr::new(172, 16, 0, 0));
        assert_eq!(net.prefix_len, 16);
        assert_eq!(net.mask(), 0xffff_0000);
        assert_eq!(net.to_string(), "172.16.0.0/16");
        assert!(net.contains(Ipv4Addr::new(172, 16, 200, 1)));
        assert!(!net.contains(Ipv4Addr::new(172, 17, 0, 1)));
        let host: Ipv4Net = "10.0.0.1/32".parse().unwrap();
        assert_eq!(host.mask(), u32::MAX);
        let all: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        assert_eq!(all.mask(), 0);
    }

    #[test]
    fn prefix_rejects_host_bits_and_bad_lengths() {
        assert_eq!(
            "172.16.0.1/16".parse::<Ipv4Net>(),
            Err(NetParseError::HostBits {
                text: "172.16.0.1/16".to_owned(),
                network: Ipv4Net::new(Ipv4Addr::new(172, 16, 0, 0), 16).unwrap(),
            })
        );
        assert_eq!(
            "10.0.0.0/33".parse::<Ipv4Net>(),
            Err(NetParseError::PrefixLen(33))
        );
        for text in [
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0/8",
            "10.0.0.0/+8",
            "10.0.0.0/008",
        ] {
            assert_eq!(
                text.parse::<Ipv4Net>(),
                Err(NetParseError::Prefix(text.to_owned())),
                "{text}"
            );
        }
    }

    #[test]
    fn new_masks_the_address() {
        let net = Ipv4Net::new(Ipv4Addr::new(10, 1, 2, 3), 8).unwrap();
        assert_eq!(net.to_string(), "10.0.0.0/8");
    }

    #[test]
    fn serializes_as_strings() {
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        assert_eq!(
            serde_json::to_string(&mac).unwrap(),
            "\"02:00:00:00:00:01\""
        );
        let net: Ipv4Net = "172.16.0.0/16".parse().unwrap();
        assert_eq!(serde_json::to_string(&net).unwrap(), "\"172.16.0.0/16\"");
    }
}
