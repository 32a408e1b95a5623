//! The eBPF objects, built by `build.rs` and embedded so the daemon is a single file.

/// The load balancer (`xlb_lb`).
pub static LB: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-lb"));
/// The backend-side decapsulator (`xlb_decap`).
pub static DECAP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-decap"));
/// Helper programs: `xlb_pass` and `xlb_floor`.
pub static AUX: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-aux"));
