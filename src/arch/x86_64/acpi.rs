//! ACPI tables: RSDP → XSDT → {FADT → DSDT, MADT}.
//!
//! The platform is "hardware reduced": no PM1 blocks, no SCI. Power-off and
//! reset go through the sleep control and reset registers, both one I/O port
//! (`layout::ACPI_PM_PORT`, emulated by `devices::acpi_pm`). The DSDT
//! describes the PCI Express host bridge with its windows, COM1 and `_S5`;
//! the MCFG table gives its ECAM region.

use acpi_tables::aml::{
    self, AddressSpace, AddressSpaceCacheable, And, Device, EISAName, Field, FieldAccessType,
    FieldEntry, FieldLockRule, FieldUpdateRule, If, Interrupt, Local, Method, Name, Notify,
    OpRegion, OpRegionSpace, Package, Path, ResourceTemplate, Scope, Store, IO,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace as GasSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{self, PciWindows};
use crate::devices::acpi_pm::{RESET_VALUE, S5_SLEEP_TYPE};
use crate::devices::ged::EVENT_POWER_BUTTON;

const OEM_ID: [u8; 6] = *b"VFLNCH";
const OEM_REVISION: u32 = 1;
/// FADT "hypervisor vendor identity".
const HYPERVISOR_VENDOR: u64 = u64::from_le_bytes(*b"VFLAUNCH");
/// IA-PC boot architecture flags: VGA not present (bit 2), CMOS RTC not present (bit 5).
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 5);

/// Errors writing ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables do not fit in the BIOS area.
    #[error("ACPI tables ({0} bytes) overflow the BIOS area")]
    TooBig(u64),
    /// Writing guest memory failed.
    #[error("cannot write ACPI tables to guest memory")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

fn aml_bytes(a: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    a.to_aml_bytes(&mut v);
    v
}

/// The DSDT body (AML).
pub fn dsdt_aml(pci: PciWindows) -> Vec<u8> {
    let (m32, m64) = (pci.mmio32, pci.mmio64);
    let bus = AddressSpace::new_bus_number(0u16, 0u16);
    let cfg_ports = IO::new(layout::PCI_CONFIG_PORT, layout::PCI_CONFIG_PORT, 1, 8);
    let io_low = AddressSpace::new_io(0u16, layout::PCI_CONFIG_PORT - 1, None);
    let io_high = AddressSpace::new_io(0xd00u16, 0xffffu16, None);
    let mem32 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        m32.start as u32,
        (m32.end() - 1) as u32,
        None,
    );
    let mem64 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        m64.start,
        m64.end() - 1,
        None,
    );
    let pci_crs = ResourceTemplate::new(vec![&bus, &cfg_ports, &io_low, &io_high, &mem32, &mem64]);
    let pci_hid = EISAName::new("PNP0A08");
    let pci_cid = EISAName::new("PNP0A03");
    let pci_names = [
        Name::new("_HID".into(), &pci_hid),
        Name::new("_CID".into(), &pci_cid),
        Name::new("_ADR".into(), &aml::ZERO),
        Name::new("_SEG".into(), &aml::ZERO),
        Name::new("_UID".into(), &aml::ZERO),
        Name::new("_BBN".into(), &aml::ZERO),
        Name::new("_CRS".into(), &pci_crs),
    ];
    let pci0 = Device::new(
        "PCI0".into(),
        pci_names.iter().map(|n| n as &dyn Aml).collect(),
    );

    let com1_irq = Interrupt::new(true, true, false, false, layout::SERIAL_IRQ);
    let com1_io = IO::new(
        layout::SERIAL_PORT,
        layout::SERIAL_PORT,
        1,
        layout::SERIAL_PORT_LEN as u8,
    );
    let com1_crs = ResourceTemplate::new(vec![&com1_irq, &com1_io]);
    let com1_hid = EISAName::new("PNP0501");
    let com1_names = [
        Name::new("_HID".into(), &com1_hid),
        Name::new("_UID".into(), &aml::ZERO),
        Name::new("_CRS".into(), &com1_crs),
    ];
    let com1 = Device::new(
        "COM1".into(),
        com1_names.iter().map(|n| n as &dyn Aml).collect(),
    );

    let sb = Scope::new("\\_SB_".into(), vec![&pci0, &com1]);
    let s5_pkg = Package::new(vec![&S5_SLEEP_TYPE, &aml::ZERO]);
    let s5 = Name::new("_S5_".into(), &s5_pkg);
    let mut out = aml_bytes(&sb);
    out.extend(aml_bytes(&s5));
    out.extend(ged_aml());
    out
}

