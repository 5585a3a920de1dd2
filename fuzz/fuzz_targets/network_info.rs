//! See `vflaunch::fuzzing::network_info` for what it drives and the invariants it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vflaunch::fuzzing::network_info(data));
