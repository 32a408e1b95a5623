//! The eBPF objects, built by `build.rs` and embedded so the daemon is a single file.

/// The load balancer (`xlb_lb`).
pub static LB: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-lb"));
/// The backend-side decapsulator (`xlb_decap`).
pub static DECAP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-decap"));
/// Helper programs: `xlb_pass`, `xlb_floor` and `xlb_sink`.
pub static AUX: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-aux"));
/// The packet generator (`xlb_pktgen`), run by `xlb-pktgen` with BPF_PROG_TEST_RUN.
pub static PKTGEN: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-pktgen"));
/// Health-probe encapsulation (`xlb_hc_encap`, tc egress), see `dataplane::hc_encap`.
pub static HC_ENCAP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-hc-encap"));
