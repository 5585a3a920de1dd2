//! See `vflaunch::fuzz_queue` (src/virtio/fuzz.rs): every virtio device's
//! queue handling on arbitrary guest memory contents.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vflaunch::fuzz_queue(data));
