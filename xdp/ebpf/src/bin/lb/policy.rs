//! Policy stage: what is dropped before (and instead of) balancing. Every check is guarded by
//! a flag or a rate in [`PolicyConfig`], so a policy left empty costs one array read.
//! Precedence and reasons are documented in docs/policy.md.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_ns,
    maps::{LpmTrie, LruHashMap, lpm_trie::Key},
};
use xlb_common::{
    DropReason, FlowKey, FlowKey6, FlowValue, PolicyConfig, PolicyCounter, TokenBucket, VipMeta,
    VipSourceKey, VipSourceKey6,
    policy::{code_slot, entry_slot, source6, v4_bit, v4_code, v4_entry, window},
    policy_flags, proto,
};
use xlb_ebpf::headers::{IPV4_HLEN, tcp_flags};

use crate::maps::{
    POLICY, POLICY_V4, POLICY_V4_24, POLICY_V4_B16, POLICY_V4_MIX, POLICY_V6, POLICY_VIP,
    POLICY_VIP6, RATE, RATE6, STATS_POLICY, WINDOWS,
};

const NS_PER_SEC: u64 = 1_000_000_000;
/// A bucket idle this long is full again (also bounds the refill arithmetic).
const BUCKET_IDLE_NS: u64 = 10 * NS_PER_SEC;

/// The policy settings: a reference into the map, not a copy (a copy's fields would live in
/// the program's stack frame for the whole packet; the frame's 512 bytes are shared with the
/// calls it makes). The entry of an array map always exists; the error cannot happen.
/// A change the daemon writes while a packet is processed may be seen in part, as with a copy
/// taken during the write.
#[inline(always)]
pub fn settings() -> Result<&'static PolicyConfig, DropReason> {
    POLICY.get(0).ok_or(DropReason::TableMiss)
}

/// The verdict of the global lists for a source's [`v4_code`] (a trie's stored verdict, or
/// `NONE` when it matches no prefix).
#[inline(always)]
fn global_verdict(code: u64, allow_list: bool) -> Result<(), DropReason> {
    match code {
        v4_code::DENY => Err(DropReason::Denied),
        v4_code::NONE if allow_list => Err(DropReason::NotAllowed),
        _ => Ok(()),
    }
}

/// The 2-bit code of entry `index` of an array of codes (`NONE` if unreadable).
#[inline(always)]
fn code_at(words: Option<&u64>, shift: u32) -> u64 {
    words.map_or(v4_code::NONE, |w| (w >> shift) & v4_code::MASK)
}

/// What the global lists say about an IPv4 source (`saddr` as the packet carries it): the /16
/// bitmap, then the /24's entry, then for a mixed /24 its per-address table. Array reads only
/// (inlined by the verifier): a covered source costs the entry's cache line, and a source in
/// a mixed /24 one more, its table's. No trie walk, no hash.
#[inline(always)]
fn v4_code_of(saddr: u32) -> u64 {
    let host = u32::from_be(saddr);
    let (word, bit) = v4_bit(host, 16);
    if POLICY_V4_B16.get(word).is_none_or(|w| w & bit == 0) {
        return v4_code::NONE;
    }
    let (word, shift) = entry_slot(host >> 8);
    let entry = POLICY_V4_24
        .get(word)
        .map_or(0, |w| ((w >> shift) & v4_entry::MASK) as u32);
    if entry < v4_entry::FIRST_TABLE {
        return u64::from(entry);
    }
    // The daemon writes a table before the entry that names it, and reuses a freed table's
    // index only in a later change, so the table read here is this /24's.
    match POLICY_V4_MIX.get(entry - v4_entry::FIRST_TABLE) {
        Some(table) => {
            let (word, shift) = code_slot(host & 0xff);
            code_at(table.get(word as usize), shift)
        }
        // An index past the array (never written so): the trie, the lists' record, still
        // gives the exact verdict.
        None => POLICY_V4
            .get(Key::new(32, saddr))
            .map_or(v4_code::NONE, |&v| u64::from(v)),
    }
}

/// Global lists for an IPv4 source (`saddr` as the packet carries it).
#[inline(always)]
pub fn lists_v4(policy: &PolicyConfig, saddr: u32) -> Result<(), DropReason> {
    if policy.flags & policy_flags::LISTS_V4 != 0 {
        let code = v4_code_of(saddr);
        global_verdict(code, policy.flags & policy_flags::ALLOW_V4 != 0)?;
    }
    Ok(())
}

