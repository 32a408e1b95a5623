//! Two helper programs that are not part of the datapath:
//! - `xlb_pass` passes everything. Attached to the far end of a veth, it makes that end accept
//!   frames sent with XDP_TX (the kernel drops them otherwise).
//! - `xlb_floor` swaps the MACs and sends the frame back: the least an XDP forwarder can do,
//!   which the benchmarks measure as the floor to compare the load balancer against.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use xlb_ebpf::{headers::EthHdr, packet::ptr_at};

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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
