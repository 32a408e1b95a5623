//! Configs of any size built directly, without TOML or validation, for the benchmarks of the
//! control plane (`daemon/benches/apply_state.rs`, `tests/src/bin/apply_bench.rs`): 10,000 VIPs
//! with tables of 16,381 slots need a Maglev array above what validation accepts.

use std::net::{IpAddr, Ipv4Addr};

use crate::config::{
    AllDown, AttachMode, BackendConfig, Config, EncapConfig, ForwardMode, HealthConfig,
    InterfaceConfig, Limits, MacAddr, Protocol, VipConfig,
};

/// The i-th VIP: 10.(100 + i / 65536).(i / 256 % 256).(i % 256) port 80/tcp, L2, with
/// `backends` backends 10.(k + 1).(i / 256 % 256).(i % 256) of weight 100.
pub fn vip(i: usize, backends: usize, table_size: u32) -> VipConfig {
    let (a, b, c) = ((i / 65536) as u8, (i / 256 % 256) as u8, (i % 256) as u8);
    VipConfig {
        name: format!("vip{i}"),
        address: IpAddr::V4(Ipv4Addr::new(100 + a, b, c, 1)),
        port: 80,
        protocol: Protocol::Tcp,
        mode: ForwardMode::L2,
        table_size,
        health: HealthConfig::defaults_for(Protocol::Tcp, 80, ForwardMode::L2),
        on_all_down: AllDown::default(),
        backends: (0..backends)
            .map(|k| {
                let address = Ipv4Addr::new(10, k as u8 + 1, b, c);
                BackendConfig {
                    name: address.to_string(),
                    address: IpAddr::V4(address),
                    mac: MacAddr([0x02, a, k as u8, b, c, 1]),
                    weight: 100,
                    health: None,
                }
            })
            .collect(),
        source_ranges: None,
    }
}

/// `vips` VIPs from [`vip`], with limits that hold them twice over (a change that gives every
/// VIP a new table writes it beside the live one).
pub fn config(vips: usize, backends: usize, table_size: u32) -> Config {
    Config {
        interface: InterfaceConfig {
            name: "bench0".to_owned(),
            attach_mode: AttachMode::Auto,
        },
        limits: Limits {
            flow_table_size: 1024,
            max_vips: (vips as u32).max(16),
            max_backends: (2 * vips * backends).max(16) as u32,
            maglev_slots: (2 * table_size * vips as u32).max(1024),
            ..Limits::default()
        },
        encap: EncapConfig::default(),
        vips: (0..vips).map(|i| vip(i, backends, table_size)).collect(),
        policy: Default::default(),
        events: Default::default(),
    }
}
