//! CPUID: start from what KVM supports, add the hypervisor timing leaf and
//! the TSC-deadline timer, and patch the per-vCPU topology bits.
//!
//! The timing leaf ([`LEAF_HV_TIMING`]: TSC and APIC bus frequency in kHz,
//! the convention VMware started and other hypervisors follow) spares a
//! guest that reads it the TSC calibration. The TSC-deadline timer, which
//! KVM emulates but does not list, spares Linux its local APIC timer
//! calibration (100 ms of polling); it is offered only to a vCPU whose TSC
//! counts at the rate it reports (see [`super::tsc`]).

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_EXT_TOPOLOGY_V2: u32 = 0x1f;
/// The hypervisor signature leaf: EAX is the highest hypervisor leaf.
const LEAF_HV_BASE: u32 = 0x4000_0000;
/// The hypervisor timing leaf: EAX = TSC kHz, EBX = APIC bus kHz.
pub const LEAF_HV_TIMING: u32 = 0x4000_0010;
/// KVM's local APIC timer counts at 1 GHz (one bus cycle a nanosecond).
const KVM_APIC_BUS_KHZ: u32 = 1_000_000;
/// CPUID.1:ECX bit 31, "running under a hypervisor".
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:ECX bit 24, the local APIC's TSC-deadline timer mode.
const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// CPUID.1:EDX bit 28, HTT: EBX[23:16] holds the logical processor count.
const EDX_HTT: u32 = 1 << 28;

/// What the VM adds to KVM's supported CPUID.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidExtras {
    /// The vCPU's TSC frequency (`KVM_GET_TSC_KHZ`), if KVM told it.
    pub tsc_khz: Option<u32>,
    /// Offer the TSC-deadline timer ([`super::tsc::TscRate::deadline_for`]).
    pub tsc_deadline: bool,
}

/// Patches one entry for vCPU `id` of `count`.
pub fn patch_entry(entry: &mut kvm_cpuid_entry2, id: u8, count: u8, extras: &CpuidExtras) {
    match entry.function {
        LEAF_FEATURES => {
            entry.ebx =
                (entry.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
            entry.ecx |= ECX_HYPERVISOR;
            if extras.tsc_deadline {
                entry.ecx |= ECX_TSC_DEADLINE;
            }
            if count > 1 {
                entry.edx |= EDX_HTT;
            }
        }
        LEAF_EXT_TOPOLOGY | LEAF_EXT_TOPOLOGY_V2 => entry.edx = u32::from(id),
        LEAF_HV_BASE if extras.tsc_khz.is_some() => entry.eax = entry.eax.max(LEAF_HV_TIMING),
        LEAF_HV_TIMING => {
            if let Some(khz) = extras.tsc_khz {
                entry.eax = khz;
                entry.ebx = KVM_APIC_BUS_KHZ;
            }
        }
        _ => {}
    }
}

/// Returns the CPUID table for vCPU `id` of `count`. The timing leaf is
/// added only when the hypervisor signature leaf is there to announce it
/// and the table has room.
pub fn vcpu_cpuid(supported: &CpuId, id: u8, count: u8, extras: &CpuidExtras) -> CpuId {
    let mut cpuid = supported.clone();
    let has = |c: &CpuId, f: u32| c.as_slice().iter().any(|e| e.function == f);
    if extras.tsc_khz.is_some() && has(&cpuid, LEAF_HV_BASE) && !has(&cpuid, LEAF_HV_TIMING) {
        let timing = kvm_cpuid_entry2 {
            function: LEAF_HV_TIMING,
            ..Default::default()
        };
        if cpuid.push(timing).is_err() {
            log::debug!("CPUID table full: no timing leaf");
        }
    }
    let mut extras = *extras;
    if !has(&cpuid, LEAF_HV_TIMING) {
        extras.tsc_khz = None;
    }
    for entry in cpuid.as_mut_slice() {
        patch_entry(entry, id, count, &extras);
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf1_carries_apic_id_and_count() {
        let mut e = kvm_cpuid_entry2 {
            function: 1,
            ebx: 0xdead_0800,
            ..Default::default()
        };
        patch_entry(&mut e, 3, 4, &CpuidExtras::default());
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_eq!(e.ebx & 0xffff, 0x0800);
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e.edx & EDX_HTT, 0);
        assert_eq!(e.ecx & ECX_TSC_DEADLINE, 0, "not offered");
        let offer = CpuidExtras {
            tsc_deadline: true,
            ..Default::default()
        };
        patch_entry(&mut e, 3, 4, &offer);
        assert_ne!(e.ecx & ECX_TSC_DEADLINE, 0, "offered");
    }

    #[test]
    fn topology_leaf_carries_x2apic_id() {
        let mut cpuid = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0x7,
                ebx: 7,
                ..Default::default()
            },
        ])
        .unwrap();
        cpuid = vcpu_cpuid(&cpuid, 5, 8, &CpuidExtras::default());
        assert_eq!(cpuid.as_slice()[0].edx, 5);
        assert_eq!(cpuid.as_slice()[1].ebx, 7);
    }

    fn leaf(function: u32, eax: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            eax,
            ..Default::default()
        }
    }

    #[test]
    fn the_timing_leaf_is_added() {
        let supported =
            CpuId::from_entries(&[leaf(1, 0), leaf(LEAF_HV_BASE, 0x4000_0001)]).unwrap();
        let extras = CpuidExtras {
            tsc_khz: Some(2_345_678),
            tsc_deadline: false,
        };
        let c = vcpu_cpuid(&supported, 0, 2, &extras);
        let get = |f: u32| *c.as_slice().iter().find(|e| e.function == f).unwrap();
        assert_eq!(
            get(LEAF_HV_BASE).eax,
            LEAF_HV_TIMING,
            "the base leaf announces it"
        );
        assert_eq!(get(LEAF_HV_TIMING).eax, 2_345_678);
        assert_eq!(get(LEAF_HV_TIMING).ebx, KVM_APIC_BUS_KHZ);
        // A higher announced leaf stays as it is.
        let supported = CpuId::from_entries(&[leaf(LEAF_HV_BASE, 0x4000_0100)]).unwrap();
        let c = vcpu_cpuid(&supported, 0, 1, &extras);
        assert_eq!(c.as_slice()[0].eax, 0x4000_0100);
        assert_eq!(c.as_slice().len(), 2);
    }

    #[test]
    fn no_timing_leaf_without_a_signature_leaf_or_a_frequency() {
        let extras = CpuidExtras {
            tsc_khz: Some(1000),
            tsc_deadline: false,
        };
        let c = vcpu_cpuid(&CpuId::from_entries(&[leaf(1, 0)]).unwrap(), 0, 1, &extras);
        assert_eq!(c.as_slice().len(), 1, "nothing announces the leaf");
        let supported = CpuId::from_entries(&[leaf(LEAF_HV_BASE, 0x4000_0001)]).unwrap();
        let c = vcpu_cpuid(&supported, 0, 1, &CpuidExtras::default());
        assert_eq!(c.as_slice().len(), 1);
        assert_eq!(
            c.as_slice()[0].eax,
            0x4000_0001,
            "not announced without a frequency"
        );
    }
}
