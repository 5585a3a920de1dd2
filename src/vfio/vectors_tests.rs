//! Tests for MSI and MSI-X vectors against the igbvf-shaped mock: MSI at
//! 0x40 (64-bit, one vector), MSI-X at 0x70 with 3 vectors.

use std::sync::Arc;

use super::*;
use crate::interrupts::MsiMessage;
use crate::pci::msix::{CTL_ENABLE, CTL_FUNCTION_MASK};
use crate::testing::{MockRouter, MockVfio};
use crate::vfio::config_space::cfg_u32;

fn vectors() -> (Vectors, Arc<MockVfio>, Arc<MockRouter>) {
    let mock = MockVfio::igbvf();
    let mut cfg = vec![0u8; 256];
    mock.config_read(0, &mut cfg);
    let scan = scan_capabilities(&cfg);
    let router = Arc::new(MockRouter::default());
    let v = Vectors::new("vf", &scan, mock.msix_vectors(), router.clone()).unwrap();
    (v, mock, router)
}

use super::super::config_space::scan_capabilities;

fn write32(v: &mut Vectors, mock: &MockVfio, off: usize, value: u32) -> bool {
    v.write_config(off / 4, 0, &value.to_le_bytes(), mock)
}

fn read(v: &Vectors, mock: &MockVfio, reg: usize) -> u32 {
    let mut b = [0u8; 4];
    mock.config_read(reg as u64 * 4, &mut b);
    v.read_config(reg, cfg_u32(&b, 0))
}

#[test]
fn msi_enable_routes_the_programmed_message() {
    let (mut v, mock, router) = vectors();
    // MSI-X took GSIs 24..27; MSI (one vector) comes next.
    let gsi = crate::arch::x86_64::layout::MSI_GSI_START + 3;
    assert!(write32(&mut v, &mock, 0x44, 0xfee0_2000));
    assert!(write32(&mut v, &mock, 0x48, 0));
    assert!(v.write_config(0x4c / 4, 0, &0x4071u16.to_le_bytes(), &*mock));
    assert!(router.routes.lock().unwrap().is_empty());
    v.write_config(0x40 / 4, 2, &0x0081u16.to_le_bytes(), &*mock);
    assert_eq!(mock.log.lock().unwrap().msi_enabled_with, Some(1));
    let want = MsiMessage {
        addr_lo: 0xfee0_2000,
        addr_hi: 0,
        data: 0x4071,
    };
    assert_eq!(router.routes.lock().unwrap().get(&gsi), Some(&want));
    assert_eq!(
        read(&v, &mock, 0x40 / 4) >> 16,
        0x0081,
        "guest reads its enable bit back"
    );
    // A new message while enabled re-routes; disabling removes the route.
    v.write_config(0x4c / 4, 0, &0x4072u16.to_le_bytes(), &*mock);
    assert_eq!(router.routes.lock().unwrap()[&gsi].data, 0x4072);
    v.write_config(0x40 / 4, 2, &0x0080u16.to_le_bytes(), &*mock);
    assert!(router.routes.lock().unwrap().is_empty());
    assert_eq!(mock.log.lock().unwrap().msi_disables, 1);
    assert!(
        mock.log.lock().unwrap().config_writes.is_empty(),
        "MSI writes never reach the device"
    );
    // Registers outside both capabilities are not the vectors' business.
    assert!(!v.write_config(1, 0, &[6, 0], &*mock));
}

fn program_vector(v: &mut Vectors, i: u64, data: u32, masked: bool) {
    let base = i * 16;
    v.write_table(base, &0xfee0_0000u32.to_le_bytes());
    v.write_table(base + 4, &0u32.to_le_bytes());
    v.write_table(base + 8, &data.to_le_bytes());
    v.write_table(base + 12, &u32::from(masked).to_le_bytes());
}

fn set_msix_control(v: &mut Vectors, mock: &MockVfio, ctl: u16) {
    assert!(v.write_config(0x70 / 4, 2, &ctl.to_le_bytes(), mock));
}

