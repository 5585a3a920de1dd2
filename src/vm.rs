//! The KVM VM: creation with the in-kernel irqchip and PIT, and the guest
//! physical address space — memory slots for RAM and BAR mappings, and the
//! MMIO traps — behind [`GuestMapper`], which devices use to (re)place
//! their BARs.

use std::sync::{Arc, Mutex, Weak};

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::x86_64::layout;
use crate::devices::bus::{Bus, BusError, SharedDevice};

/// Errors setting up the VM or its address space.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A VM-level KVM ioctl failed.
    #[error("KVM: cannot {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// A trap range could not be registered.
    #[error("Cannot trap guest MMIO")]
    Bus(#[from] BusError),
    /// The MMIO bus is gone (the VM is shutting down).
    #[error("The VM is shutting down")]
    Gone,
}

/// Places host memory and trapping devices in the guest's physical address space.
pub trait GuestMapper: Send + Sync {
    /// Maps `len` bytes of host memory at `host` to guest address `gpa`; returns a slot.
    fn map_memory(&self, gpa: u64, len: u64, host: u64) -> Result<u32, VmError>;
    /// Moves slot `slot` (the same host memory) to guest address `gpa`.
    fn move_memory(&self, slot: u32, gpa: u64, len: u64, host: u64) -> Result<(), VmError>;
    /// Sends guest accesses to `[gpa, gpa + len)` to `dev`.
    fn add_trap(&self, gpa: u64, len: u64, dev: SharedDevice) -> Result<(), VmError>;
    /// Stops the trap that starts at `gpa`.
    fn remove_trap(&self, gpa: u64);
    /// True if `[gpa, gpa + len)` lies in a PCI window a BAR may use.
    fn in_pci_window(&self, gpa: u64, len: u64) -> bool;
}

/// Creates the VM with KVM's TSS and identity map, the in-kernel irqchip and PIT.
pub fn create_vm(kvm: &Kvm) -> Result<VmFd, VmError> {
    let vm = kvm
        .create_vm()
        .map_err(|e| VmError::Kvm("create the VM", e))?;
    vm.set_tss_address(layout::KVM_TSS_START.0 as usize)
        .map_err(|e| VmError::Kvm("set the TSS address", e))?;
    vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_START.0)
        .map_err(|e| VmError::Kvm("set the identity map address", e))?;
    vm.create_irq_chip()
        .map_err(|e| VmError::Kvm("create the in-kernel irqchip", e))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(|e| VmError::Kvm("create the PIT", e))?;
    Ok(vm)
}

/// [`GuestMapper`] over KVM memory slots and the MMIO bus.
pub struct KvmGuestMapper {
    vm: Arc<VmFd>,
    // Weak: the bus holds the devices, which hold this mapper.
    mmio: Weak<Bus>,
    next_slot: Mutex<u32>,
    windows: Vec<(u64, u64)>,
}

impl KvmGuestMapper {
    /// A mapper for `vm` trapping on `mmio`; BARs may live in `windows` (start, size).
    pub fn new(vm: Arc<VmFd>, mmio: &Arc<Bus>, windows: Vec<(u64, u64)>) -> Self {
        KvmGuestMapper {
            vm,
            mmio: Arc::downgrade(mmio),
            next_slot: Mutex::new(0),
            windows,
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
        let mut next = self.next_slot.lock().unwrap_or_else(|e| e.into_inner());
        self.set_slot(*next, gpa, len, host)?;
        *next += 1;
        Ok(*next - 1)
    }

    fn move_memory(&self, slot: u32, gpa: u64, len: u64, host: u64) -> Result<(), VmError> {
        self.set_slot(slot, 0, 0, host)?;
        self.set_slot(slot, gpa, len, host)
    }

    fn add_trap(&self, gpa: u64, len: u64, dev: SharedDevice) -> Result<(), VmError> {
        self.mmio
            .upgrade()
            .ok_or(VmError::Gone)?
            .insert(gpa, len, dev)?;
        Ok(())
    }

    fn remove_trap(&self, gpa: u64) {
        if let Some(bus) = self.mmio.upgrade() {
            bus.remove(gpa);
        }
    }

    fn in_pci_window(&self, gpa: u64, len: u64) -> bool {
        self.windows.iter().any(|(start, size)| {
            gpa >= *start && gpa.checked_add(len).is_some_and(|end| end <= start + size)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_bound_bar_moves() {
        let kvm = match Kvm::new() {
            Ok(k) => k,
            Err(e) => {
                println!("SKIPPED: /dev/kvm not usable: {e}");
                return;
            }
        };
        let vm = Arc::new(create_vm(&kvm).unwrap());
        let bus = Arc::new(Bus::new());
        let m = KvmGuestMapper::new(vm, &bus, vec![(0xc000_0000, 0x1000_0000)]);
        assert!(m.in_pci_window(0xc000_0000, 0x4000));
        assert!(m.in_pci_window(0xcfff_c000, 0x4000));
        assert!(!m.in_pci_window(0xcfff_d000, 0x4000), "straddles the end");
        assert!(!m.in_pci_window(0x1000, 0x1000));
        assert!(!m.in_pci_window(u64::MAX - 10, 0x1000), "no overflow");
        // Slots are handed out in order and can move.
        let mem = crate::memory::create_guest_memory(64 << 20, false).unwrap();
        m.register_ram(&mem).unwrap();
        let page = mem.iter().next().unwrap().as_ptr() as u64;
        let slot = m.map_memory(0xc000_0000, 0x1000, page).unwrap();
        assert_eq!(slot, 1);
        m.move_memory(slot, 0xc010_0000, 0x1000, page).unwrap();
        // Traps go to the bus while it lives.
        let dev: SharedDevice = Arc::new(Mutex::new(crate::pci::root::PciRoot::new()));
        m.add_trap(0xd000_0000, 0x10, dev.clone()).unwrap();
        assert!(
            m.add_trap(0xd000_0008, 0x10, dev.clone()).is_err(),
            "overlap"
        );
        m.remove_trap(0xd000_0000);
        m.add_trap(0xd000_0008, 0x10, dev.clone()).unwrap();
        drop(bus);
        assert!(matches!(
            m.add_trap(0xe000_0000, 1, dev),
            Err(VmError::Gone)
        ));
    }
}
