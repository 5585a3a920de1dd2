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
/// The ACPI Generic Event Device's event register (power button).
pub const ACPI_GED_START: GuestAddress = GuestAddress(0xfeb0_0000);
/// Size of the GED register window.
pub const ACPI_GED_SIZE: u64 = 0x1000;
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
/// IOAPIC pin of the ACPI Generic Event Device.
pub const ACPI_GED_IRQ: u32 = 5;
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
fn pci_mmio64_start(ram_end: u64) -> u64 {
    const ALIGN: u64 = 1 << 30;
    let above_ram = ram_end.div_ceil(ALIGN) * ALIGN;
    above_ram.max(PCI_MMIO64_MIN_START.0)
}

/// A guest-physical range `[start, start + size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Window {
    /// First address.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
}

impl Window {
    /// The window `[start, start + size)`.
    pub const fn new(start: u64, size: u64) -> Self {
        Window { start, size }
    }

    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.start + self.size
    }

    /// True if `[gpa, gpa + len)` lies inside the window (no overflow).
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        gpa >= self.start && gpa.checked_add(len).is_some_and(|end| end <= self.end())
    }
}

/// The windows the PCI host bridge decodes for BARs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciWindows {
    /// Below 4 GiB, in the hole under the 32-bit boundary.
    pub mmio32: Window,
    /// Above RAM, for large 64-bit BARs.
    pub mmio64: Window,
}

impl PciWindows {
    /// True if `[gpa, gpa + len)` lies in one of the windows.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        self.mmio32.contains(gpa, len) || self.mmio64.contains(gpa, len)
    }
}

/// One e820 entry type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum E820Kind {
    /// Usable RAM.
    Ram,
    /// Reserved (BIOS area, ACPI tables, ECAM).
    Reserved,
}

/// One e820 entry: start, length, kind.
pub type E820Entry = (u64, u64, E820Kind);

/// The guest's physical memory map for one RAM size, computed once and
/// used by guest memory, the boot protocols, ACPI and the BAR allocator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestLayout {
    ram: Vec<Window>,
    pci: PciWindows,
}

impl GuestLayout {
    /// The layout for `memory` bytes of RAM: below the 32-bit hole first,
    /// the rest from 4 GiB up; the 64-bit PCI window above the end of RAM.
    pub fn new(memory: u64) -> Self {
        let low_end = MMIO32_HOLE_START.0;
        let ram = if memory <= low_end {
            vec![Window::new(0, memory)]
        } else {
            vec![
                Window::new(0, low_end),
                Window::new(RAM_64BIT_START.0, memory - low_end),
            ]
        };
        let ram_end = ram.last().map_or(0, Window::end);
        let pci = PciWindows {
            mmio32: Window::new(PCI_MMIO32_START.0, PCI_MMIO32_SIZE),
            mmio64: Window::new(pci_mmio64_start(ram_end), PCI_MMIO64_SIZE),
        };
        GuestLayout { ram, pci }
    }

    /// The RAM ranges, in address order.
    pub fn ram(&self) -> &[Window] {
        &self.ram
    }

    /// The end of RAM below the 32-bit hole (exclusive).
    pub fn low_ram_end(&self) -> u64 {
        self.ram[0].end()
    }

    /// The PCI windows.
    pub fn pci(&self) -> PciWindows {
        self.pci
    }

    /// The e820 map: low RAM below the EBDA, the reserved BIOS areas and
    /// ECAM, then RAM from 1 MiB up.
    pub fn e820(&self) -> Vec<E820Entry> {
        let mut map = vec![
            (0, EBDA_START.0, E820Kind::Ram),
            (EBDA_START.0, 0xa0000 - EBDA_START.0, E820Kind::Reserved),
            (
                BIOS_AREA_START.0,
                BIOS_AREA_END.0 - BIOS_AREA_START.0,
                E820Kind::Reserved,
            ),
            // Linux uses ECAM only where the firmware reserved it.
            (PCI_ECAM_START.0, PCI_ECAM_SIZE, E820Kind::Reserved),
        ];
        for w in &self.ram {
            if w.start == 0 {
                map.push((HIMEM_START.0, w.size - HIMEM_START.0, E820Kind::Ram));
            } else {
                map.push((w.start, w.size, E820Kind::Ram));
            }
        }
        map
    }
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
    assert!(PCI_ECAM_START.0 + PCI_ECAM_SIZE <= ACPI_GED_START.0);
    assert!(ACPI_GED_START.0 + ACPI_GED_SIZE <= IOAPIC_START.0);
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
        let l = GuestLayout::new(big);
        assert_eq!(
            l.pci().mmio64.start,
            101 << 30,
            "RAM ends at 101 GiB (hole)"
        );
    }

    #[test]
    fn small_guest_is_one_range() {
        let l = GuestLayout::new(512 << 20);
        assert_eq!(l.ram(), &[Window::new(0, 512 << 20)]);
        assert_eq!(l.low_ram_end(), 512 << 20);
    }

    #[test]
    fn large_guest_is_split_around_the_hole() {
        let l = GuestLayout::new(4 << 30);
        assert_eq!(l.ram()[0], Window::new(0, 3 << 30));
        assert_eq!(l.ram()[1], Window::new(4 << 30, 1 << 30));
        assert_eq!(l.low_ram_end(), 3 << 30);
        assert_eq!(
            l.pci().mmio32,
            Window::new(PCI_MMIO32_START.0, PCI_MMIO32_SIZE)
        );
    }

    #[test]
    fn e820_covers_ram_and_reserves_bios() {
        let m = GuestLayout::new(256 << 20).e820();
        let ram: u64 = m.iter().filter(|e| e.2 == E820Kind::Ram).map(|e| e.1).sum();
        assert_eq!(ram, (256 << 20) - (HIMEM_START.0 - EBDA_START.0));
        assert!(m
            .iter()
            .any(|e| e.0 == RSDP_START.0 && e.2 == E820Kind::Reserved));
        assert!(m
            .iter()
            .any(|e| e.0 == PCI_ECAM_START.0 && e.2 == E820Kind::Reserved));
        let mut sorted = m.clone();
        sorted.sort();
        for w in sorted.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "overlap in {w:?}");
        }
    }

    #[test]
    fn windows_bound_ranges_without_overflow() {
        let w = Window::new(0xc000_0000, 0x1000_0000);
        assert!(w.contains(0xc000_0000, 0x4000));
        assert!(w.contains(0xcfff_c000, 0x4000));
        assert!(!w.contains(0xcfff_d000, 0x4000), "straddles the end");
        assert!(!w.contains(0x1000, 0x1000));
        assert!(!w.contains(u64::MAX - 10, 0x1000), "no overflow");
        let p = GuestLayout::new(1 << 30).pci();
        assert!(p.contains(p.mmio64.start, 0x1000));
        assert!(!p.contains(PCI_ECAM_START.0, 0x1000));
    }
}
