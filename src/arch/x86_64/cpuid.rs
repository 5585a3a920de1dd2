//! CPUID: start from what KVM supports and patch the per-vCPU topology bits.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_EXT_TOPOLOGY_V2: u32 = 0x1f;
/// CPUID.1:ECX bit 31, "running under a hypervisor".
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX bit 28, HTT: EBX[23:16] holds the logical processor count.
const EDX_HTT: u32 = 1 << 28;

/// Patches one entry for vCPU `id` of `count`.
pub fn patch_entry(entry: &mut kvm_cpuid_entry2, id: u8, count: u8) {
    match entry.function {
        LEAF_FEATURES => {
            entry.ebx =
                (entry.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
            entry.ecx |= ECX_HYPERVISOR;
            if count > 1 {
                entry.edx |= EDX_HTT;
            }
        }
        LEAF_EXT_TOPOLOGY | LEAF_EXT_TOPOLOGY_V2 => entry.edx = u32::from(id),
        _ => {}
    }
}

/// Returns the CPUID table for vCPU `id` of `count`.
pub fn vcpu_cpuid(supported: &CpuId, id: u8, count: u8) -> CpuId {
    let mut cpuid = supported.clone();
    for entry in cpuid.as_mut_slice() {
        patch_entry(entry, id, count);
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
        patch_entry(&mut e, 3, 4);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_eq!(e.ebx & 0xffff, 0x0800);
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e.edx & EDX_HTT, 0);
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
        cpuid = vcpu_cpuid(&cpuid, 5, 8);
        assert_eq!(cpuid.as_slice()[0].edx, 5);
        assert_eq!(cpuid.as_slice()[1].ebx, 7);
    }
}
