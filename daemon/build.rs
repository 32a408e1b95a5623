//! Builds the XDP programs (crate `xlb-ebpf`, target bpfel-unknown-none, nightly with
//! build-std) into OUT_DIR, where `dataplane::objects` embeds them in the binaries.
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    // Read by the eBPF crate (`option_env!`): a test build of another program variant.
    println!("cargo:rerun-if-env-changed=XLB_EBPF_VARIANT");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../xdp/ebpf");
    aya_build::build_ebpf(
        [Package {
            name: "xlb-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
