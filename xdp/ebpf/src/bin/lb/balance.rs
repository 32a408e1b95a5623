//! Load-balancing stage: VIP lookup, flow table, Maglev table.

use core::ptr::{addr_of_mut, write_volatile};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    maps::{Array, HashMap},
};
use xlb_common::{
    Backend, DropReason, FLOW_WAYS, FlowKey, FlowKey6, FlowSet, FlowSlot, FlowValue, LbCounter,
    PolicyConfig, VipById, VipById6, VipByIdOf, VipKey, VipKey6, VipMeta, backend_flags,
    flow_set_index,
    hash::{flow_hash, flow_hash6},
};

use crate::{
    maps::{
        BACKENDS, CLOCK, FLOW_SETS, FLOWS6, MAGLEV, VIP_BY_ID, VIP_BY_ID6, VIPS, VIPS6,
        XLB_FLOW_SET_COUNT,
    },
    stats,
};

/// A flow's 5-tuple of either family: its hash and its family's flow table. The rest of the
/// balancing (Maglev table, backends) is the same for both.
pub trait Flow: Sized + 'static {
    /// The flow hash ([`flow_hash`] or [`flow_hash6`]).
    fn hash(&self) -> u32;
    /// The flow's entry in its family's flow table, if it is remembered: a pointer into the
    /// table (for [`established`] to mark it seen and the policy to mark its lists' generation).
    fn entry(&self, hash: &mut Option<u32>) -> Option<*mut FlowValue>;
    /// Stores a new flow's entry in its family's flow table, counting what it cost.
    fn remember(&self, value: FlowValue, hash: &mut Option<u32>);

    /// The family's VIP key ([`VipKey`] or [`VipKey6`]).
    type VipKey: Copy + PartialEq + 'static;
    /// The family's VIP map (`XLB_VIPS`, `XLB_VIPS6`).
    fn vips() -> &'static HashMap<Self::VipKey, VipMeta>;
    /// The family's VIPs by id (`XLB_VIP_BY_ID`, `XLB_VIP_BY_ID6`).
    fn vips_by_id() -> &'static Array<VipByIdOf<Self::VipKey>>;
    /// The key of the VIP for this flow's destination and protocol, with its destination port
    /// or, `any_port`, port 0 (a VIP serving every port).
    fn vip_key(&self, any_port: bool) -> Self::VipKey;
}

impl Flow for FlowKey {
    #[inline(always)]
    fn hash(&self) -> u32 {
        flow_hash(self)
    }

