#![no_main]
//! LWSP/1 replies: any bytes, never a panic.
use devices::codec::station;
use libfuzzer_sys::fuzz_target;
#[path = "codecs.rs"]
mod codecs;

fuzz_target!(|data: &[u8]| {
    codecs::feed(data, station::poll);
});
