//! Interrupt routing: the KVM GSI routing table (legacy PIC/IOAPIC pins plus
//! one MSI route per enabled device vector) and irqfd attachment.
//!
//! `KVM_SET_GSI_ROUTING` replaces the whole table, so the table is always
//! rebuilt from the legacy entries plus every live MSI route.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::{IOAPIC_PINS, MSI_GSI_START};
use crate::sync::lock;

/// Errors routing interrupts.
#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    /// KVM rejected the routing table.
    #[error("cannot set the KVM GSI routing table")]
    SetRouting(#[source] kvm_ioctls::Error),
    /// irqfd (un)registration failed.
    #[error("cannot {0} irqfd for GSI {1}")]
    Irqfd(&'static str, u32, #[source] kvm_ioctls::Error),
    /// Out of GSIs.
    #[error("out of interrupt routes (asked for {0} more)")]
    NoGsi(u32),
    /// The routing table does not fit KVM's structure.
    #[error("the GSI routing table has too many entries ({0})")]
    TableTooLarge(usize),
}

/// An MSI message as programmed by the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address, low 32 bits.
    pub addr_lo: u32,
    /// Message address, high 32 bits.
    pub addr_hi: u32,
    /// Message data.
    pub data: u32,
}

/// Delivers device MSIs to the guest. The seam between the PCI/VFIO models and KVM.
pub trait MsiRouter: Send + Sync {
    /// Reserves `count` consecutive GSIs; returns the first.
    fn allocate_gsis(&self, count: u32) -> Result<u32, InterruptError>;
    /// Routes `gsi` to `msg` and attaches `fd` to it, or (with `None`)
    /// detaches `fd` and drops the route.
    fn route(&self, gsi: u32, msg: Option<MsiMessage>, fd: &EventFd) -> Result<(), InterruptError>;
}

/// The default routes KVM installs with an in-kernel irqchip: GSI 0-15 to
/// both PICs and the IOAPIC (GSI 0 on IOAPIC pin 2), 16-23 to the IOAPIC.
pub fn legacy_routes() -> Vec<kvm_irq_routing_entry> {
    let mut v = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        if gsi < 16 {
            let (chip, pin) = if gsi < 8 {
                (KVM_IRQCHIP_PIC_MASTER, gsi)
            } else {
                (KVM_IRQCHIP_PIC_SLAVE, gsi - 8)
            };
            v.push(irqchip_entry(gsi, chip, pin));
        }
        let pin = if gsi == 0 { 2 } else { gsi };
        v.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, pin));
    }
    v
}

fn irqchip_entry(gsi: u32, irqchip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = irqchip;
    e.u.irqchip.pin = pin;
    e
}

fn msi_entry(gsi: u32, m: &MsiMessage) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi.address_lo = m.addr_lo;
    e.u.msi.address_hi = m.addr_hi;
    e.u.msi.data = m.data;
    e
}

/// The full table: legacy routes plus the given MSI routes.
pub fn routing_table(msi: &BTreeMap<u32, MsiMessage>) -> Vec<kvm_irq_routing_entry> {
    let mut v = legacy_routes();
    v.extend(msi.iter().map(|(gsi, m)| msi_entry(*gsi, m)));
    v
}

#[derive(Default)]
struct RoutingState {
    msi: BTreeMap<u32, MsiMessage>,
    attached: BTreeSet<u32>,
    next_gsi: u32,
}

/// `MsiRouter` backed by KVM GSI routing and irqfd.
pub struct KvmMsiRouter {
    vm: Arc<VmFd>,
    state: Mutex<RoutingState>,
}

/// KVM's limit on routing entries.
const MAX_GSI: u32 = 4096;

impl KvmMsiRouter {
    /// A router for `vm`.
    pub fn new(vm: Arc<VmFd>) -> Self {
        KvmMsiRouter {
            vm,
            state: Mutex::new(RoutingState {
                next_gsi: MSI_GSI_START,
                ..Default::default()
            }),
        }
    }

    fn commit(&self, msi: &BTreeMap<u32, MsiMessage>) -> Result<(), InterruptError> {
        let table = routing_table(msi);
        let routing = KvmIrqRouting::from_entries(&table)
            .map_err(|_| InterruptError::TableTooLarge(table.len()))?;
        self.vm
            .set_gsi_routing(&routing)
            .map_err(InterruptError::SetRouting)
    }
}

impl MsiRouter for KvmMsiRouter {
    fn allocate_gsis(&self, count: u32) -> Result<u32, InterruptError> {
        let mut s = lock(&self.state);
        let first = s.next_gsi;
        let end = first
            .checked_add(count)
            .filter(|e| *e <= MAX_GSI)
            .ok_or(InterruptError::NoGsi(count))?;
        s.next_gsi = end;
        Ok(first)
    }

    fn route(&self, gsi: u32, msg: Option<MsiMessage>, fd: &EventFd) -> Result<(), InterruptError> {
        let mut s = lock(&self.state);
        match msg {
            Some(m) => {
                if s.msi.get(&gsi) != Some(&m) {
                    s.msi.insert(gsi, m);
                    self.commit(&s.msi)?;
                }
                if s.attached.insert(gsi) {
                    self.vm
                        .register_irqfd(fd, gsi)
                        .map_err(|e| InterruptError::Irqfd("register", gsi, e))?;
                }
            }
            None => {
                if s.attached.remove(&gsi) {
                    self.vm
                        .unregister_irqfd(fd, gsi)
                        .map_err(|e| InterruptError::Irqfd("unregister", gsi, e))?;
                }
                if s.msi.remove(&gsi).is_some() {
                    self.commit(&s.msi)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_table_matches_kvm_defaults() {
        let t = legacy_routes();
        // 16 PIC entries + 24 IOAPIC entries.
        assert_eq!(t.len(), 40);
        // SAFETY: every legacy entry was written through the `irqchip` member.
        let (chip, pin) = unsafe { (t[1].u.irqchip.irqchip, t[1].u.irqchip.pin) };
        assert_eq!((t[1].gsi, chip, pin), (0, KVM_IRQCHIP_IOAPIC, 2));
        let slave = t.iter().find(|e| e.gsi == 9).unwrap();
        // SAFETY: as above.
        let (chip, pin) = unsafe { (slave.u.irqchip.irqchip, slave.u.irqchip.pin) };
        assert_eq!((chip, pin), (KVM_IRQCHIP_PIC_SLAVE, 1));
        assert!(t.iter().all(|e| e.type_ == KVM_IRQ_ROUTING_IRQCHIP));
    }

    #[test]
    fn table_keeps_legacy_routes_when_adding_msi() {
        let mut msi = BTreeMap::new();
        msi.insert(
            24,
            MsiMessage {
                addr_lo: 0xfee0_0000,
                addr_hi: 0,
                data: 0x41,
            },
        );
        let t = routing_table(&msi);
        assert_eq!(t.len(), 41);
        let e = t.last().unwrap();
        assert_eq!((e.gsi, e.type_), (24, KVM_IRQ_ROUTING_MSI));
        // SAFETY: the last entry was written through the `msi` member.
        let (a, d) = unsafe { (e.u.msi.address_lo, e.u.msi.data) };
        assert_eq!((a, d), (0xfee0_0000, 0x41));
    }
}