/// Global lists for the source of a packet to a VIP, given its flow table entry: an entry
/// whose source passed the lists of the current generation skips them (the verdict cannot
/// have changed); otherwise the lists decide and a passing entry is marked with the
/// generation, so the flow's next packets skip them.
#[inline(always)]
pub fn lists_for_flow(
    policy: &PolicyConfig,
    saddr: u32,
    entry: Option<*mut FlowValue>,
) -> Result<(), DropReason> {
    match entry {
        // SAFETY: the pointer comes from a successful lookup of the flow map, whose elements
        // are preallocated and never freed; an entry deleted and reused under us holds another
        // flow's generation, which at worst makes this packet skip or redo the lists as that
        // flow's would.
        Some(entry) if unsafe { (*entry).lists_gen } == policy.lists_gen => Ok(()),
        Some(entry) => {
            lists_v4(policy, saddr)?;
            // SAFETY: as above; the value written is the current generation, a 4-byte store.
            unsafe { (*entry).lists_gen = policy.lists_gen };
            Ok(())
        }
        None => lists_v4(policy, saddr),
    }
}

/// Global lists for an IPv6 source (`saddr` as the packet carries it); returns the settings
/// for the later checks.
#[inline(always)]
pub fn global_v6(saddr: [u32; 4]) -> Result<&'static PolicyConfig, DropReason> {
    let policy = settings()?;
    if policy.flags & policy_flags::LISTS_V6 != 0 {
        let code = POLICY_V6
            .get(Key::new(128, saddr))
            .map_or(v4_code::NONE, |&v| u64::from(v));
        global_verdict(code, policy.flags & policy_flags::ALLOW_V6 != 0)?;
    }
    Ok(policy)
}

/// An IPv4 fragment addressed to a VIP: dropped, or passed when the policy says so.
#[inline(always)]
pub fn fragment(policy: &PolicyConfig) -> Result<u32, DropReason> {
    if policy.flags & policy_flags::PASS_FRAGMENTS != 0 {
        Ok(xdp_action::XDP_PASS)
    } else {
        Err(DropReason::Fragment)
    }
}

/// IPv4 options on a packet to a VIP: dropped when the policy says so.
#[inline(always)]
pub fn options(policy: &PolicyConfig, header_len: usize) -> Result<(), DropReason> {
    if header_len > IPV4_HLEN && policy.flags & policy_flags::DROP_OPTIONS != 0 {
        return Err(DropReason::Ipv4Options);
    }
    Ok(())
}

/// A packet to a VIP address that no VIP serves (port, or a protocol other than TCP/UDP).
/// ICMP always passes: its errors (fragmentation needed, unreachable) keep connections working.
#[inline(always)]
pub fn unserved(policy: &PolicyConfig, protocol: u8) -> Result<u32, DropReason> {
    if protocol == proto::ICMP || policy.flags & policy_flags::DROP_UNSERVED == 0 {
        Ok(xdp_action::XDP_PASS)
    } else {
        Err(DropReason::Unserved)
    }
}

/// Checks on a packet for a VIP: TCP sanity, the VIP's source ranges, the per-source rate of
/// new connections. `tcp` is the TCP header's data offset byte and flags, as the caller read
/// them (None for UDP).
#[inline(always)]
pub fn vip(
    policy: &PolicyConfig,
    vip: &VipMeta,
    flow: &FlowKey,
    tcp: Option<(u8, u8)>,
) -> Result<(), DropReason> {
    let syn = tcp_sane(tcp)?;
    if policy.flags & policy_flags::VIP_RANGES != 0 {
        let key = VipSourceKey {
            vip_id: vip.vip_id,
            addr: flow.src,
        };
        in_vip_ranges(&POLICY_VIP, 64, key)?;
    }
    if syn && policy.source_rate != 0 && !take_token(&RATE, policy, &flow.src) {
        return Err(DropReason::RateLimited);
    }
    Ok(())
}

/// The checks of [`vip`] after TCP sanity, for a packet to an IPv6 VIP: the VIP's source ranges
/// (`XLB_POL_VIP6`), then for a SYN the token bucket of the source's /64. `opens_connection`
/// is what [`tcp_sane`] returned.
#[inline(always)]
pub fn vip6(
    policy: &PolicyConfig,
    vip: &VipMeta,
    flow: &FlowKey6,
    opens_connection: bool,
) -> Result<(), DropReason> {
    if policy.flags & policy_flags::VIP_RANGES != 0 {
        let key = VipSourceKey6 {
            vip_id: vip.vip_id,
            addr: flow.src,
        };
        in_vip_ranges(&POLICY_VIP6, 160, key)?;
    }
    if opens_connection
        && policy.source_rate != 0
        && !take_token(&RATE6, policy, &source6(flow.src))
    {
        return Err(DropReason::RateLimited);
    }
    Ok(())
}

/// A VIP's source ranges asked for a (VIP, source) key of `bits` bits (the VIP id and the whole
/// source) in the trie of the VIP's family: no matching range is `vip_source_denied`.
#[inline(always)]
fn in_vip_ranges<K>(ranges: &LpmTrie<K, u32>, bits: u32, key: K) -> Result<(), DropReason> {
    match ranges.get(Key::new(bits, key)) {
        Some(_) => Ok(()),
        None => Err(DropReason::VipSourceDenied),
    }
}

