//! Fuzz target: the daemon's wire decoder (framing fed in chunks, then
//! `Request::decode`) and the client's reply decoder; see
//! `portres_fuzz::check_wire`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| portres_fuzz::check_wire(data));
