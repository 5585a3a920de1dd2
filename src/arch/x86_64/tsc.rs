//! The vCPUs' TSC rate, and whether the guest may use the TSC-deadline timer.
//!
//! KVM gives a new vCPU the VM's default TSC rate and reports it through
//! `KVM_GET_TSC_KHZ` (the timing leaf passes it on). That default is the
//! host's `tsc_khz`, but on a host without a constant TSC it is the value
//! from when the kvm module loaded. If the host refined its calibration
//! after that (the rig's TCG L1 does, depending on its boot timing), KVM
//! cannot run the vCPU's TSC at the rate it reports ("user requested TSC
//! rate below hardware speed" in the host's log), and a guest on the
//! TSC-deadline timer then lost timer wakeups (rcu stalls, boots timed out).
//!
//! `KVM_SET_TSC_KHZ` with 0 on the VM (Linux 6.0)
//! sets the default to the host's current rate before any vCPU exists. A
//! vCPU then counts at exactly the rate it reports, and only such a vCPU is
//! offered the TSC-deadline timer: Linux on it skips its 100 ms local APIC
//! timer calibration. Elsewhere the bit stays off and the guest calibrates.

use kvm_bindings::KVM_CAP_TSC_DEADLINE_TIMER;
use kvm_ioctls::{VcpuFd, VmFd};
use vmm_sys_util::ioctl::ioctl_with_val;
use vmm_sys_util::ioctl_io_nr;

const KVMIO: u32 = 0xAE;
ioctl_io_nr!(KVM_SET_TSC_KHZ, KVMIO, 0xa2);
ioctl_io_nr!(KVM_GET_TSC_KHZ, KVMIO, 0xa3);

/// What the VM's vCPUs may be told about their TSC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TscRate {
    /// The host's current TSC rate, now the VM's default (kHz), when KVM
    /// took it; `None` on a KVM without the VM-wide `KVM_SET_TSC_KHZ`.
    pub pinned_khz: Option<u32>,
    /// KVM emulates the TSC-deadline timer (`KVM_CAP_TSC_DEADLINE_TIMER`).
    pub deadline_timer: bool,
}

impl TscRate {
    /// Gives the VM the host's current TSC rate as its vCPUs' default, and
    /// logs the outcome. Call it before the first vCPU is created (KVM
    /// refuses it after).
    pub fn pin_to_host(vm: &VmFd) -> Self {
        let rate = Self::pin(vm);
        match (rate.pinned_khz, rate.deadline_timer) {
            (Some(khz), true) => {
                log::info!("tsc: vCPUs count at the host's {khz} kHz; TSC-deadline timer offered")
            }
            (Some(khz), false) => log::info!(
                "tsc: vCPUs count at the host's {khz} kHz; KVM has no TSC-deadline timer"
            ),
            (None, _) => log::info!(
                "tsc: the vCPUs' TSC rate could not be pinned to the host's; no TSC-deadline timer"
            ),
        }
        rate
    }

    fn pin(vm: &VmFd) -> Self {
        let deadline_timer = vm.check_extension_raw(KVM_CAP_TSC_DEADLINE_TIMER.into()) > 0;
        // Not gated on KVM_CAP_VM_TSC_CONTROL: KVM reports that only where
        // it can scale the TSC, but takes the host's own rate without it
        // (the rig's L1 has no scaling). A KVM older than the VM-wide
        // ioctl refuses it, and the rate stays as KVM chose it.
        // SAFETY: `vm` is a KVM VM fd; KVM_SET_TSC_KHZ takes its argument
        // by value and touches no user memory.
        if unsafe { ioctl_with_val(vm, KVM_SET_TSC_KHZ(), 0) } != 0 {
            let e = std::io::Error::last_os_error();
            log::debug!("tsc: the VM's TSC rate cannot be set to the host's: {e}");
            return TscRate {
                pinned_khz: None,
                deadline_timer,
            };
        }
        // SAFETY: as above; KVM_GET_TSC_KHZ returns the rate as its result.
        let khz = unsafe { ioctl_with_val(vm, KVM_GET_TSC_KHZ(), 0) };
        let pinned_khz = u32::try_from(khz).ok().filter(|&khz| khz > 0);
        TscRate {
            pinned_khz,
            deadline_timer,
        }
    }

    /// Whether the vCPU whose `KVM_GET_TSC_KHZ` is `vcpu_khz` may be
    /// offered the TSC-deadline timer: it counts at the host's rate.
    pub fn deadline_for(&self, vcpu_khz: Option<u32>) -> bool {
        self.deadline_timer && self.pinned_khz.is_some() && self.pinned_khz == vcpu_khz
    }

    /// The vCPU's rate as KVM reports it (`None` when KVM gives none).
    pub fn vcpu_khz(fd: &VcpuFd) -> Option<u32> {
        fd.get_tsc_khz().ok().filter(|&khz| khz > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_timer_needs_a_pinned_rate_that_the_vcpu_has() {
        let rate = |pinned_khz, deadline_timer| TscRate {
            pinned_khz,
            deadline_timer,
        };
        assert!(rate(Some(2_000_000), true).deadline_for(Some(2_000_000)));
        assert!(
            !rate(Some(2_000_000), true).deadline_for(Some(1_990_000)),
            "a vCPU at another rate than the pinned one"
        );
        assert!(!rate(Some(2_000_000), true).deadline_for(None));
        assert!(
            !rate(None, true).deadline_for(Some(2_000_000)),
            "not pinned"
        );
        assert!(!rate(None, true).deadline_for(None));
        assert!(
            !rate(Some(2_000_000), false).deadline_for(Some(2_000_000)),
            "KVM does not emulate it"
        );
    }

    #[test]
    fn a_pinned_vm_gives_its_vcpus_the_pinned_rate() {
        let kvm = match kvm_ioctls::Kvm::new() {
            Ok(k) => k,
            Err(e) => {
                return crate::testing::skip("tsc::pinned", &format!("/dev/kvm not usable: {e}"))
            }
        };
        let vm = kvm.create_vm().unwrap();
        let rate = TscRate::pin_to_host(&vm);
        let Some(khz) = rate.pinned_khz else {
            return crate::testing::skip("tsc::pinned", "this KVM has no VM-wide KVM_SET_TSC_KHZ");
        };
        let vcpu = vm.create_vcpu(0).unwrap();
        assert_eq!(TscRate::vcpu_khz(&vcpu), Some(khz));
        assert_eq!(rate.deadline_for(Some(khz)), rate.deadline_timer);
    }
}
