//! The interrupt vectors of a passed-through function: the MSI capability
//! and MSI-X (Message Control and the vector table) as the guest programs
//! them, each vector an eventfd the host device signals and a KVM route to
//! the guest. Each part owns its GSIs and eventfds and keeps host state and
//! routes in step with what the guest programmed.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::config_space::CapScan;
use super::VfioBackend;
use crate::interrupts::{InterruptError, MsiRouter};
use crate::pci::msi::{MsiCap, MsiState};
use crate::pci::msix::{self, MsixCap, MsixState};

/// Errors setting up interrupt vectors.
#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    /// GSI allocation failed.
    #[error("cannot allocate interrupt routes")]
    Interrupts(#[source] InterruptError),
    /// Eventfd creation failed.
    #[error("cannot create interrupt eventfds")]
    EventFd(#[source] std::io::Error),
}

/// GSIs and one eventfd each for `n` vectors.
fn allocate(router: &dyn MsiRouter, n: u32) -> Result<(u32, Vec<EventFd>), VectorError> {
    let gsi_base = router.allocate_gsis(n).map_err(VectorError::Interrupts)?;
    let fds = (0..n)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK))
        .collect::<Result<Vec<_>, _>>()
        .map_err(VectorError::EventFd)?;
    Ok((gsi_base, fds))
}

/// MSI: the emulated capability and its vectors.
struct MsiVectors {
    cap: MsiCap,
    state: MsiState,
    fds: Vec<EventFd>,
    gsi_base: u32,
    /// Vectors enabled on the host device (0: MSI off there).
    host_vectors: u32,
}

impl MsiVectors {
    fn contains(&self, byte: usize) -> bool {
        (self.cap.cap_offset..self.cap.cap_offset + self.cap.len()).contains(&byte)
    }

    /// Brings host MSI and the routes in line with the guest's programming.
    fn update(&mut self, name: &str, router: &dyn MsiRouter, dev: &dyn VfioBackend) {
        let want = if self.state.enabled() {
            self.state.vectors()
        } else {
            0
        };
        if want != self.host_vectors {
            for (i, fd) in self.fds.iter().enumerate() {
                if let Err(e) = router.route(self.gsi_base + i as u32, None, fd) {
                    log::error!("{name}: MSI vector {i}: {e}");
                }
            }
            if self.host_vectors > 0 {
                if let Err(e) = dev.disable_msi() {
                    log::error!("{name}: disabling MSI failed: {e}");
                }
            }
            self.host_vectors = 0;
            if want > 0 {
                let fds: Vec<&EventFd> = self.fds.iter().take(want as usize).collect();
                match dev.enable_msi(&fds) {
                    Ok(()) => self.host_vectors = want,
                    Err(e) => log::error!("{name}: enabling MSI on the host failed: {e}"),
                }
            }
            log::debug!("{name}: MSI with {} vectors", self.host_vectors);
        }
        for (i, fd) in self.fds.iter().enumerate() {
            let i = i as u32;
            let live = i < self.host_vectors && self.state.vector_live(i);
            let msg = live.then(|| self.state.message(i));
            if let Err(e) = router.route(self.gsi_base + i, msg, fd) {
                log::error!("{name}: MSI vector {i}: {e}");
            }
        }
    }
}

/// MSI-X: Message Control, the emulated table and its vectors.
struct MsixVectors {
    cap: MsixCap,
    state: MsixState,
    fds: Vec<EventFd>,
    gsi_base: u32,
    host_enabled: bool,
}

impl MsixVectors {
    fn route(&self, name: &str, router: &dyn MsiRouter, i: usize) {
        let Some(fd) = self.fds.get(i) else { return };
        let msg = self
            .state
            .vector_live(i)
            .then(|| self.state.entries[i].message());
        if let Err(e) = router.route(self.gsi_base + i as u32, msg, fd) {
            log::error!("{name}: MSI-X vector {i}: {e}");
        }
    }

    /// Brings host MSI-X and every route in line with the guest's programming.
    fn update(&mut self, name: &str, router: &dyn MsiRouter, dev: &dyn VfioBackend) {
        if self.state.enabled && !self.host_enabled {
            let fds: Vec<&EventFd> = self.fds.iter().collect();
            match dev.enable_msix(&fds) {
                Ok(()) => self.host_enabled = true,
                Err(e) => log::error!("{name}: enabling MSI-X on the host failed: {e}"),
            }
            log::debug!("{name}: MSI-X enabled");
        }
        for i in 0..self.fds.len() {
            self.route(name, router, i);
        }
        if !self.state.enabled && self.host_enabled {
            if let Err(e) = dev.disable_msix() {
                log::error!("{name}: disabling MSI-X failed: {e}");
            }
            self.host_enabled = false;
            log::debug!("{name}: MSI-X disabled");
        }
    }
}

/// The function's MSI and MSI-X vectors.
pub struct Vectors {
    name: String,
    router: Arc<dyn MsiRouter>,
    msi: Option<MsiVectors>,
    msix: Option<MsixVectors>,
}