    type VipKey = VipKey;
    #[inline(always)]
    fn vips() -> &'static HashMap<VipKey, VipMeta> {
        &VIPS
    }
    #[inline(always)]
    fn vips_by_id() -> &'static Array<VipById> {
        &VIP_BY_ID
    }
    #[inline(always)]
    fn vip_key(&self, any_port: bool) -> VipKey {
        VipKey {
            addr: self.dst,
            port: if any_port { 0 } else { self.dport },
            proto: self.proto,
            _pad: 0,
        }
    }

    /// The slot of the flow's set whose key is the flow's: the ways are compared in order,
    /// all in the set's two cache lines.
    #[inline(always)]
    fn entry(&self, hash: &mut Option<u32>) -> Option<*mut FlowValue> {
        let set = flow_set(cached_hash(self, hash))?;
        for way in 0..FLOW_WAYS {
            // SAFETY: `set` points at an element of an array map (valid, aligned memory of its
            // value size for the program's lifetime); `way` is below the slots' length.
            let slot = unsafe { addr_of_mut!((*set).slots[way]) };
            if holds(slot, self) {
                // SAFETY: as above.
                return Some(unsafe { addr_of_mut!((*slot).value) });
            }
        }
        None
    }

    /// Takes, in this order: the slot already holding the flow's key (a SYN reusing a
    /// remembered flow's ports, or a flow whose backend is gone: `flow_replaced`), the set's
    /// first free slot, or the slot seen least recently (`flow_displaced`). The key is written
    /// before the value: a packet of the displaced flow on another CPU then finds no match
    /// and is balanced anew, except in the instant between its key compare and its copy of
    /// the value, where it may take the new flow's backend; `choose` still checks that backend
    /// against the packet's VIP, so the packet at worst reaches another backend of its own
    /// service, once, as it would after a backend change.
    #[inline(always)]
    fn remember(&self, value: FlowValue, hash: &mut Option<u32>) {
        let Some(set) = flow_set(cached_hash(self, hash)) else {
            stats::lb(LbCounter::FlowInsertFailed);
            return;
        };
        // Way indexes; FLOW_WAYS means none found. (Not `Option`s: stack is scarce here.)
        let mut same = FLOW_WAYS;
        let mut free = FLOW_WAYS;
        let mut oldest = 0;
        let mut oldest_seen = u32::MAX;
        for way in 0..FLOW_WAYS {
            // SAFETY: as in `entry`.
            let slot = unsafe { addr_of_mut!((*set).slots[way]) };
            if holds(slot, self) {
                same = way;
                break;
            }
            // SAFETY: as above.
            let (proto, seen_s) = unsafe { ((*slot).key.proto, (*slot).value.seen_s) };
            if proto == 0 {
                if free == FLOW_WAYS {
                    free = way;
                }
            } else if seen_s < oldest_seen {
                oldest = way;
                oldest_seen = seen_s;
            }
        }
        let way = if same < FLOW_WAYS {
            stats::lb(LbCounter::FlowReplaced);
            same
        } else if free < FLOW_WAYS {
            free
        } else {
            stats::lb(LbCounter::FlowDisplaced);
            oldest
        };
        // SAFETY: as in `entry`; volatile, field by field, so that the key's stores precede
        // the value's and nothing is copied through the stack.
        unsafe {
            let slot = addr_of_mut!((*set).slots[way]);
            write_volatile(addr_of_mut!((*slot).key.src), self.src);
            write_volatile(addr_of_mut!((*slot).key.dst), self.dst);
            write_volatile(addr_of_mut!((*slot).key.sport), self.sport);
            write_volatile(addr_of_mut!((*slot).key.dport), self.dport);
            write_volatile(addr_of_mut!((*slot).key.proto), self.proto);
            write_volatile(addr_of_mut!((*slot).key._pad), 0);
            write_volatile(addr_of_mut!((*slot).key._pad2), 0);
            write_volatile(addr_of_mut!((*slot).value.backend_id), value.backend_id);
            write_volatile(addr_of_mut!((*slot).value.lists_gen), value.lists_gen);
            write_volatile(addr_of_mut!((*slot).value.seen_s), value.seen_s);
            write_volatile(addr_of_mut!((*slot).value.vip_id), value.vip_id);
        }
    }
}

/// Whether a slot holds `key`, compared field by field in place (no copy of the slot's key).
/// Another CPU may be rewriting the slot: a key read half old, half new matches neither flow.
#[inline(always)]
fn holds(slot: *const FlowSlot, key: &FlowKey) -> bool {
    // SAFETY: the caller's `slot` points into an array map element (valid for reads).
    unsafe {
        (*slot).key.src == key.src
            && (*slot).key.dst == key.dst
            && (*slot).key.sport == key.sport
            && (*slot).key.dport == key.dport
            && (*slot).key.proto == key.proto
    }
}

/// The set of a flow of hash `hash` in `XLB_FLOW_SETS` (an inlined array read).
#[inline(always)]
fn flow_set(hash: u32) -> Option<*mut FlowSet> {
    FLOW_SETS.get_ptr_mut(flow_set_index(hash, XLB_FLOW_SET_COUNT.load()))
}

impl Flow for FlowKey6 {
    #[inline(always)]
    fn hash(&self) -> u32 {
        flow_hash6(self)
    }

    type VipKey = VipKey6;
    #[inline(always)]
    fn vips() -> &'static HashMap<VipKey6, VipMeta> {
        &VIPS6
    }
    #[inline(always)]
    fn vips_by_id() -> &'static Array<VipById6> {
        &VIP_BY_ID6
    }
    #[inline(always)]
    fn vip_key(&self, any_port: bool) -> VipKey6 {
        VipKey6 {
            addr: self.dst,
            port: if any_port { 0 } else { self.dport },
            proto: self.proto,
            _pad: 0,
        }
    }

    #[inline(always)]
    fn entry(&self, _hash: &mut Option<u32>) -> Option<*mut FlowValue> {
        FLOWS6.get_ptr_mut(self)
    }

    /// Inserted only if its key is absent, so that a key already present (a SYN reusing a
    /// remembered flow's ports skips the lookup; a flow whose backend is gone was found) is
    /// overwritten and counted as `flow_replaced`. A fresh key costs one update; only a
    /// replacement costs two. A full table refuses a fresh key (`flow_insert_failed`) but
    /// still takes a replacement (the kernel keeps spare elements for that).
    #[inline(always)]
    fn remember(&self, value: FlowValue, _hash: &mut Option<u32>) {
        let result = match FLOWS6.insert(self, value, u64::from(BPF_NOEXIST)) {
            Err(EEXIST) => {
                stats::lb(LbCounter::FlowReplaced);
                FLOWS6.insert(self, value, u64::from(BPF_ANY))
            }
            other => other,
        };
        if result.is_err() {
            stats::lb(LbCounter::FlowInsertFailed);
        }
    }
}

