//! Bounds-checked access to packet bytes: the one place that proves to the verifier that a
//! read or write stays inside the frame.

use aya_ebpf::programs::XdpContext;

/// A pointer to a `T` at `offset` bytes into the frame, if the frame holds all of it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Frame length in bytes.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}