#[test]
fn msix_enable_routes_only_unmasked_vectors() {
    let (mut v, mock, router) = vectors();
    program_vector(&mut v, 0, 0x41, false);
    program_vector(&mut v, 1, 0x42, true);
    program_vector(&mut v, 2, 0x43, false);
    assert!(
        router.routes.lock().unwrap().is_empty(),
        "nothing routed before enable"
    );
    set_msix_control(&mut v, &mock, CTL_ENABLE | CTL_FUNCTION_MASK);
    assert_eq!(mock.log.lock().unwrap().msix_enabled_with, Some(3));
    assert!(
        router.routes.lock().unwrap().is_empty(),
        "function mask holds all vectors"
    );
    set_msix_control(&mut v, &mock, CTL_ENABLE);
    let gsi = crate::arch::x86_64::layout::MSI_GSI_START;
    {
        let routes = router.routes.lock().unwrap();
        assert_eq!(
            routes.keys().copied().collect::<Vec<_>>(),
            vec![gsi, gsi + 2]
        );
        let want = MsiMessage {
            addr_lo: 0xfee0_0000,
            addr_hi: 0,
            data: 0x41,
        };
        assert_eq!(routes[&gsi], want);
    }
    // The guest sees its own control bits back, table size untouched.
    assert_eq!(read(&v, &mock, 0x70 / 4) >> 16, u32::from(CTL_ENABLE | 2));
    // Unmask vector 1 with a new message; mask vector 0.
    program_vector(&mut v, 1, 0x52, false);
    v.write_table(12, &1u32.to_le_bytes());
    {
        let routes = router.routes.lock().unwrap();
        assert_eq!(
            routes.keys().copied().collect::<Vec<_>>(),
            vec![gsi + 1, gsi + 2]
        );
        assert_eq!(routes[&(gsi + 1)].data, 0x52);
    }
    // Reading the table back gives what the guest wrote.
    let mut b = [0u8; 4];
    v.read_table(16 + 8, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x52);
    // Disable: routes gone, host MSI-X off.
    set_msix_control(&mut v, &mock, 0);
    assert!(router.routes.lock().unwrap().is_empty());
    assert_eq!(mock.log.lock().unwrap().msix_disables, 1);
}

#[test]
fn a_qword_write_straddling_two_entries_routes_both() {
    let (mut v, mock, router) = vectors();
    program_vector(&mut v, 0, 0x41, true);
    program_vector(&mut v, 1, 0x42, false);
    set_msix_control(&mut v, &mock, CTL_ENABLE);
    let gsi = crate::arch::x86_64::layout::MSI_GSI_START;
    // One 8-byte write: vector 0's control (unmask) and vector 1's address.
    let q: u64 = 0xfee0_5000_0000_0000;
    v.write_table(12, &q.to_le_bytes());
    let routes = router.routes.lock().unwrap();
    assert_eq!(
        routes.get(&gsi).map(|m| m.data),
        Some(0x41),
        "vector 0 live"
    );
    assert_eq!(
        routes.get(&(gsi + 1)),
        Some(&MsiMessage {
            addr_lo: 0xfee0_5000,
            addr_hi: 0,
            data: 0x42
        }),
        "vector 1's route carries its new address"
    );
}

#[test]
fn quiesce_turns_everything_off() {
    let (mut v, mock, router) = vectors();
    program_vector(&mut v, 0, 0x41, false);
    set_msix_control(&mut v, &mock, CTL_ENABLE);
    write32(&mut v, &mock, 0x44, 0xfee0_1000);
    v.write_config(0x40 / 4, 2, &0x0081u16.to_le_bytes(), &*mock);
    assert_eq!(router.routes.lock().unwrap().len(), 2);
    v.quiesce(&*mock);
    assert!(router.routes.lock().unwrap().is_empty());
    let l = mock.log.lock().unwrap();
    assert_eq!((l.msix_disables, l.msi_disables), (1, 1));
    assert_eq!((l.msix_enabled_with, l.msi_enabled_with), (None, None));
    drop(l);
    assert_eq!(read(&v, &mock, 0x40 / 4) >> 16 & 1, 0, "MSI enable reads 0");
}
