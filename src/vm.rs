//! The KVM VM: creation with the in-kernel irqchip (no PIT), and its memory
//! slots (RAM, and BAR areas mapped straight into the guest) behind
//! [`GuestMapper`]. Trapped ranges are the MMIO bus's business.

use std::sync::{Arc, Mutex};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::x86_64::layout;
use crate::sync::lock;

/// Errors setting up the VM or its memory slots.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A VM-level KVM ioctl failed.
    #[error("kvm: cannot {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
}

/// Places host memory in the guest's physical address space.
pub trait GuestMapper: Send + Sync {
    /// Maps `len` bytes of host memory at `host` to guest address `gpa`; returns a slot.
    fn map_memory(&self, gpa: u64, len: u64, host: u64) -> Result<u32, VmError>;
    /// Moves slot `slot` (the same host memory) to guest address `gpa`; on
    /// an error the slot is still where it was.
    fn move_memory(&self, slot: u32, gpa: u64, len: u64, host: u64) -> Result<(), VmError>;
}

/// Creates the VM with KVM's TSS and identity map; the in-kernel irqchip
/// comes after guest RAM is in its memory slots ([`create_irqchip`]).
///
/// No PIT: the ACPI tables describe a hardware-reduced platform, on which
/// Linux sets up no legacy timer (no PIT, no PIC, no IRQ0 check) and a KVM
/// guest takes its clock from kvmclock and its timer from the local APIC
/// (calibrated by polling the TSC). An in-kernel PIT would only cost: its worker thread
/// is created with the VM and stopped when the VM is destroyed, which here
/// took 13-18 ms of every exit (Cloud Hypervisor runs without one too).
pub fn create_vm(kvm: &Kvm) -> Result<VmFd, VmError> {
    let vm = kvm
        .create_vm()
        .map_err(|e| VmError::Kvm("create the VM", e))?;
    vm.set_tss_address(layout::KVM_TSS_START.0 as usize)
        .map_err(|e| VmError::Kvm("set the TSS address", e))?;
    vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_START.0)
        .map_err(|e| VmError::Kvm("set the identity map address", e))?;
    Ok(vm)
}

/// Creates the in-kernel irqchip (LAPICs, IOAPIC, PIC). Call it after guest
/// RAM is in its memory slots. The PIC and IOAPIC join KVM's I/O buses, and
/// a KVM that frees the old bus through SRCU (the 6.18 host of this
/// project does) leaves a grace period in flight for 10-20 ms. A memory
/// slot set in that time waits for it: 7 ms here right after the irqchip,
/// 0.03-0.3 ms before it, whatever the size. (Closing the VM waits for it
/// too: a guest that ends within 20 ms of its start pays it at exit instead.)
pub fn create_irqchip(vm: &VmFd) -> Result<(), VmError> {
    vm.create_irq_chip()
        .map_err(|e| VmError::Kvm("create the in-kernel irqchip", e))
}

/// [`GuestMapper`] over KVM memory slots.
pub struct KvmGuestMapper {
    vm: Arc<VmFd>,
    next_slot: Mutex<u32>,
    /// Where each slot is: (guest address, length).
    placed: Mutex<std::collections::BTreeMap<u32, (u64, u64)>>,
}

impl KvmGuestMapper {
    /// A mapper for `vm`.
    pub fn new(vm: Arc<VmFd>) -> Self {
        KvmGuestMapper {
            vm,
            next_slot: Mutex::new(0),
            placed: Mutex::default(),
        }
    }

    fn set_slot(&self, slot: u32, gpa: u64, len: u64, host: u64) -> Result<(), VmError> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: len,
            userspace_addr: host,
        };
        // SAFETY: `host` is a live mapping of `len` bytes (guest RAM or a
        // VFIO BAR mmap) owned by the VMM for as long as the VM runs; a zero
        // length deletes the slot.
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(|e| VmError::Kvm("set a memory slot", e))
    }

    /// Registers all of guest RAM.
    pub fn register_ram(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for region in mem.iter() {
            self.map_memory(region.start_addr().0, region.len(), region.as_ptr() as u64)?;
        }
        Ok(())
    }
}

impl GuestMapper for KvmGuestMapper {
    fn map_memory(&self, gpa: u64, len: u64, host: u64) -> Result<u32, VmError> {
        let mut next = lock(&self.next_slot);
        self.set_slot(*next, gpa, len, host)?;
        lock(&self.placed).insert(*next, (gpa, len));
        *next += 1;
        Ok(*next - 1)
    }

    fn move_memory(&self, slot: u32, gpa: u64, len: u64, host: u64) -> Result<(), VmError> {
        let mut placed = lock(&self.placed);
        let old = placed.get(&slot).copied();
        self.set_slot(slot, 0, 0, host)?;
        if let Err(e) = self.set_slot(slot, gpa, len, host) {
            // KVM refused the new place (an overlap): put it back.
            if let Some((g, l)) = old {
                if let Err(back) = self.set_slot(slot, g, l, host) {
                    log::error!("memory slot {slot} could not go back to {g:#x}: {back}");
                }
            }
            return Err(e);
        }
        placed.insert(slot, (gpa, len));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_handed_out_in_order_and_move() {
        let kvm = match Kvm::new() {
            Ok(k) => k,
            Err(e) => {
                return crate::testing::skip("vm::slots", &format!("/dev/kvm not usable: {e}"))
            }
        };
        let vm = Arc::new(create_vm(&kvm).unwrap());
        let m = KvmGuestMapper::new(vm.clone());
        let guest = layout::GuestLayout::new(64 << 20);
        let mem = crate::memory::create_guest_memory(&guest, false).unwrap();
        m.register_ram(&mem).unwrap();
        create_irqchip(&vm).unwrap();
        let page = mem.iter().next().unwrap().as_ptr() as u64;
        let bar = guest.pci().mmio32.start;
        let slot = m.map_memory(bar, 0x1000, page).unwrap();
        assert_eq!(slot, 1, "slot 0 is RAM");
        m.move_memory(slot, bar + 0x10_0000, 0x1000, page).unwrap();
        // KVM refuses a slot overlapping RAM: errors come back, not panics.
        assert!(m.map_memory(0, 0x1000, page).is_err());
        // A refused move leaves the slot in place: it can still move later
        // (a deleted slot could not be deleted again).
        assert!(m.move_memory(slot, 0, 0x1000, page).is_err());
        m.move_memory(slot, bar + 0x20_0000, 0x1000, page).unwrap();
    }
}
