//! The backend-side decapsulator and the pass-all helper: small programs with their own maps,
//! loaded and attached on hosts other than the balancer.

use std::net::IpAddr;

use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
};
use xlb_common::{DecapCounter, VipAddrKey, VipAddrValue, map_names, program_names};

use super::{DataplaneError, map_err, objects, test_run_xdp};
use crate::state::addr_words;

fn xdp<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, DataplaneError> {
    ebpf.program_mut(name)
        .and_then(|p| <&mut Xdp>::try_from(p).ok())
        .ok_or(DataplaneError::Missing(name))
}

fn load_and_attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    interface: &str,
    mode: XdpMode,
) -> Result<(), DataplaneError> {
    let program = xdp(ebpf, name)?;
    program.load().map_err(|source| DataplaneError::Program {
        action: "loading",
        program: name,
        source: Box::new(source),
    })?;
    program
        .attach(interface, mode)
        .map_err(|source| DataplaneError::Program {
            action: "attaching",
            program: name,
            source: Box::new(source),
        })?;
    Ok(())
}

/// The decapsulator attached to a backend's interface; detached when dropped.
pub struct Decap {
    ebpf: Ebpf,
    vips: HashMap<MapData, VipAddrKey, VipAddrValue>,
    stats: PerCpuArray<MapData, u64>,
}

impl Decap {
    /// Loads the decapsulator and attaches it to `interface` (native mode if `native`, else
    /// generic).
    pub fn attach(interface: &str, native: bool) -> Result<Decap, DataplaneError> {
        let mut ebpf = Ebpf::load(objects::DECAP).map_err(|e| DataplaneError::Load(Box::new(e)))?;
        let mode = if native {
            XdpMode::Driver
        } else {
            XdpMode::Skb
        };
        load_and_attach(&mut ebpf, program_names::DECAP, interface, mode)?;
        Self::with_maps(ebpf)
    }

    /// Loads the decapsulator without attaching it, for [`Decap::test_run`] (fixtures).
    pub fn load() -> Result<Decap, DataplaneError> {
        let mut ebpf = Ebpf::load(objects::DECAP).map_err(|e| DataplaneError::Load(Box::new(e)))?;
        xdp(&mut ebpf, program_names::DECAP)?
            .load()
            .map_err(|source| DataplaneError::Program {
                action: "loading",
                program: program_names::DECAP,
                source: Box::new(source),
            })?;
        Self::with_maps(ebpf)
    }

    /// Runs the program once on `input` (BPF_PROG_TEST_RUN): the action and the length of the
    /// frame written to `output`.
    pub fn test_run(
        &mut self,
        input: &[u8],
        output: &mut [u8],
    ) -> Result<(u32, usize), DataplaneError> {
        let program = xdp(&mut self.ebpf, program_names::DECAP)?;
        test_run_xdp(program, program_names::DECAP, input, output)
    }

    fn with_maps(mut ebpf: Ebpf) -> Result<Decap, DataplaneError> {
        let vips = ebpf
            .take_map(map_names::DECAP_VIPS)
            .ok_or(DataplaneError::Missing(map_names::DECAP_VIPS))?;
        let stats = ebpf
            .take_map(map_names::DECAP_STATS)
            .ok_or(DataplaneError::Missing(map_names::DECAP_STATS))?;
        Ok(Decap {
            vips: HashMap::try_from(vips).map_err(map_err("open", map_names::DECAP_VIPS))?,
            stats: PerCpuArray::try_from(stats).map_err(map_err("open", map_names::DECAP_STATS))?,
            ebpf,
        })
    }

    /// Strips encapsulated packets whose inner destination is `vip`.
    pub fn add_vip(&mut self, vip: IpAddr) -> Result<(), DataplaneError> {
        let (addr, family) = addr_words(vip);
        let key = VipAddrKey {
            addr,
            family,
            _pad: [0; 3],
        };
        self.vips
            .insert(key, VipAddrValue { vip_count: 1 }, 0)
            .map_err(map_err("update", map_names::DECAP_VIPS))
    }

    /// Packets per decap outcome, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>, DataplaneError> {
        DecapCounter::ALL
            .iter()
            .map(|c| {
                let values = self
                    .stats
                    .get(&(*c as u32), 0)
                    .map_err(map_err("lookup", map_names::DECAP_STATS))?;
                Ok((c.name(), values.iter().sum()))
            })
            .collect()
    }
}

/// The pass-all program attached to an interface; detached when dropped. Lets the far end of a
/// veth accept frames that the other end sends with XDP_TX.
pub struct PassAll {
    _ebpf: Ebpf,
}

impl PassAll {
    /// Attaches `xlb_pass` to `interface` in native mode.
    pub fn attach(interface: &str) -> Result<PassAll, DataplaneError> {
        let mut ebpf = Ebpf::load(objects::AUX).map_err(|e| DataplaneError::Load(Box::new(e)))?;
        load_and_attach(&mut ebpf, program_names::PASS, interface, XdpMode::Driver)?;
        Ok(PassAll { _ebpf: ebpf })
    }
}
