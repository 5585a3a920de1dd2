//! The guest-physical memory map and the I/O port map, in address order.
//!
//! Every guest address vflaunch uses is a named constant here; nothing else in
//! the crate writes a guest address literal.

use vm_memory::GuestAddress;

/// Global descriptor table used for the 64-bit and PVH entry.
pub const GDT_START: GuestAddress = GuestAddress(0x500);
/// Interrupt descriptor table (empty; the kernel installs its own).
pub const IDT_START: GuestAddress = GuestAddress(0x520);
/// The Linux "zero page" (`struct boot_params`).
pub const ZERO_PAGE_START: GuestAddress = GuestAddress(0x7000);
/// Initial stack pointer of the boot vCPU (grows down, below the page tables).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// PML4 of the boot identity map.
pub const PML4_START: GuestAddress = GuestAddress(0x9000);
/// PDPT of the boot identity map.
pub const PDPTE_START: GuestAddress = GuestAddress(0xa000);
/// Page directory of the boot identity map (first GiB, 2 MiB pages).
pub const PDE_START: GuestAddress = GuestAddress(0xb000);
/// PVH `hvm_start_info` structure.
pub const PVH_INFO_START: GuestAddress = GuestAddress(0x6000);
/// PVH module list (one `hvm_modlist_entry`, the initramfs).
pub const PVH_MODLIST_START: GuestAddress = GuestAddress(0x6040);
/// PVH memory map (array of `hvm_memmap_table_entry`).
pub const PVH_MEMMAP_START: GuestAddress = GuestAddress(0x6080);
/// Kernel command line.
pub const CMDLINE_START: GuestAddress = GuestAddress(0x20000);
/// Size reserved for the kernel command line (the x86 kernel limit is 2048).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area; RAM below it is usable.
pub const EBDA_START: GuestAddress = GuestAddress(0x9fc00);
/// Start of the legacy BIOS area where ACPI tables live (reserved in e820).
pub const BIOS_AREA_START: GuestAddress = GuestAddress(0xe0000);
/// ACPI root pointer; Linux scans 0xe0000..0x100000 for it.
pub const RSDP_START: GuestAddress = BIOS_AREA_START;
/// ACPI tables (XSDT, FADT, DSDT, MADT) follow the RSDP.
pub const ACPI_TABLES_START: GuestAddress = GuestAddress(0xe1000);
/// The x86 reset vector (F000:FFF0), where a guest that reboots "through
/// the BIOS" jumps; it holds a stub that asks the VMM for a reset.
pub const RESET_VECTOR: GuestAddress = GuestAddress(0xf_fff0);
/// End of the legacy BIOS area.
pub const BIOS_AREA_END: GuestAddress = GuestAddress(0x10_0000);
/// Where the protected-mode kernel is loaded (1 MiB).
pub const HIMEM_START: GuestAddress = BIOS_AREA_END;
/// Start of the 32-bit hole: RAM stops here and resumes at 4 GiB.
pub const MMIO32_HOLE_START: GuestAddress = GuestAddress(0xc000_0000);
/// 32-bit PCI MMIO window for BARs.
pub const PCI_MMIO32_START: GuestAddress = MMIO32_HOLE_START;
/// Size of the 32-bit PCI MMIO window (768 MiB).
pub const PCI_MMIO32_SIZE: u64 = 0x3000_0000;
/// PCI Express enhanced configuration space (ECAM) for bus 0, in the MCFG table.
pub const PCI_ECAM_START: GuestAddress = GuestAddress(0xf000_0000);
/// ECAM size for one bus: 32 devices x 8 functions x 4 KiB.
pub const PCI_ECAM_SIZE: u64 = 0x10_0000;
/// IOAPIC registers.
pub const IOAPIC_START: GuestAddress = GuestAddress(0xfec0_0000);
/// Local APIC registers.
pub const APIC_START: GuestAddress = GuestAddress(0xfee0_0000);
/// KVM's identity-map page (needed on Intel VMX, below the TSS).
pub const KVM_IDENTITY_MAP_START: GuestAddress = GuestAddress(0xfffb_c000);
/// KVM's three-page TSS area (needed on Intel VMX).
pub const KVM_TSS_START: GuestAddress = GuestAddress(0xfffb_d000);
/// RAM above the 32-bit hole starts here.
pub const RAM_64BIT_START: GuestAddress = GuestAddress(0x1_0000_0000);
/// Lowest start of the 64-bit PCI MMIO window (64 GiB), raised above RAM if needed.
pub const PCI_MMIO64_MIN_START: GuestAddress = GuestAddress(0x10_0000_0000);
/// Size of the 64-bit PCI MMIO window (64 GiB).
pub const PCI_MMIO64_SIZE: u64 = 0x10_0000_0000;