/// `-EEXIST`: the key is already in the map.
const EEXIST: i32 = -17;

/// A flow's hash, computed once per packet: `hash` holds it after the first call. Not
/// `Option::get_or_insert_with`: where the compiler puts that out of line, it returns a
/// pointer into its caller's stack, which the verifier refuses.
#[inline(always)]
pub fn cached_hash<F: Flow>(flow: &F, hash: &mut Option<u32>) -> u32 {
    match *hash {
        Some(flow_hash) => flow_hash,
        None => {
            let flow_hash = flow.hash();
            *hash = Some(flow_hash);
            flow_hash
        }
    }
}

/// The VIP a flow is addressed to: an exact (address, port, protocol) match first, then the
/// VIP that serves every port of that protocol on the address.
#[inline(always)]
pub fn find_vip<F: Flow>(flow: &F) -> Option<VipMeta> {
    // SAFETY: the value is copied out at once. The kernel may reuse a replaced element's memory
    // for a later update (BPF memory allocator); a copy racing with two updates in a row could
    // read another VIP's entry, whose table holds backends of that other VIP: the vip_id check
    // in `choose` turns that into a counted drop, never a packet sent to the wrong service.
    if let Some(meta) = unsafe { F::vips().get(flow.vip_key(false)) } {
        return Some(*meta);
    }
    // SAFETY: as above.
    unsafe { F::vips().get(flow.vip_key(true)) }.copied()
}

/// The VIP of a packet, given its flow's entry (a copy, if the flow is remembered): for an
/// established flow, the VIP of the id in its entry (the family's by-id array: an array read
/// instead of the hash lookups of [`find_vip`]) while that id's VIP still has the key the
/// packet addresses; otherwise (no entry, the id freed or now naming another VIP)
/// [`find_vip`]. A flow keeps the VIP it was balanced for: one to a VIP serving every port
/// stays with it when a VIP for its own port is added later (new flows go to the new VIP).
#[inline(always)]
pub fn vip_of<F: Flow>(flow: &F, entry: Option<&FlowValue>) -> Option<VipMeta> {
    if let Some(by_id) = entry.and_then(|entry| F::vips_by_id().get(entry.vip_id)) {
        let key = by_id.key;
        if key == flow.vip_key(false) || key == flow.vip_key(true) {
            // Copied whole: the daemon rewrites an id's entry only when it switches the VIP's
            // table or frees the id; a copy racing with that write is checked by `choose` like
            // a stale VIP map entry (backend ids must belong to the VIP).
            return Some(by_id.meta);
        }
    }
    find_vip(flow)
}

/// The backend chosen for a flow.
pub struct Choice {
    /// Backend id: index into the backend map and the backend counters.
    pub backend_id: u32,
    /// A copy of the backend entry.
    pub backend: Backend,
}

/// The flow table entry of a packet that may belong to an established flow.
///
/// A packet that opens a TCP connection (SYN without ACK) skips the flow table lookup, as
/// Katran does: it is a new flow by definition, and its entry (replacing any left by an earlier
/// connection on the same ports) goes to the backend the table names now, so a reused port
/// never lands on a drained or down backend (those keep their entries, and their established
/// flows). The cost, shared by every Maglev balancer that does this: a
/// SYN retransmitted across a table change that moved its slot goes to the new backend, and if
/// the first one had already answered, the client's ACK reaches a backend that resets it. Only
/// handshakes in flight during a change that moves their slot are exposed.
///
/// A flow found is marked seen now (`FlowValue::seen_s`, written only when the clock moved
/// since its last packet), which keeps it from `xlbd`'s expiry.
#[inline(always)]
pub fn established<F: Flow>(
    flow: &F,
    opens_connection: bool,
    hash: &mut Option<u32>,
) -> Option<*mut FlowValue> {
    if opens_connection {
        return None;
    }
    let entry = flow.entry(hash)?;
    let now = now_s();
    // SAFETY: the pointer comes from a successful lookup of an array or a preallocated hash
    // map: it stays valid memory of the value's size; an entry emptied by `xlbd` or taken by
    // another flow under us is at worst marked seen by this packet, which only delays its
    // expiry.
    unsafe {
        if (*entry).seen_s != now {
            (*entry).seen_s = now;
        }
    }
    Some(entry)
}

