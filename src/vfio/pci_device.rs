//! The guest-visible model of a passed-through PCI function: a coordinator
//! of three owned parts that do not know each other —
//! [`ConfigSpace`] (the guest's view of configuration space),
//! [`Vectors`] (MSI/MSI-X, their eventfds and routes) and [`BarMap`] (what
//! of each BAR is mapped straight through and what traps). BAR addresses
//! are assigned by the caller before the device is built ([`VfioProbe`]
//! says what the function asks for); BAR moves are reported to the caller.

use std::sync::Arc;

use vfio_bindings::bindings::vfio::VFIO_PCI_CONFIG_REGION_INDEX;

use super::bar_map::{BarMap, BarMapError, Trapped};
use super::config_space::{cfg_u32, scan_capabilities, ConfigSpace, ConfigWrite};
use super::dma_gate::DmaGate;
use super::vectors::{VectorError, Vectors};
use super::{RegionInfo, VfioBackend};
use crate::interrupts::MsiRouter;
use crate::pci::bar::{decode_bar_type, BarInfo, BarRequest};
use crate::pci::{regs, BarMove, ConfigWriteResult, PciDevice, TrapRange};
use crate::vm::{GuestMapper, VmError};

/// Errors building the device model.
#[derive(Debug, thiserror::Error)]
pub enum VfioPciError {
    /// Interrupt vectors could not be set up.
    #[error("{0}")]
    Vectors(String, #[source] VectorError),
    /// BARs could not be mapped.
    #[error("{0}")]
    Bars(String, #[source] BarMapError),
}

/// What a function is before it has guest addresses: its configuration
/// space as first read (after a reset) and the memory BARs it asks for.
pub struct VfioProbe {
    config: Vec<u8>,
    regions: Vec<RegionInfo>,
    requests: Vec<BarRequest>,
}

impl VfioProbe {
    /// Reads the function's configuration space once (4 KiB for PCIe
    /// functions) and its BARs. No reset here: vfio-pci resets a function
    /// when it is opened (and when it is closed), so what the previous user
    /// left is already gone; a second reset would only add a function-level
    /// reset's 100 ms wait per device before the guest can start.
    pub fn new(name: &str, dev: &dyn VfioBackend) -> Self {
        let size = (dev.region(VFIO_PCI_CONFIG_REGION_INDEX).size as usize)
            .clamp(regs::CONFIG_SPACE_SIZE, regs::EXT_CONFIG_SPACE_SIZE);
        let mut config = vec![0u8; size];
        dev.config_read(0, &mut config);
        let mut regions = Vec::new();
        let mut requests = Vec::new();
        let mut i = 0;
        while i < 6 {
            let info = dev.region(i as u32);
            let size = info.size;
            regions.push(info);
            let ty = decode_bar_type(cfg_u32(&config, regs::BAR0 + 4 * i));
            match ty {
                None if size != 0 => {
                    log::warn!("{name}: BAR{i} is an I/O BAR; I/O BARs are not passed through")
                }
                Some((is_64, prefetchable)) if size != 0 => {
                    requests.push(BarRequest {
                        index: i,
                        size: size.next_power_of_two().max(16),
                        is_64,
                        prefetchable,
                    });
                    if is_64 {
                        regions.push(RegionInfo::default()); // the upper half
                        i += 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        VfioProbe {
            config,
            regions,
            requests,
        }
    }

    /// The memory BARs the function asks for, for the caller to place.
    pub fn bar_requests(&self) -> &[BarRequest] {
        &self.requests
    }
}

/// A passed-through function on the emulated PCI bus.
pub struct VfioPciDevice {
    name: String,
    config: ConfigSpace,
    vectors: Vectors,
    // Declared before `dev`: fields drop in order, and the BAR mappings
    // must be gone before the device file closes.
    bars: BarMap,
    dev: Arc<dyn VfioBackend>,
    /// Bus Master Enable waits here until guest RAM is mapped for DMA.
    dma: Option<Arc<DmaGate>>,
    quiesced: bool,
}

impl VfioPciDevice {
    /// Builds the model of `dev` as `probe` found it, with its BARs at the
    /// addresses in `bars` (one per [`VfioProbe::bar_requests`] entry), and
    /// maps what can be mapped straight into the guest through `mapper`.
    pub fn new(
        name: &str,
        dev: Arc<dyn VfioBackend>,
        probe: VfioProbe,
        bars: Vec<BarInfo>,
        router: Arc<dyn MsiRouter>,
        mapper: &dyn GuestMapper,
    ) -> Result<Self, VfioPciError> {
        for b in &bars {
            log::info!(
                "{name}: BAR{} {:#x} bytes at guest {:#x}{}",
                b.index,
                b.size,
                b.addr,
                if b.is_64 { " (64-bit)" } else { "" }
            );
        }
        let scan = scan_capabilities(&probe.config);
        let vectors = Vectors::new(name, &scan, dev.msix_vectors(), router)
            .map_err(|e| VfioPciError::Vectors(name.to_string(), e))?;
        let config = ConfigSpace::new(&probe.config, &bars);
        let bar_map = BarMap::new(
            name,
            bars,
            &probe.regions,
            vectors.msix_cap(),
            &*dev,
            mapper,
        )
        .map_err(|e| VfioPciError::Bars(name.to_string(), e))?;
        Ok(VfioPciDevice {
            name: name.to_string(),
            config,
            vectors,
            bars: bar_map,
            dev,
            dma: None,
            quiesced: false,
        })
    }

    /// The BARs at their current guest addresses.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn bars(&self) -> &[BarInfo] {
        self.bars.bars()
    }

    /// Holds the guest's Bus Master Enable until `gate` opens (guest RAM
    /// mapped for DMA on a background thread).
    pub fn with_dma_gate(mut self, gate: Arc<DmaGate>) -> Self {
        self.dma = Some(gate);
        self
    }

    /// Disables interrupts and resets the function (at shutdown). Idempotent.
    pub fn quiesce(&mut self) {
        if self.quiesced {
            return;
        }
        self.quiesced = true;
        self.vectors.quiesce(&*self.dev);
        log::debug!("{}: resetting the function", self.name);
        self.dev.reset();
        log::debug!("{}: reset done", self.name);
    }
}

impl PciDevice for VfioPciDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn read_config(&mut self, reg: usize) -> u32 {
        let v = self.config.read(reg, &*self.dev);
        self.vectors.read_config(reg, v)
    }

    fn write_config(&mut self, reg: usize, offset: usize, data: &[u8]) -> ConfigWriteResult {
        if reg * 4 + offset < self.config.size()
            && self.vectors.write_config(reg, offset, data, &*self.dev)
        {
            return ConfigWriteResult::default();
        }
        let bus_master = reg * 4 + offset == regs::COMMAND
            && data
                .first()
                .is_some_and(|c| u16::from(*c) & regs::COMMAND_BUS_MASTER != 0);
        if let (true, Some(gate)) = (bus_master, &self.dma) {
            // No DMA, and no interrupt, before guest RAM is mapped for it.
            if let Err(e) = gate.wait() {
                log::error!("{}: bus mastering stays off: {e}", self.name);
                return ConfigWriteResult::default();
            }
        }
        match self.config.write(reg, offset, data, &*self.dev) {
            ConfigWrite::Done => ConfigWriteResult::default(),
            // Only with decoding on: sizing happens with decoding off.
            ConfigWrite::BarsMayMove => ConfigWriteResult {
                bar_moves: self.bars.proposed_moves(self.config.shadow()),
            },
        }
    }

    fn read_bar(&mut self, addr: u64, data: &mut [u8]) {
        data.fill(0);
        match self.bars.classify_access(addr, data.len()) {
            Some(Trapped::MsixTable(off)) => self.vectors.read_table(off, data),
            // Nothing is ever left pending: masked vectors' events wait in their eventfds.
            Some(Trapped::Pba) | None => {}
            Some(Trapped::Device(region, off)) => self.dev.region_read(region, off, data),
        }
    }

    fn write_bar(&mut self, addr: u64, data: &[u8]) {
        match self.bars.classify_access(addr, data.len()) {
            Some(Trapped::MsixTable(off)) => self.vectors.write_table(off, data),
            Some(Trapped::Pba) | None => {}
            Some(Trapped::Device(region, off)) => self.dev.region_write(region, off, data),
        }
    }

    fn trapped_ranges(&self) -> Vec<TrapRange> {
        self.bars.trapped_ranges()
    }

    fn move_bar(&mut self, mv: &BarMove, mapper: &dyn GuestMapper) -> Result<(), VmError> {
        self.bars.move_bar(mv, mapper)
    }
}

impl Drop for VfioPciDevice {
    fn drop(&mut self) {
        self.quiesce();
    }
}

#[cfg(test)]
#[path = "pci_device_tests.rs"]
mod tests;
