//! The owner's life cycle on /dev/kvm with a tiny guest and the mock VF:
//! pause and resume, a clean stop, and an error after the vCPUs started.

use std::sync::{Arc, Mutex};

use super::*;
use crate::config::SerialMode;
use crate::testing::{skip, tiny, MockVfio};

/// One VM at a time: the tests count this process's vCPU threads.
static ONE_VM: Mutex<()> = Mutex::new(());

/// This process's vCPU threads, once their count has settled at `want` (a
/// new thread takes its name a moment after it starts) or after 2 s.
fn vcpu_threads_settled(want: usize) -> usize {
    let start = std::time::Instant::now();
    loop {
        let n = vcpu_threads();
        if n == want || start.elapsed() > std::time::Duration::from_secs(2) {
            return n;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn vcpu_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("vcpu"))
        })
        .count()
}

/// A 64 MiB VM running the tiny guest `code`, with `cfg` adjusted by `with`,
/// built as `Vmm::new` starts: memory, legacy devices, then the kernel. `None`
/// (the test skipped) without a usable /dev/kvm.
fn tiny_vm(
    dir: &tempfile::TempDir,
    code: &[u8],
    with: impl FnOnce(&mut VmConfig),
) -> Option<(Vmm, VmConfig)> {
    if let Err(e) = kvm_ioctls::Kvm::new() {
        skip("vmm::tests", &format!("/dev/kvm not usable: {e}"));
        return None;
    }
    let kernel = dir.path().join("tiny");
    std::fs::write(&kernel, tiny::elf64(code, false)).unwrap();
    let mut cfg = VmConfig::new(kernel);
    cfg.memory = 64 << 20;
    with(&mut cfg);
    let mut vmm = Vmm::create_vm(&cfg).unwrap();
    vmm.attach_legacy_devices(&cfg).unwrap();
    vmm.load_kernel(&cfg).unwrap();
    Some((vmm, cfg))
}

/// A VM with a guest that prints and spins, two vCPUs and the mock VF, built
/// step by step as `Vmm::new` does (the VF comes from the mock, not a container).
fn spinning_vm(dir: &tempfile::TempDir) -> Option<(Vmm, Arc<MockVfio>)> {
    let (mut vmm, cfg) = tiny_vm(dir, &tiny::tiny_spin_code(b"up\n"), |c| c.cpus = 2)?;
    vmm.attach_pci().unwrap();
    let mock = MockVfio::igbvf();
    vmm.attach_backend("0000:00:12.0", mock.clone()).unwrap();
    vmm.create_vcpus(&cfg).unwrap();
    Some((vmm, mock))
}

#[test]
fn an_error_after_the_vcpus_start_tears_everything_down() {
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let Some((mut vmm, mock)) = spinning_vm(&dir) else {
        return;
    };
    assert_eq!(vcpu_threads(), 0);
    vmm.fail_after_vcpus_start = true;
    let err = vmm.boot().unwrap_err();
    assert!(err.to_string().contains("console input"), "{err}");
    assert_eq!(vmm.state(), VmState::Running);
    assert_eq!(
        vcpu_threads_settled(2),
        2,
        "the error came after both vCPUs started"
    );
    let steps = vmm.teardown_steps();
    drop(vmm); // what `?` does to a half-run VM
    assert_eq!(vcpu_threads(), 0, "no vCPU thread left running");
    assert_eq!(
        *steps.lock().unwrap(),
        ["vcpus stopped", "devices quiesced", "devices dropped"]
    );
    assert_eq!(
        mock.log.lock().unwrap().resets,
        1,
        "reset at tear-down (vfio-pci reset it when it was opened)"
    );
    assert_eq!(Arc::strong_count(&mock), 1, "the device model is gone");
}

#[test]
fn a_stop_while_paused_does_not_run_the_guest_again() {
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    // A guest that makes an I/O exit at every step (a UART that discards).
    let dir = tempfile::tempdir().unwrap();
    let flood = tiny::tiny_flood_code(b'x');
    let Some((mut vmm, cfg)) = tiny_vm(&dir, &flood, |c| c.serial = SerialMode::Null) else {
        return;
    };
    vmm.create_vcpus(&cfg).unwrap();
    vmm.boot().unwrap();
    let exits = |vmm: &Vmm| -> u64 { vmm.control.exit_counts().iter().map(|(_, n)| n).sum() };
    let start = std::time::Instant::now();
    while exits(&vmm) < 100 && start.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    vmm.pause().unwrap();
    let parked = exits(&vmm);
    assert!(parked >= 100, "the guest ran: {parked} exits");
    vmm.exit_signal().request(ExitReason::Stopped);
    vmm.shutdown();
    assert_eq!(vcpu_threads(), 0);
    assert_eq!(
        exits(&vmm),
        parked,
        "a parked vCPU entered the guest after the stop"
    );
}