/// I/O port of the first 16550 UART (COM1).
pub const SERIAL_PORT: u16 = 0x3f8;
/// Number of UART registers.
pub const SERIAL_PORT_LEN: u16 = 8;
/// ISA IRQ of COM1.
pub const SERIAL_IRQ: u32 = 4;
/// i8042 keyboard controller data port; the status/command port is at +4.
pub const I8042_PORT: u16 = 0x60;
/// Number of i8042 ports emulated (0x60..=0x64).
pub const I8042_PORT_LEN: u16 = 5;
/// PCI configuration mechanism #1 (CONFIG_ADDRESS at 0xcf8, CONFIG_DATA at 0xcfc).
pub const PCI_CONFIG_PORT: u16 = 0xcf8;
/// Number of PCI configuration ports.
pub const PCI_CONFIG_PORT_LEN: u16 = 8;
/// ACPI hardware-reduced sleep control/status and reset register.
pub const ACPI_PM_PORT: u16 = 0x600;
/// Number of ACPI PM ports.
pub const ACPI_PM_PORT_LEN: u16 = 1;

/// First GSI handed out to MSI/MSI-X vectors (0..24 are the IOAPIC pins).
pub const MSI_GSI_START: u32 = 24;
/// Number of IOAPIC pins (GSIs 0..24).
pub const IOAPIC_PINS: u32 = 24;

/// Start of the 64-bit PCI window for a guest whose RAM ends at `ram_end`.
pub fn pci_mmio64_start(ram_end: u64) -> u64 {
    const ALIGN: u64 = 1 << 30;
    let above_ram = ram_end.div_ceil(ALIGN) * ALIGN;
    above_ram.max(PCI_MMIO64_MIN_START.0)
}

// The map is checked when the crate compiles: no two areas overlap.
const _: () = {
    assert!(PVH_MEMMAP_START.0 + 0x100 <= ZERO_PAGE_START.0);
    assert!(ZERO_PAGE_START.0 + 0x1000 <= BOOT_STACK_POINTER);
    assert!(BOOT_STACK_POINTER < PML4_START.0);
    assert!(PDE_START.0 + 0x1000 <= CMDLINE_START.0);
    assert!(CMDLINE_START.0 + CMDLINE_MAX_SIZE as u64 <= EBDA_START.0);
    assert!(ACPI_TABLES_START.0 < RESET_VECTOR.0);
    assert!(RESET_VECTOR.0 + 16 == BIOS_AREA_END.0);
    assert!(PCI_MMIO32_START.0 + PCI_MMIO32_SIZE <= PCI_ECAM_START.0);
    assert!(PCI_ECAM_START.0 + PCI_ECAM_SIZE <= IOAPIC_START.0);
    assert!(KVM_TSS_START.0 + 3 * 0x1000 <= RAM_64BIT_START.0);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmio64_window_sits_above_ram() {
        assert_eq!(pci_mmio64_start(0), PCI_MMIO64_MIN_START.0);
        let big = 100u64 << 30;
        assert_eq!(pci_mmio64_start(big + 1), 101 << 30);
    }
}