/// TCP sanity (data offset, flag combination) of a packet to a VIP of either family; true
/// when it opens a connection (SYN without ACK). `tcp` as in [`vip`].
#[inline(always)]
pub fn tcp_sane(tcp: Option<(u8, u8)>) -> Result<bool, DropReason> {
    let Some((doff, flags)) = tcp else {
        return Ok(false);
    };
    if doff >> 4 < 5 || bad_tcp_flags(flags) {
        return Err(DropReason::TcpBadFlags);
    }
    Ok(opens_connection(tcp))
}

/// Whether a packet opens a TCP connection: a SYN without ACK (`tcp`: the data offset byte and
/// the flags, for TCP). Its flow skips the flow table's lookup (`balance::established`).
#[inline(always)]
pub fn opens_connection(tcp: Option<(u8, u8)>) -> bool {
    tcp.is_some_and(|(_, flags)| flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN)
}

/// Flag combinations no TCP stack sends: none at all (null scan), SYN with FIN or RST, FIN
/// without ACK (FIN and Xmas scans).
#[inline(always)]
fn bad_tcp_flags(flags: u8) -> bool {
    let syn = flags & tcp_flags::SYN != 0;
    flags & 0x3f == 0
        || (syn && flags & (tcp_flags::FIN | tcp_flags::RST) != 0)
        || (flags & tcp_flags::FIN != 0 && flags & tcp_flags::ACK == 0)
}

/// Takes a token from the source's bucket in `buckets` (`XLB_RATE` keyed by IPv4 address,
/// `XLB_RATE6` by IPv6 /64); false when it is empty. Buckets live in an LRU map of fixed size.
/// Two CPUs updating one bucket at once may each take the same token: the limit is
/// approximate by at most one token per CPU, and never blocks.
#[inline(always)]
fn take_token<K>(buckets: &LruHashMap<K, TokenBucket>, policy: &PolicyConfig, source: &K) -> bool {
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(bucket) = buckets.get_ptr_mut(source) else {
        let fresh = TokenBucket {
            last_ns: now,
            tokens: policy.source_burst.saturating_sub(1),
            _pad: 0,
        };
        // A failed insert only forgets this source's state: let the packet through.
        let _ = buckets.insert(source, fresh, 0);
        return true;
    };
    // SAFETY: the pointer comes from a successful lookup; the LRU may recycle the element
    // under us, which at worst gives another source's bucket one more or one fewer token.
    let bucket = unsafe { &mut *bucket };
    let elapsed = now.saturating_sub(bucket.last_ns);
    if elapsed >= BUCKET_IDLE_NS {
        bucket.tokens = policy.source_burst;
        bucket.last_ns = now;
    } else {
        let refill = elapsed * u64::from(policy.source_rate) / NS_PER_SEC;
        if refill > 0 {
            let tokens = u64::from(bucket.tokens) + refill;
            bucket.tokens = tokens.min(u64::from(policy.source_burst)) as u32;
            bucket.last_ns = now;
        }
    }
    if bucket.tokens == 0 {
        return false;
    }
    bucket.tokens -= 1;
    true
}

/// Counts one event of a per-CPU window of one second; false once `limit` events have passed
/// in it. The clock is read only when a window opens and once the budget is spent (then at
/// every 64th refusal): events under the budget and most of a flood past it cost no clock
/// read, which in a virtual machine is the most expensive step of the check. A window ends
/// one second after it opened, noticed at the first event past the budget after that (or
/// within 64 more in a flood), so no more than `limit` events pass in any window.
#[inline(always)]
pub fn within_rate(index: u32, limit: u32) -> bool {
    let Some(w) = WINDOWS.get_ptr_mut(index) else {
        return false;
    };
    // SAFETY: this CPU's own slot, written only by this program on this CPU.
    let w = unsafe { &mut *w };
    let limit = u64::from(limit);
    if w.start_ns == 0 {
        // SAFETY: the helper has no preconditions.
        w.start_ns = unsafe { bpf_ktime_get_ns() };
        w.count = 0;
    }
    if w.count < limit {
        w.count += 1;
        return true;
    }
    let refused = w.count - limit;
    w.count += 1;
    if refused % 64 != 0 {
        return false;
    }
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.saturating_sub(w.start_ns) >= NS_PER_SEC {
        w.start_ns = now;
        w.count = 1;
        return true;
    }
    false
}

/// Whether a new flow may be added to the flow table: not while this CPU is above the
/// flow-insert ceiling (the packet is still balanced; the flow just is not remembered).
/// `policy` is the settings word the packet's checks already read.
#[inline(always)]
pub fn may_remember(policy: &PolicyConfig) -> bool {
    let limit = policy.flow_insert_rate;
    if limit == 0 || within_rate(window::FLOW_INSERT, limit) {
        return true;
    }
    count(PolicyCounter::FlowNotRemembered);
    false
}

/// Counts a policy event.
#[inline(always)]
pub fn count(counter: PolicyCounter) {
    if let Some(value) = STATS_POLICY.get_ptr_mut(counter as u32) {
        // SAFETY: this CPU's own slot.
        unsafe { *value += 1 };
    }
}
