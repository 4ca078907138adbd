//! Fuzz target: the parser of the kernel's reserved-ports text
//! (`PortSet::from_str`); see `portres_fuzz::check_sysctl`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| portres_fuzz::check_sysctl(data));
