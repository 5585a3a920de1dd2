//! End to end through the binary and /dev/kvm: a tiny 64-bit guest prints
//! on the serial console and powers off through ACPI, or resets.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn tiny_guest_prints_and_powers_off() {
    let code = tiny_poweroff_code(b"hello from the guest\n", 0x34);
    let Some(out) = boot_tiny(
        "tiny_guest_prints_and_powers_off",
        &elf64(&code, false),
        &[],
        &[("RUST_LOG", "info")],
    ) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert_eq!(stdout, "hello from the guest\n", "stderr: {stderr}");
    assert!(stderr.contains("guest powered off"), "stderr: {stderr}");
}

#[test]
fn tiny_guest_reset_exits_nonzero() {
    // Writing the ACPI reset value instead of S5: a guest reboot.
    let code = tiny_poweroff_code(b"bye\n", 0x01);
    let Some(out) = boot_tiny(
        "tiny_guest_reset_exits_nonzero",
        &elf64(&code, false),
        &["--cpus", "2"],
        &[],
    ) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "stderr: {stderr}");
    assert!(stderr.contains("guest rebooted"), "stderr: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "bye\n");
}

#[test]
fn i8042_reset_is_a_clean_stop() {
    // Linux with reboot=k: command 0xfe on port 0x64.
    let code = tiny_out_code(b"k\n", 0x64, 0xfe);
    let Some(out) = boot_tiny(
        "i8042_reset_is_a_clean_stop",
        &elf64(&code, false),
        &[],
        &[("RUST_LOG", "info")],
    ) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(
        stderr.contains("reset through the i8042"),
        "stderr: {stderr}"
    );
}

#[test]
fn pvh_guest_gets_start_info_and_powers_off() {
    let dir = tempfile::tempdir().unwrap();
    let initrd = write_file(dir.path(), "initrd", b"not really an initramfs");
    let code = tiny_pvh_code(b"pvh ok\n");
    let Some(out) = boot_tiny(
        "pvh_guest_gets_start_info_and_powers_off",
        &elf64(&code, true),
        &["--initramfs", &initrd],
        &[("RUST_LOG", "info")],
    ) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(stderr.contains("Pvh32"), "booted through PVH: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "pvh ok\n");
}

#[test]
fn bad_input_fails_with_one_line_and_usage_codes() {
    let dir = tempfile::tempdir().unwrap();
    let junk = write_file(dir.path(), "junk", &[0u8; 4096]);
    // Not a kernel: the VMM reports it in one line, exit code 1, no panic.
    let out = run_vflaunch(
        &["run", "--kernel", &junk, "--no-devices-from-env"],
        &[],
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    if kvm_unusable().is_none() {
        assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
        assert!(
            stderr.contains("is not a bzImage or ELF vmlinux kernel"),
            "{stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Missing kernel file and bad sizes are usage errors (2).
    let out = run_vflaunch(
        &["run", "--kernel", "/nonexistent", "--no-devices-from-env"],
        &[],
        Duration::from_secs(60),
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_vflaunch(
        &["run", "--kernel", &junk, "--memory", "12Q"],
        &[],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(2));
    // A device that is not there is a host check failure (3), before KVM is touched.
    let out = run_vflaunch(
        &["run", "--kernel", &junk, "--device", "0000:7f:1f.7"],
        &[],
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("0000:7f:1f.7"), "{stderr}");
}

#[test]
fn guest_cpuid_has_the_timing_leaf() {
    // What the guest reads: CPUID.1:ECX, 0x40000000:EAX, 0x40000010:EAX/EBX.
    let queries = [(1, 2), (0x4000_0000, 0), (0x4000_0010, 0), (0x4000_0010, 1)];
    let code = tiny_cpuid_code(&queries, 0x34);
    let test = "guest_cpuid_has_the_timing_leaf";
    let Some(out) = boot_tiny(test, &elf64(&code, false), &[], &[("RUST_LOG", "info")]) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(out.stdout.len(), 16, "4 registers: {:?}", out.stdout);
    let reg = |i: usize| u32::from_le_bytes(out.stdout[i * 4..i * 4 + 4].try_into().unwrap());
    // What this host's KVM says, asked the same way vflaunch asks it.
    let kvm = kvm_ioctls::Kvm::new().unwrap();
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .unwrap();
    let leaf1 = supported
        .as_slice()
        .iter()
        .find(|e| e.function == 1)
        .unwrap();
    // A VM pinned to the host's TSC rate the way vflaunch pins it:
    // KVM_SET_TSC_KHZ (_IO(KVMIO, 0xa2)) with 0 on the VM, before any vCPU.
    let vm = kvm.create_vm().unwrap();
    let set_tsc_khz =
        vmm_sys_util::ioctl::ioctl_expr(vmm_sys_util::ioctl::_IOC_NONE, 0xAE, 0xa2, 0);
    // SAFETY: `vm` is a KVM VM fd; the ioctl takes its argument by value.
    let pinned = unsafe { vmm_sys_util::ioctl::ioctl_with_val(&vm, set_tsc_khz, 0) } == 0;
    let khz = vm.create_vcpu(0).unwrap().get_tsc_khz().unwrap_or(0);
    assert_ne!(reg(0) & (1 << 31), 0, "hypervisor bit");
    // The TSC-deadline bit: offered when KVM emulates the timer and the
    // VM's TSC rate could be pinned to the host's, and the log says which.
    let deadline = reg(0) & (1 << 24) != 0;
    let offered = stderr.contains("TSC-deadline timer offered");
    assert_eq!(
        deadline,
        offered || leaf1.ecx & (1 << 24) != 0,
        "stderr: {stderr}"
    );
    let deadline_cap = vm.check_extension_raw(kvm_bindings::KVM_CAP_TSC_DEADLINE_TIMER.into()) > 0;
    assert_eq!(
        offered,
        deadline_cap && pinned && khz != 0,
        "KVM: TSC-deadline {deadline_cap}, rate pinned {pinned}, {khz} kHz; stderr: {stderr}"
    );
    if khz == 0 {
        skip(
            test,
            "KVM_GET_TSC_KHZ gives no frequency here: timing leaf not checked",
        );
        return;
    }
    assert!(
        reg(1) >= 0x4000_0010,
        "the signature leaf announces the timing leaf: {:#x}",
        reg(1)
    );
    assert_eq!(reg(2), khz, "TSC kHz");
    assert_eq!(reg(3), 1_000_000, "KVM's APIC bus: 1 GHz");
}
