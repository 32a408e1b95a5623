//! Internet checksum helpers (RFC 1071).

use crate::headers::Ipv4Hdr;

/// Folds a 32-bit one's complement sum into 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Checksum of an IPv4 header without options, with its `check` field taken as zero. The
/// header is summed as native-endian 16-bit words, so the result is stored as is.
#[inline(always)]
pub fn ipv4_header(hdr: &Ipv4Hdr) -> u16 {
    let mut sum: u32 = (u16::from_ne_bytes([hdr.version_ihl, hdr.tos])) as u32;
    sum += hdr.tot_len as u32;
    sum += hdr.id as u32;
    sum += hdr.frag_off as u32;
    sum += (u16::from_ne_bytes([hdr.ttl, hdr.protocol])) as u32;
    sum += hdr.saddr & 0xffff;
    sum += hdr.saddr >> 16;
    sum += hdr.daddr & 0xffff;
    sum += hdr.daddr >> 16;
    !fold(sum)
}

/// A checksum after one 16-bit word it covers changed from `old` to `new` (RFC 1624, eqn. 3).
/// All three are the words as stored (native-endian reads of network-order bytes).
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!check) + u32::from(!old) + u32::from(new))
}