/// The datapath clock in seconds (`XLB_CLOCK`, written by `xlbd`; 0 when no `xlbd` keeps it).
#[inline(always)]
fn now_s() -> u32 {
    CLOCK.get(0).copied().unwrap_or(0)
}

/// Keeps an established flow (its flow table `entry`, see [`established`]) on its backend
/// while that backend exists for this VIP; otherwise asks the VIP's Maglev table and remembers
/// the answer.
#[inline(always)]
pub fn choose<F: Flow>(
    flow: &F,
    vip: &VipMeta,
    policy: &PolicyConfig,
    entry: Option<FlowValue>,
    hash: &mut Option<u32>,
) -> Result<Choice, DropReason> {
    match remembered(entry, vip) {
        Remembered::Valid(choice) => {
            stats::lb(LbCounter::FlowHit);
            return Ok(choice);
        }
        Remembered::Gone => stats::lb(LbCounter::FlowBackendGone),
        Remembered::Absent => {}
    }
    let choice = from_table(flow, vip, hash)?;
    if crate::policy::may_remember(policy) {
        flow.remember(
            FlowValue {
                backend_id: choice.backend_id,
                lists_gen: policy.lists_gen,
                seen_s: now_s(),
                vip_id: vip.vip_id,
            },
            hash,
        );
    }
    stats::lb(LbCounter::FlowNew);
    Ok(choice)
}

/// The backend that owns a flow, as [`choose`] would find it for the flow's next packet (not a
/// SYN), but without remembering or counting anything: for packets about a flow rather than of
/// it (ICMP errors), which must not add entries to the flow table.
#[inline(always)]
pub fn owner<F: Flow>(
    flow: &F,
    vip: &VipMeta,
    hash: &mut Option<u32>,
) -> Result<Choice, DropReason> {
    // SAFETY: the value is copied at once; an entry deleted and reused under us would at
    // worst give a backend id that is checked like any other.
    let entry = flow.entry(hash).map(|entry| unsafe { *entry });
    match remembered(entry, vip) {
        Remembered::Valid(choice) => Ok(choice),
        Remembered::Gone | Remembered::Absent => from_table(flow, vip, hash),
    }
}

/// What the flow table says about a flow.
enum Remembered {
    /// Its entry names a backend that still serves the VIP.
    Valid(Choice),
    /// Its entry names a backend that was removed (or now belongs to another VIP).
    Gone,
    /// No entry.
    Absent,
}

/// What a flow's entry (a copy) says, checked against the backends.
#[inline(always)]
fn remembered(entry: Option<FlowValue>, vip: &VipMeta) -> Remembered {
    let Some(entry) = entry else {
        return Remembered::Absent;
    };
    let backend_id = entry.backend_id;
    // Copy first, then check the copy: the checks and the use see the same entry.
    match BACKENDS.get(backend_id).copied() {
        Some(backend)
            if backend.flags & backend_flags::ACTIVE != 0 && backend.vip_id == vip.vip_id =>
        {
            Remembered::Valid(Choice {
                backend_id,
                backend,
            })
        }
        _ => Remembered::Gone,
    }
}

/// The backend the VIP's Maglev table names for a flow.
#[inline(always)]
fn from_table<F: Flow>(
    flow: &F,
    vip: &VipMeta,
    hash: &mut Option<u32>,
) -> Result<Choice, DropReason> {
    if vip.backend_count == 0 || vip.table_size == 0 {
        return Err(DropReason::NoBackend);
    }
    let flow_hash = cached_hash(flow, hash);
    let slot = vip.table_offset + flow_hash % vip.table_size;
    let pair = MAGLEV.get(slot / 2).ok_or(DropReason::TableMiss)?;
    let backend_id = pair[(slot & 1) as usize];
    let backend = *BACKENDS.get(backend_id).ok_or(DropReason::TableMiss)?;
    if backend.flags & backend_flags::ACTIVE == 0 || backend.vip_id != vip.vip_id {
        return Err(DropReason::TableMiss);
    }
    Ok(Choice {
        backend_id,
        backend,
    })
}
