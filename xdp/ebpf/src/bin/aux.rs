//! Helper programs that are not part of the datapath:
//! - `xlb_pass` passes everything. Attached to the far end of a veth, it makes that end accept
//!   frames sent with XDP_TX (the kernel drops them otherwise).
//! - `xlb_floor` swaps the MACs and sends the frame back: the least an XDP forwarder can do,
//!   which the benchmarks measure as the floor to compare the load balancer against.
//! - `xlb_sink` counts every frame (packets and bytes, per CPU) and drops it: the far end of a
//!   throughput test, where what the program under test forwarded is counted.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use xlb_common::Counter;
use xlb_ebpf::{
    headers::EthHdr,
    packet::{frame_len, ptr_at},
};

/// Frames (and their bytes) that reached `xlb_sink`, per CPU.
#[map(name = "XLB_SINK")]
static SINK: PerCpuArray<Counter> = PerCpuArray::with_max_entries(1, 0);

/// Passes every frame to the stack.
#[xdp]
pub fn xlb_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Swaps source and destination MAC and transmits the frame back out.
#[xdp]
pub fn xlb_floor(ctx: XdpContext) -> u32 {
    let Some(eth) = ptr_at::<EthHdr>(&ctx, 0) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: ptr_at checked that the Ethernet header lies inside the frame.
    unsafe { core::mem::swap(&mut (*eth).dst, &mut (*eth).src) };
    xdp_action::XDP_TX
}

/// Counts the frame and drops it.
#[xdp]
pub fn xlb_sink(ctx: XdpContext) -> u32 {
    if let Some(counter) = SINK.get_ptr_mut(0) {
        // SAFETY: this CPU's own slot of a per-CPU array; only this program on this CPU
        // writes it.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += frame_len(&ctx) as u64;
        }
    }
    xdp_action::XDP_DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