/// The Generic Event Device and the power button it notifies: on its
/// interrupt the guest runs `_EVT`, which reads the event register and, for
/// the power-button bit, sends `Notify(\_SB.PWRB, 0x80)` (a press).
fn ged_aml() -> Vec<u8> {
    // Only the interrupt: Linux's acpi-ged walks _CRS as a list of
    // interrupts and fails its probe (-EINVAL) on any other resource. The
    // event register is reached through the GDST operation region below.
    let irq = Interrupt::new(true, true, false, false, layout::ACPI_GED_IRQ);
    let crs = ResourceTemplate::new(vec![&irq]);
    let hid = "ACPI0013";
    let base = layout::ACPI_GED_START.0 as usize;
    let region = OpRegion::new("GDST".into(), OpRegionSpace::SystemMemory, &base, &1usize);
    let field = Field::new(
        "GDST".into(),
        FieldAccessType::Byte,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        vec![FieldEntry::Named(*b"GDAT", 8)],
    );
    let gdat = Path::new("GDAT");
    let events = Store::new(&Local(0), &gdat);
    let pressed = And::new(&aml::ZERO, &Local(0), &EVENT_POWER_BUTTON);
    let pwrb_path = Path::new("\\_SB_.PWRB");
    let notify = Notify::new(&pwrb_path, &0x80u8);
    let on_press = If::new(&pressed, vec![&notify]);
    let evt = Method::new("_EVT".into(), 1, true, vec![&events, &on_press]);
    let ged_names = [
        Name::new("_HID".into(), &hid),
        Name::new("_UID".into(), &aml::ZERO),
        Name::new("_CRS".into(), &crs),
    ];
    let mut children: Vec<&dyn Aml> = ged_names.iter().map(|n| n as &dyn Aml).collect();
    children.extend([&region as &dyn Aml, &field, &evt]);
    let ged = Device::new("GED_".into(), children);
    let pwrb_hid = EISAName::new("PNP0C0C");
    let pwrb_names = [
        Name::new("_HID".into(), &pwrb_hid),
        Name::new("_UID".into(), &aml::ZERO),
    ];
    let pwrb = Device::new(
        "PWRB".into(),
        pwrb_names.iter().map(|n| n as &dyn Aml).collect(),
    );
    aml_bytes(&Scope::new("\\_SB_".into(), vec![&ged, &pwrb]))
}

fn pm_register() -> GAS {
    GAS::new(
        GasSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(layout::ACPI_PM_PORT),
    )
}

/// The FADT pointing at the DSDT.
pub fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, *b"VFLFADT ", OEM_REVISION).dsdt_64(dsdt_addr);
    f.flags = ((Flags::HwReducedAcpi as u32)
        | (Flags::ResetRegSup as u32)
        | (Flags::PwrButton as u32)
        | (Flags::SlpButton as u32))
        .into();
    f.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    f.sleep_control_reg = pm_register();
    f.sleep_status_reg = pm_register();
    f.reset_reg = pm_register();
    f.reset_value = RESET_VALUE;
    f.hypervisor_vendor_identity = HYPERVISOR_VENDOR.into();
    aml_bytes(&f.finalize())
}

/// The MADT: one local APIC per vCPU and one IOAPIC.
pub fn madt(cpus: u8) -> Vec<u8> {
    let mut m = MADT::new(
        OEM_ID,
        *b"VFLMADT ",
        OEM_REVISION,
        LocalInterruptController::Address(layout::APIC_START.0 as u32),
    );
    for id in 0..cpus {
        m.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    m.add_structure(IoApic::new(0, layout::IOAPIC_START.0 as u32, 0));
    aml_bytes(&m)
}

/// The MCFG: ECAM for segment 0, bus 0.
pub fn mcfg() -> Vec<u8> {
    let mut m = MCFG::new(OEM_ID, *b"VFLMCFG ", OEM_REVISION);
    m.add_ecam(layout::PCI_ECAM_START.0, 0, 0, 0);
    aml_bytes(&m)
}

/// Writes all tables; returns the RSDP address.
pub fn write_tables(mem: &GuestMemoryMmap, cpus: u8, pci: PciWindows) -> Result<u64, AcpiError> {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, *b"VFLDSDT ", OEM_REVISION);
    dsdt.append_slice(&dsdt_aml(pci));

    let mut next = layout::ACPI_TABLES_START.0;
    let mut place = |bytes: &[u8]| -> Result<u64, AcpiError> {
        let addr = next;
        let end = addr + bytes.len() as u64;
        if end > layout::RESET_VECTOR.0 {
            return Err(AcpiError::TooBig(end - layout::ACPI_TABLES_START.0));
        }
        mem.write_slice(bytes, GuestAddress(addr))?;
        next = end.next_multiple_of(8);
        Ok(addr)
    };
    let dsdt_addr = place(dsdt.as_slice())?;
    let fadt_addr = place(&fadt(dsdt_addr))?;
    let madt_addr = place(&madt(cpus))?;
    let mcfg_addr = place(&mcfg())?;
    let mut xsdt = XSDT::new(OEM_ID, *b"VFLXSDT ", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    xsdt.add_entry(mcfg_addr);
    let xsdt_addr = place(&aml_bytes(&xsdt))?;
    mem.write_slice(
        &aml_bytes(&Rsdp::new(OEM_ID, xsdt_addr)),
        layout::RSDP_START,
    )?;
    Ok(layout::RSDP_START.0)
}

#[cfg(test)]
#[path = "acpi_tests.rs"]
mod tests;