impl Vectors {
    /// Vectors for the capabilities in `scan`; MSI-X gets at most the
    /// `host_msix` vectors the host exposes.
    pub fn new(
        name: &str,
        scan: &CapScan,
        host_msix: u32,
        router: Arc<dyn MsiRouter>,
    ) -> Result<Self, VectorError> {
        let msix = match scan.msix {
            Some(cap) => {
                let n = u32::from(cap.table_size).min(host_msix.max(1));
                let (gsi_base, fds) = allocate(&*router, n)?;
                log::info!(
                    "{name}: MSI-X with {n} vectors on GSIs {gsi_base}..{}",
                    gsi_base + n
                );
                Some(MsixVectors {
                    cap,
                    state: MsixState::new(n as u16),
                    fds,
                    gsi_base,
                    host_enabled: false,
                })
            }
            None => None,
        };
        let msi = match scan.msi {
            Some((cap, header)) => {
                let n = cap.max_vectors();
                let (gsi_base, fds) = allocate(&*router, n)?;
                log::info!(
                    "{name}: MSI with {n} vectors on GSIs {gsi_base}..{}",
                    gsi_base + n
                );
                Some(MsiVectors {
                    cap,
                    state: MsiState::new(cap, header),
                    fds,
                    gsi_base,
                    host_vectors: 0,
                })
            }
            None => None,
        };
        if msi.is_none() && msix.is_none() {
            log::warn!("{name}: neither MSI nor MSI-X; INTx is not supported, the guest driver will get no interrupts");
        }
        Ok(Vectors {
            name: name.to_string(),
            router,
            msi,
            msix,
        })
    }

    /// Where the MSI-X table and PBA are, if the function has MSI-X.
    pub fn msix_cap(&self) -> Option<MsixCap> {
        self.msix.as_ref().map(|m| m.cap)
    }

    /// Overlays the emulated MSI bytes and MSI-X control bits on register
    /// `reg`, whose value from configuration space is `v`.
    pub fn read_config(&self, reg: usize, mut v: u32) -> u32 {
        let off = reg * 4;
        if let Some(m) = &self.msi {
            for i in 0..4 {
                if m.contains(off + i) {
                    let mut b = [0u8];
                    m.state.read(off + i - m.cap.cap_offset, &mut b);
                    v = (v & !(0xff << (i * 8))) | (u32::from(b[0]) << (i * 8));
                }
            }
        }
        if let Some(m) = &self.msix {
            if m.cap.cap_offset / 4 == reg {
                let owned = msix::CTL_ENABLE | msix::CTL_FUNCTION_MASK;
                let ctl = ((v >> 16) as u16 & !owned) | m.state.control_bits();
                v = (v & 0xffff) | (u32::from(ctl) << 16);
            }
        }
        v
    }

    /// Handles a write to the MSI capability or the first dword of the MSI-X
    /// capability; returns false when the write is not theirs.
    pub fn write_config(
        &mut self,
        reg: usize,
        offset: usize,
        data: &[u8],
        dev: &dyn VfioBackend,
    ) -> bool {
        let name = &self.name;
        if let Some(m) = self.msix.as_mut() {
            if m.cap.cap_offset / 4 == reg {
                // Enable and function mask are in the top byte of Message Control.
                if let Some(&hi) = (3usize.checked_sub(offset)).and_then(|i| data.get(i)) {
                    if m.state.write_control(u16::from(hi) << 8) {
                        m.update(name, &*self.router, dev);
                    }
                }
                return true;
            }
        }
        let byte = reg * 4 + offset;
        if let Some(m) = self.msi.as_mut() {
            if m.contains(byte) {
                if m.state.write(byte - m.cap.cap_offset, data) {
                    m.update(name, &*self.router, dev);
                }
                return true;
            }
        }
        false
    }

    /// Guest read of the MSI-X table at `offset`.
    pub fn read_table(&mut self, offset: u64, data: &mut [u8]) {
        match self.msix.as_mut() {
            Some(m) => m.state.read_table(offset, data),
            None => data.fill(0),
        }
    }

    /// Guest write to the MSI-X table at `offset`: re-routes every vector
    /// it touched (a qword write may straddle two entries).
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let Some(m) = self.msix.as_mut() else { return };
        for v in m.state.write_table(offset, data) {
            if m.state.enabled {
                m.route(&self.name, &*self.router, v);
            }
        }
    }

    /// Turns every vector off on the host and drops every route (at shutdown).
    pub fn quiesce(&mut self, dev: &dyn VfioBackend) {
        if let Some(m) = self.msix.as_mut() {
            m.state.enabled = false;
            m.update(&self.name, &*self.router, dev);
        }
        if let Some(m) = self.msi.as_mut() {
            m.state.disable();
            m.update(&self.name, &*self.router, dev);
        }
    }
}

#[cfg(test)]
#[path = "vectors_tests.rs"]
mod tests;