#[test]
fn pause_resume_and_a_clean_stop() {
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let Some((mut vmm, mock)) = spinning_vm(&dir) else {
        return;
    };
    assert!(matches!(
        vmm.pause(),
        Err(VmmError::State(VmState::Created, _))
    ));
    vmm.boot().unwrap();
    assert!(matches!(
        vmm.boot(),
        Err(VmmError::State(VmState::Running, _))
    ));
    vmm.pause().unwrap();
    assert_eq!(vmm.state(), VmState::Paused);
    assert_eq!(vcpu_threads(), 2, "paused vCPUs stay, parked");
    vmm.resume().unwrap();
    assert_eq!(vmm.state(), VmState::Running);
    vmm.exit_signal().request(ExitReason::Signal(libc::SIGTERM));
    assert_eq!(vmm.wait(), ExitReason::Signal(libc::SIGTERM));
    vmm.shutdown();
    assert_eq!(vmm.state(), VmState::Stopped);
    assert_eq!(vcpu_threads(), 0);
    assert_eq!(mock.log.lock().unwrap().resets, 1);
    vmm.shutdown(); // idempotent
    assert_eq!(vmm.teardown_steps().lock().unwrap().len(), 3);
}

#[test]
fn virtio_devices_stop_after_the_vcpus_and_leave_nothing_behind() {
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let Some((mut vmm, _mock)) = spinning_vm(&dir) else {
        return;
    };
    let img = dir.path().join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let sock = dir.path().join("vsock.sock");
    let v = crate::virtio::options::VirtioConfig {
        rng: true,
        disks: vec![
            crate::virtio::options::parse_disk(&format!("path={}", img.display())).unwrap(),
        ],
        vsock: Some(crate::virtio::options::VsockConfig {
            cid: 3,
            socket: sock.clone(),
        }),
        net: Vec::new(),
    };
    assert!(vmm.virtio_thread.is_none());
    vmm.attach_virtio_devices(&v).unwrap();
    let slots: Vec<u8> = vmm.devices().iter().map(|(_, s)| *s).collect();
    assert_eq!(slots, [1, 2, 3, 4], "the VF, then rng, disk, vsock");
    assert!(vmm.virtio_thread.is_some(), "one device thread for all");
    assert_eq!(vmm.virtio.len(), 3);
    assert!(sock.exists());
    vmm.boot().unwrap();
    let steps = vmm.teardown_steps();
    vmm.shutdown();
    assert_eq!(
        *steps.lock().unwrap(),
        [
            "vcpus stopped",
            "virtio stopped",
            "devices quiesced",
            "devices dropped"
        ]
    );
    assert!(vmm.virtio_thread.is_none(), "the device thread was joined");
    assert!(vmm.virtio.is_empty());
    assert!(!sock.exists(), "the vsock socket is removed");
    let again = crate::virtio::block::Block::open(&v.disks[0]);
    assert!(again.is_ok(), "the image's lock went with the VM");
}

#[test]
fn tear_down_goes_on_past_a_device_held_by_a_stuck_thread() {
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let Some((mut vmm, mock)) = spinning_vm(&dir) else {
        return;
    };
    vmm.boot().unwrap();
    // A thread holds the device, as a vCPU stuck inside an access would.
    let dev = vmm.vfio[0].clone();
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let _g = crate::sync::lock(&dev);
        held_tx.send(()).unwrap();
        let _ = release_rx.recv();
    });
    held_rx.recv().unwrap();
    let start = std::time::Instant::now();
    vmm.shutdown();
    assert!(
        start.elapsed() < std::time::Duration::from_secs(5),
        "tear-down took {:?}",
        start.elapsed()
    );
    assert_eq!(vmm.state(), VmState::Stopped);
    assert_eq!(
        *vmm.teardown_steps().lock().unwrap(),
        ["vcpus stopped", "devices quiesced", "devices dropped"]
    );
    assert_eq!(mock.log.lock().unwrap().resets, 0, "not reset while held");
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    // The last reference went with the holder: the model reset on drop.
    assert_eq!(mock.log.lock().unwrap().resets, 1);
}
