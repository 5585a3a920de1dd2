//! See `vflaunch::fuzzing::intake_env` for what it drives and the invariants it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vflaunch::fuzzing::intake_env(data));
